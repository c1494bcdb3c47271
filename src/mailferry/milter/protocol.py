"""The Sendmail milter wire protocol (version 2 to 6), sans-IO: bytes in, packets out.

A packet is a 4-octet network-order length (the command octet and the data), one command
octet, and the data. Strings are NUL-terminated; numbers are 32-bit network order. The MTA
sends SMFIC_* commands, the milter answers with SMFIR_* replies; option negotiation (SMFIC_OPTNEG)
goes both ways with the same layout. Facts from Postfix's src/milter/milter8.c and libmilter's
mfdef.h; nothing here does I/O.

`encode_*` build what the MTA sends, `parse_reply` reads what a milter sends; the reverse
direction (`encode_reply`, `parse_command`) is here too, for tests and test milters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# --- Commands, MTA -> milter (SMFIC_*)
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

COMMAND_NAMES = {value: name for name, value in list(globals().items()) if name.startswith("SMFIC_")}

# --- Replies, milter -> MTA (SMFIR_*)
SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

REPLY_NAMES = {value: name for name, value in list(globals().items()) if name.startswith("SMFIR_")}
REPLY_NAMES[SMFIC_OPTNEG] = "SMFIC_OPTNEG"

# --- Actions the milter may take (SMFIF_*), offered in OPTNEG
SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100
MY_ACTIONS = (SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_CHGHDRS
              | SMFIF_QUARANTINE | SMFIF_CHGFROM | SMFIF_ADDRCPT_PAR | SMFIF_SETSYMLIST)

# --- Protocol steps (SMFIP_*): events the milter does not want, replies it will not send
SMFIP_NOCONNECT = 1 << 0
SMFIP_NOHELO = 1 << 1
SMFIP_NOMAIL = 1 << 2
SMFIP_NORCPT = 1 << 3
SMFIP_NOBODY = 1 << 4
SMFIP_NOHDRS = 1 << 5
SMFIP_NOEOH = 1 << 6
SMFIP_NR_HDR = 1 << 7           # also SMFIP_NOHREPL
SMFIP_NOUNKNOWN = 1 << 8
SMFIP_NODATA = 1 << 9
SMFIP_SKIP = 1 << 10
SMFIP_RCPT_REJ = 1 << 11
SMFIP_NR_CONN = 1 << 12
SMFIP_NR_HELO = 1 << 13
SMFIP_NR_MAIL = 1 << 14
SMFIP_NR_RCPT = 1 << 15
SMFIP_NR_DATA = 1 << 16
SMFIP_NR_UNKN = 1 << 17
SMFIP_NR_EOH = 1 << 18
SMFIP_NR_BODY = 1 << 19
SMFIP_HDR_LEADSPC = 1 << 20

NOSEND_MASK = (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOHDRS
               | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA)
NOREPLY_MASK = (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_UNKN
                | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY)
V2_PROTOCOL = (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY | SMFIP_NOHDRS
               | SMFIP_NOEOH)
V3_PROTOCOL = V2_PROTOCOL | SMFIP_NOUNKNOWN
V4_PROTOCOL = V3_PROTOCOL | SMFIP_NODATA
V6_PROTOCOL = V4_PROTOCOL | SMFIP_SKIP | SMFIP_RCPT_REJ | NOREPLY_MASK | SMFIP_HDR_LEADSPC
# What each milter_protocol version lets us offer (Postfix's milter8_event_masks).
PROTOCOL_MASKS = {2: V2_PROTOCOL, 3: V3_PROTOCOL, 4: V4_PROTOCOL, 6: V6_PROTOCOL}

# Per command: the step that says "do not send it" and the one that says "no reply to it".
NOSEND_FLAG = {SMFIC_CONNECT: SMFIP_NOCONNECT, SMFIC_HELO: SMFIP_NOHELO, SMFIC_MAIL: SMFIP_NOMAIL,
               SMFIC_RCPT: SMFIP_NORCPT, SMFIC_DATA: SMFIP_NODATA, SMFIC_HEADER: SMFIP_NOHDRS,
               SMFIC_EOH: SMFIP_NOEOH, SMFIC_BODY: SMFIP_NOBODY, SMFIC_UNKNOWN: SMFIP_NOUNKNOWN}
NOREPLY_FLAG = {SMFIC_CONNECT: SMFIP_NR_CONN, SMFIC_HELO: SMFIP_NR_HELO, SMFIC_MAIL: SMFIP_NR_MAIL,
                SMFIC_RCPT: SMFIP_NR_RCPT, SMFIC_DATA: SMFIP_NR_DATA, SMFIC_HEADER: SMFIP_NR_HDR,
                SMFIC_EOH: SMFIP_NR_EOH, SMFIC_BODY: SMFIP_NR_BODY, SMFIC_UNKNOWN: SMFIP_NR_UNKN}

# Macro stages (SMFIM_*), in SETSYMLIST and in the OPTNEG reply of version 6.
SMFIM_CONNECT, SMFIM_HELO, SMFIM_ENVFROM, SMFIM_ENVRCPT, SMFIM_DATA, SMFIM_EOM, SMFIM_EOH = range(7)
# The command whose macros each stage sets.
STAGE_COMMANDS = {SMFIM_CONNECT: SMFIC_CONNECT, SMFIM_HELO: SMFIC_HELO, SMFIM_ENVFROM: SMFIC_MAIL,
                  SMFIM_ENVRCPT: SMFIC_RCPT, SMFIM_DATA: SMFIC_DATA, SMFIM_EOM: SMFIC_BODYEOB,
                  SMFIM_EOH: SMFIC_EOH}

CHUNK_SIZE = 65535              # the largest SMFIC_BODY chunk (Postfix's MILTER_CHUNK_SIZE)
# The largest reply we read: a replaced body comes in chunks, so a sane milter stays far below.
MAX_PACKET = 4 * 1024 * 1024

# Connect address families.
FAMILY_INET, FAMILY_INET6, FAMILY_UNIX, FAMILY_UNKNOWN = b"4", b"6", b"L", b"U"


class MilterProtocolError(Exception):
    """The milter spoke something that is not the protocol (the default action applies)."""


# --- framing
def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def _strings(*values: str | bytes) -> bytes:
    return b"".join((value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")) + b"\0"
                    for value in values)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class PacketReader:
    """Bytes in, (command, data) packets out; bounded: a length over `limit` or under 1 raises."""

    def __init__(self, limit: int = MAX_PACKET):
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def header_needed(self) -> int:
        """Octets still missing before the next packet is complete (0: one is ready)."""
        if len(self._buffer) < 4:
            return 4 - len(self._buffer)
        length = self._length()
        return max(0, 4 + length - len(self._buffer))

    def _length(self) -> int:
        (length,) = struct.unpack_from("!I", self._buffer)
        if length < 1:
            raise MilterProtocolError(f"bad packet length: {length}")
        if length > self.limit:
            raise MilterProtocolError(f"unreasonable packet length: {length} > {self.limit}")
        return length

    def next_packet(self) -> tuple[bytes, bytes] | None:
        if len(self._buffer) < 4:
            return None
        length = self._length()
        if len(self._buffer) < 4 + length:
            return None
        command = bytes(self._buffer[4:5])
        data = bytes(self._buffer[5:4 + length])
        del self._buffer[:4 + length]
        return command, data


# --- MTA -> milter
def encode_optneg(version: int, actions: int, protocol: int) -> bytes:
    return packet(SMFIC_OPTNEG, struct.pack("!III", version, actions, protocol))


def encode_macros(command: bytes, macros: list[tuple[str, str]]) -> bytes:
    return packet(SMFIC_MACRO, command + _strings(*(part for pair in macros for part in pair)))


def encode_connect(hostname: str, address: str, port: int, family: bytes) -> bytes:
    if family in (FAMILY_INET, FAMILY_INET6, FAMILY_UNIX):
        data = _strings(hostname) + family + struct.pack("!H", port) + _strings(address)
    else:
        data = _strings(hostname) + FAMILY_UNKNOWN
    return packet(SMFIC_CONNECT, data)


def encode_helo(name: str) -> bytes:
    return packet(SMFIC_HELO, _strings(name))


def encode_mail(args: list[str]) -> bytes:
    return packet(SMFIC_MAIL, _strings(*args))


def encode_rcpt(args: list[str]) -> bytes:
    return packet(SMFIC_RCPT, _strings(*args))


def encode_header(name: str, value: str) -> bytes:
    return packet(SMFIC_HEADER, _strings(name, value))


def encode_body_chunks(body: bytes) -> list[bytes]:
    return [packet(SMFIC_BODY, body[start:start + CHUNK_SIZE]) for start in range(0, len(body), CHUNK_SIZE)]


def encode_unknown(command_line: str) -> bytes:
    return packet(SMFIC_UNKNOWN, _strings(command_line))


def encode_simple(command: bytes) -> bytes:
    """DATA, EOH, BODYEOB, ABORT, QUIT, QUIT_NC: no data."""
    return packet(command)


# --- milter -> MTA: the replies as values
@dataclass(frozen=True, slots=True)
class Negotiated:
    """The milter's OPTNEG reply: its version, the actions it wants, the steps it asks for,
    and (version 6) the macros it wants per stage (SMFIM_* -> names)."""

    version: int
    actions: int
    protocol: int
    macros: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMFIR_* reply. `args` by kind: REPLYCODE (text,), QUARANTINE (reason,),
    ADDHEADER (name, value), CHGHEADER/INSHEADER (index, name, value), ADDRCPT (rcpt,),
    ADDRCPT_PAR (rcpt, args), DELRCPT (rcpt,), CHGFROM (sender, args), REPLBODY (bytes,),
    SETSYMLIST (stage, names)."""

    command: bytes
    args: tuple = ()

    @property
    def name(self) -> str:
        return REPLY_NAMES.get(self.command, f"unknown reply {self.command!r}")


def _split_strings(data: bytes, count: int, what: str, optional: int = 0) -> list[str]:
    """`count` NUL-terminated strings, the last `optional` of which may be missing."""
    parts = data.split(b"\0")
    if parts[-1] != b"":
        raise MilterProtocolError(f"{what}: string not NUL-terminated")
    parts = parts[:-1]
    if not count - optional <= len(parts) <= count:
        raise MilterProtocolError(f"{what}: {len(parts)} strings where {count} were expected")
    return [_text(part) for part in parts] + [""] * (count - len(parts))


def parse_optneg(data: bytes) -> Negotiated:
    if len(data) < 12:
        raise MilterProtocolError(f"SMFIC_OPTNEG reply too short: {len(data)} octets")
    version, actions, protocol = struct.unpack_from("!III", data)
    macros: dict[int, list[str]] = {}
    rest = data[12:]
    while rest:
        if len(rest) < 5:
            raise MilterProtocolError("SMFIC_OPTNEG reply: truncated macro list")
        (stage,) = struct.unpack_from("!I", rest)
        end = rest.find(b"\0", 4)
        if end < 0:
            raise MilterProtocolError("SMFIC_OPTNEG reply: macro list not NUL-terminated")
        macros[stage] = _text(rest[4:end]).split()
        rest = rest[end + 1:]
    return Negotiated(version, actions, protocol, macros)


_NO_DATA = {SMFIR_ACCEPT, SMFIR_CONTINUE, SMFIR_DISCARD, SMFIR_REJECT, SMFIR_TEMPFAIL, SMFIR_SKIP,
            SMFIR_PROGRESS, SMFIR_SHUTDOWN, SMFIR_CONN_FAIL}


def parse_reply(command: bytes, data: bytes) -> Reply:
    """One packet from a milter as a Reply; MilterProtocolError when it is malformed."""
    name = REPLY_NAMES.get(command, f"reply {command!r}")
    if command in _NO_DATA:
        if data:
            raise MilterProtocolError(f"reply {name} was followed by {len(data)} data bytes")
        return Reply(command)
    if command in (SMFIR_REPLYCODE, SMFIR_QUARANTINE, SMFIR_ADDRCPT, SMFIR_DELRCPT):
        return Reply(command, tuple(_split_strings(data, 1, name)))
    if command == SMFIR_ADDHEADER:
        return Reply(command, tuple(_split_strings(data, 2, name)))
    if command in (SMFIR_CHGHEADER, SMFIR_INSHEADER):
        if len(data) < 4:
            raise MilterProtocolError(f"{name}: input packet too short for network long")
        (index,) = struct.unpack_from("!I", data)
        return Reply(command, (index, *_split_strings(data[4:], 2, name)))
    if command in (SMFIR_CHGFROM, SMFIR_ADDRCPT_PAR):
        return Reply(command, tuple(_split_strings(data, 2, name, optional=1)))
    if command == SMFIR_REPLBODY:
        return Reply(command, (data,))
    if command == SMFIR_SETSYMLIST:
        if len(data) < 4:
            raise MilterProtocolError(f"{name}: too short")
        (stage,) = struct.unpack_from("!I", data)
        return Reply(command, (stage, _split_strings(data[4:], 1, name)[0].split()))
    raise MilterProtocolError(f"unknown reply code {command!r}")


# --- The other direction: what a milter sends and what it reads (tests, test milters)
def encode_reply(reply: Reply) -> bytes:
    command, args = reply.command, reply.args
    if command in _NO_DATA:
        return packet(command)
    if command in (SMFIR_CHGHEADER, SMFIR_INSHEADER):
        return packet(command, struct.pack("!I", args[0]) + _strings(args[1], args[2]))
    if command == SMFIR_REPLBODY:
        return packet(command, args[0])
    if command == SMFIR_SETSYMLIST:
        return packet(command, struct.pack("!I", args[0]) + _strings(" ".join(args[1])))
    return packet(command, _strings(*args))


def encode_optneg_reply(negotiated: Negotiated) -> bytes:
    data = struct.pack("!III", negotiated.version, negotiated.actions, negotiated.protocol)
    for stage, names in negotiated.macros.items():
        data += struct.pack("!I", stage) + _strings(" ".join(names))
    return packet(SMFIC_OPTNEG, data)


def parse_command(command: bytes, data: bytes) -> tuple:
    """An SMFIC_* packet's fields, as a milter reads them."""
    if command == SMFIC_OPTNEG:
        return struct.unpack_from("!III", data)
    if command == SMFIC_MACRO:
        parts = [_text(part) for part in data[1:].split(b"\0")[:-1]]
        return (data[:1], list(zip(parts[0::2], parts[1::2])))
    if command == SMFIC_CONNECT:
        end = data.index(b"\0")
        hostname, family = _text(data[:end]), data[end + 1:end + 2]
        if family == FAMILY_UNKNOWN:
            return (hostname, family, 0, "")
        (port,) = struct.unpack_from("!H", data, end + 2)
        return (hostname, family, port, _text(data[end + 4:].rstrip(b"\0")))
    if command == SMFIC_BODY:
        return (data,)
    if command in (SMFIC_HELO, SMFIC_MAIL, SMFIC_RCPT, SMFIC_HEADER, SMFIC_UNKNOWN):
        return tuple(_text(part) for part in data.split(b"\0")[:-1])
    return ()
