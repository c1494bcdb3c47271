"""One milter connection: connect, negotiate, send events, read replies, with Postfix's time-outs
and its default action when the milter is down, slow or speaks garbage (milter8.c's semantics).

An event returns a Verdict or None (go on). A milter that failed keeps answering with the
default action's verdict (None for `accept`) and is not asked again in this session, as
Postfix's `def_reply`. A reject at CONNECT or HELO stays too: the milter answers every later
command of the session with it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from mailferry.milter import protocol as p
from mailferry.milter.settings import MilterSpec

REJECT, TEMPFAIL, DISCARD, HOLD, SHUTDOWN = "reject", "tempfail", "discard", "hold", "shutdown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a milter decided: `reply` ("550 5.7.1 text", lines joined by CRLF) for REJECT and
    TEMPFAIL, `reason` for HOLD."""

    kind: str
    reply: str = ""
    reason: str = ""


COMMAND_REJECTED = Verdict(REJECT, "550 5.7.1 Command rejected")
TRY_AGAIN_LATER = Verdict(TEMPFAIL, "451 4.7.1 Service unavailable - try again later")
MILTER_DISCARD = Verdict(DISCARD)
MILTER_SHUTDOWN = Verdict(SHUTDOWN, "421 4.7.0 Server closing connection")

# milter_default_action -> the verdict after a communication error (milter8_comm_error).
COMM_ERROR_VERDICTS: dict[str, Verdict | None] = {
    "accept": None,
    "reject": Verdict(REJECT, "550 5.5.0 Service unavailable"),
    "tempfail": TRY_AGAIN_LATER,
    "shutdown": Verdict(SHUTDOWN, "421 4.7.1 Service unavailable - try again later"),
    "quarantine": Verdict(HOLD, reason="default_action"),
}
# ... and after a configuration error (milter8_conf_error): a malformed reply, a bad index.
CONF_ERROR_VERDICTS: dict[str, Verdict | None] = {
    "accept": None,
    "reject": Verdict(TEMPFAIL, "451 4.3.5 Server configuration problem - try again later"),
    "tempfail": Verdict(TEMPFAIL, "451 4.3.5 Server configuration problem - try again later"),
    "shutdown": Verdict(SHUTDOWN, "421 4.3.5 Server configuration problem - try again later"),
    "quarantine": Verdict(HOLD, reason="default_action"),
}

# Connection states.
NEW, READY, ERROR, ACCEPT_CONNECTION, ACCEPT_MESSAGE, REJECT_CONNECTION, CLOSED = (
    "new", "ready", "error", "accept-connection", "accept-message", "reject-connection", "closed")
CONNECT_EVENTS = (p.SMFIC_CONNECT, p.SMFIC_HELO)


class _Failure(Exception):
    """A read or write failed; the warning is logged and the default action applies."""


def valid_smtp_reply(text: str) -> bool:
    """milter8_valid_smtp_reply: `4xx` or `5xx`, with an X.Y.Z of the same class, then text."""
    if len(text) < 3 or text[0] not in "45" or not text[1:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
        return False
    rest = text[4:]
    status = rest.split(" ", 1)[0]
    parts = status.split(".")
    if len(parts) == 3 and all(part.isdigit() for part in parts):
        return status[0] == text[0]
    return True


class MilterConnection:
    """One milter for one SMTP session (or one non-SMTP message)."""

    def __init__(self, spec: MilterSpec, warn: Callable[[str], None]):
        self.spec = spec
        self.warn = warn
        self.state = NEW
        self.default_reply: Verdict | None = None   # Postfix's def_reply: set, it answers everything
        self.failed = False                           # def_reply set by an error (None = accept)
        self.version = 0
        self.actions = 0
        self.protocol = 0          # the milter's steps (ev_mask)
        self.not_in_protocol = 0   # events our offered version lacks (np_mask)
        self.macro_lists: dict[bytes, tuple[str, ...]] = {}   # the milter's SETSYMLIST / OPTNEG lists
        self.skip_event: bytes | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._quickack: tuple | None = None   # (writer, its socket) for _ack_at_once

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def header_leading_space(self) -> bool:
        return bool(self.protocol & p.SMFIP_HDR_LEADSPC)

    def wants(self, flag: int) -> bool:
        return not (self.protocol & flag) and not (self.not_in_protocol & flag)

    # --- connection and negotiation
    async def open(self) -> None:
        """Connect and negotiate; on failure the default action answers from now on."""
        spec = self.spec
        my_events = p.PROTOCOL_MASKS[spec.protocol]
        if spec.no_header_reply:
            my_events |= p.SMFIP_NR_HDR
        self.not_in_protocol = p.NOSEND_MASK & ~my_events
        transport, _, endpoint = spec.name.partition(":")
        try:
            if transport == "inet":
                host, _, port = endpoint.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError
                connecting = asyncio.open_connection(host.strip("[]"), int(port))
            elif transport in ("unix", "local"):
                if not endpoint:
                    raise ValueError
                connecting = asyncio.open_unix_connection(endpoint)
            else:
                raise ValueError
        except ValueError:
            self.warn(f"Milter service needs transport:endpoint (inet:host:port or unix:/path) "
                      f"instead of \"{spec.name}\"")
            self._conf_error()
            return
        try:
            self._reader, self._writer = await asyncio.wait_for(connecting, spec.connect_timeout)
        except (OSError, asyncio.TimeoutError) as problem:
            self.warn(f"connect to Milter service {spec.name}: {_describe(problem)}")
            self._comm_error()
            return
        try:
            await self._write(p.encode_optneg(spec.protocol, p.MY_ACTIONS, my_events), p.SMFIC_OPTNEG,
                              spec.command_timeout)
            command, data = await self._read_packet(p.SMFIC_OPTNEG, spec.command_timeout)
        except _Failure:
            return
        if command != p.SMFIC_OPTNEG:
            self.warn(f"milter {spec.name}: unexpected reply \"{command.decode('latin-1')}\" in initial handshake")
            self._comm_error()
            return
        try:
            negotiated = p.parse_optneg(data)
        except p.MilterProtocolError as problem:
            self.warn(f"milter {spec.name}: {problem}")
            self._comm_error()
            return
        if negotiated.version > spec.protocol:
            self.warn(f"milter {spec.name}: protocol version {negotiated.version} conflict"
                      f" with MTA protocol version {spec.protocol}")
            self._comm_error()
            return
        if negotiated.actions & p.MY_ACTIONS != negotiated.actions:
            self.warn(f"milter {spec.name}: request mask 0x{negotiated.actions:x} conflict"
                      f" with MTA request mask 0x{p.MY_ACTIONS:x}")
            self._comm_error()
            return
        self.version, self.actions, self.protocol = negotiated.version, negotiated.actions, negotiated.protocol
        if negotiated.version < spec.protocol:
            older = max((v for v in p.PROTOCOL_MASKS if v <= negotiated.version), default=2)
            self.not_in_protocol |= p.NOSEND_MASK & ~p.PROTOCOL_MASKS[older]
        for stage, names in negotiated.macros.items():
            if stage in p.STAGE_COMMANDS:
                self.macro_lists[p.STAGE_COMMANDS[stage]] = tuple(names)
        self.state = READY

    # --- events
    async def event(self, command: bytes, packet: bytes, macros: list[tuple[str, str]] | bytes | None,
                    timeout: float | None = None,
                    on_edit: Callable[[p.Reply], None] | None = None) -> Verdict | None:
        """Send `command` (its encoded `packet`), preceded by its macros (pairs, or their packet as
        p.encode_macros made it), and read the answer.
        At end of message `on_edit` receives each modification request, in order."""
        if self.default_reply is not None or self.failed or self._writer is None:
            return self.default_reply
        if self.state in (ACCEPT_CONNECTION, ACCEPT_MESSAGE, CLOSED):
            return None
        nosend = p.NOSEND_FLAG.get(command, 0)
        if nosend & self.not_in_protocol:
            return None
        if self.skip_event is not None:
            if command == self.skip_event:
                return None
            self.skip_event = None
        timeout = timeout or self.spec.command_timeout
        try:
            if macros and not isinstance(macros, bytes):
                macros = p.encode_macros(command, macros)
            # The macros and the command in one write (one send(2) instead of two).
            if nosend & self.protocol:
                if macros:
                    await self._write(macros, command, timeout)
                return None
            await self._write(macros + packet if macros else packet, command, timeout)
            if p.NOREPLY_FLAG.get(command, 0) & self.protocol:
                return None
            return await self._replies(command, timeout, on_edit)
        except _Failure:
            return self.default_reply

    async def send_only(self, command: bytes, packet: bytes, timeout: float) -> None:
        """A command that gets no reply (ABORT, QUIT)."""
        if self._writer is None or self.failed:
            return
        try:
            await self._write(packet, command, timeout)
        except _Failure:
            pass

    async def _replies(self, command: bytes, timeout: float,
                       on_edit: Callable[[p.Reply], None] | None) -> Verdict | None:
        name = self.spec.name
        while True:
            reply_command, data = await self._read_packet(command, timeout)
            try:
                if reply_command == p.SMFIC_OPTNEG:
                    raise p.MilterProtocolError("unexpected SMFIC_OPTNEG")
                reply = p.parse_reply(reply_command, data)
            except p.MilterProtocolError as problem:
                self.warn(f"milter {name}: {problem} after event {p.COMMAND_NAMES.get(command, '?')}")
                return self._comm_error()
            kind = reply.command
            if kind == p.SMFIR_PROGRESS:
                continue
            if kind == p.SMFIR_CONTINUE:
                return self.default_reply
            if kind == p.SMFIR_ACCEPT:
                self.state = ACCEPT_CONNECTION if command in CONNECT_EVENTS else ACCEPT_MESSAGE
                return self.default_reply
            if kind == p.SMFIR_DISCARD:
                if command in CONNECT_EVENTS:
                    self.warn(f"milter {name}: DISCARD action is not allowed for connect or helo")
                    return self.default_reply
                self.state = ACCEPT_MESSAGE
                return MILTER_DISCARD
            if kind == p.SMFIR_REJECT:
                return self._final(command, COMMAND_REJECTED)
            if kind == p.SMFIR_TEMPFAIL:
                return self._final(command, TRY_AGAIN_LATER)
            if kind == p.SMFIR_SHUTDOWN:
                self.state = REJECT_CONNECTION
                self.default_reply = MILTER_SHUTDOWN
                return MILTER_SHUTDOWN
            if kind == p.SMFIR_REPLYCODE:
                text = _unpercent(reply.args[0])
                if not valid_smtp_reply(text):
                    self.warn(f"milter {name}: malformed reply: {reply.args[0]}")
                    return self._conf_error()
                verdict = Verdict(REJECT if text[0] == "5" else TEMPFAIL, text)
                return self._final(command, verdict)
            if kind == p.SMFIR_QUARANTINE:
                # Not final: the milter goes on to its decision; the hold stays (Postfix's def_reply "H").
                self.default_reply = Verdict(HOLD, reason=reply.args[0][:100])
                continue
            if kind == p.SMFIR_SKIP:
                self.skip_event = command
                return self.default_reply
            if kind == p.SMFIR_SETSYMLIST:
                self.warn(f"milter {name}: unexpected filter response SMFIR_SETSYMLIST after event "
                          f"{p.COMMAND_NAMES.get(command, '?')}")
                return self._comm_error()
            if command == p.SMFIC_BODYEOB and on_edit is not None:
                problem = _edit_problem(reply)
                if problem:
                    self.warn(f"milter {name}: {problem}")
                    return self._conf_error()
                on_edit(reply)
                continue
            self.warn(f"milter {name}: unexpected filter response {reply.name} after event "
                      f"{p.COMMAND_NAMES.get(command, '?')}")
            return self._comm_error()

    def _final(self, command: bytes, verdict: Verdict) -> Verdict:
        if command in CONNECT_EVENTS:
            self.state = REJECT_CONNECTION
            self.default_reply = verdict
        return verdict

    # --- I/O with Postfix's warnings
    async def _write(self, data: bytes, command: bytes, timeout: float, flush: bool = True) -> None:
        self._writer.write(data)
        if flush:
            await self._drain(command, timeout)

    async def _drain(self, command: bytes, timeout: float) -> None:
        writer = self._writer
        transport = writer.transport
        # Buffered no more than the high-water mark (so writing is not paused: uvloop sends at the
        # end of the loop's iteration), the connection open, no error pending: drain() would return
        # at once; skip it and its time-out. Otherwise wait for it under the time-out.
        if (transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]
                and not transport.is_closing() and self._reader.exception() is None):
            return
        try:
            async with asyncio.timeout(timeout):
                await writer.drain()
        except (OSError, asyncio.TimeoutError) as problem:
            self.warn(f"milter {self.spec.name}: error writing command {p.COMMAND_NAMES.get(command, '?')} "
                      f"to filter: {_describe(problem)}")
            self._comm_error()
            raise _Failure from problem

    async def _read_packet(self, command: bytes, timeout: float) -> tuple[bytes, bytes]:
        name = self.spec.name
        event = p.COMMAND_NAMES.get(command, "(unknown MTA event)")
        self._quickack = _ack_at_once(self._writer, self._quickack)
        reader = self._reader
        length = -1    # -1: reading the header; then the packet's length
        try:
            # One asyncio.timeout for the packet (not wait_for: that makes a Task for every read).
            # Each read may take the whole time-out, as in Postfix; a packet here is one reply.
            async with asyncio.timeout(timeout) as deadline:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                if length < 1 or length > p.MAX_PACKET:
                    body = b""
                else:
                    if len(getattr(reader, "_buffer", b"")) < length:
                        # The body must wait: it gets a whole time-out of its own, as in Postfix.
                        deadline.reschedule(asyncio.get_running_loop().time() + timeout)
                    body = await reader.readexactly(length)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as problem:
            if length < 0:
                self.warn(f"milter {name}: can't read {event} reply packet header: {_describe(problem)}")
            else:
                self.warn(f"milter {name}: EOF while reading command code: {_describe(problem)}")
            self._comm_error()
            raise _Failure from problem
        if length < 1:
            self.warn(f"milter {name}: bad packet length: {length}")
            self._comm_error()
            raise _Failure
        if length > p.MAX_PACKET:
            self.warn(f"milter {name}: unreasonable packet length: {length} > {p.MAX_PACKET}")
            self._comm_error()
            raise _Failure
        return body[:1], body[1:]

    def _comm_error(self) -> Verdict | None:
        self._close_socket()
        self.failed, self.state = True, ERROR
        self.default_reply = COMM_ERROR_VERDICTS[self.spec.default_action]
        return self.default_reply

    def _conf_error(self) -> Verdict | None:
        self._close_socket()
        self.failed, self.state = True, ERROR
        self.default_reply = CONF_ERROR_VERDICTS[self.spec.default_action]
        return self.default_reply

    def _close_socket(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
            self._writer = None

    async def close(self, timeout: float = 5.0) -> None:
        """SMFIC_QUIT and hang up."""
        if self._writer is not None and not self.failed:
            try:
                self._writer.write(p.encode_simple(p.SMFIC_QUIT))
                await asyncio.wait_for(self._writer.drain(), timeout)
            except (OSError, asyncio.TimeoutError):
                pass
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.state = CLOSED

    def new_message(self) -> None:
        """After a message (or RSET): a milter that accepted the message is asked again."""
        if self.state == ACCEPT_MESSAGE:
            self.state = READY
        if self.default_reply is not None and self.default_reply.kind == HOLD and not self.failed:
            self.default_reply = None


def _edit_problem(reply: p.Reply) -> str:
    if reply.command == p.SMFIR_CHGHEADER and not reply.args[1]:
        return "null change header name"
    if reply.command == p.SMFIR_INSHEADER and not reply.args[1]:
        return "null insert header name"
    if reply.command == p.SMFIR_ADDHEADER and not reply.args[0]:
        return "null add header name"
    return ""


def _unpercent(text: str) -> str:
    """Sendmail doubles '%' (its reply is a format); Postfix undoes it and drops a lone '%'."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "%":
            index += 1
            if index < len(text) and text[index] == "%":
                out.append("%")
            elif index < len(text):
                out.append(text[index])
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _describe(problem: BaseException) -> str:
    if isinstance(problem, asyncio.TimeoutError):
        return os.strerror(errno.ETIMEDOUT)
    if isinstance(problem, asyncio.IncompleteReadError):
        return "Connection closed" if not problem.partial else "unexpected end of packet"
    if isinstance(problem, OSError) and problem.errno:
        return os.strerror(problem.errno)
    return str(problem) or type(problem).__name__


def _ack_at_once(writer: asyncio.StreamWriter | None, cached: tuple | None) -> tuple | None:
    """TCP_QUICKACK before a read (Linux; the kernel clears it again by itself). libmilter writes
    a modification and the reply after it as two packets, and with Nagle on its side the second
    waits for our ACK of the first, which Linux delays up to 40 ms: measured against OpenDKIM,
    end of message took 45 ms instead of 2.6 ms (bench/milter, stacks helper). Returns
    (writer, socket) for the next call: uvloop makes a new socket object at every lookup."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None or writer is None:
        return cached
    if cached is None or cached[0] is not writer:
        sock = writer.get_extra_info("socket")
        inet = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        cached = (writer, sock if inet else None)
    if cached[1] is not None:
        try:
            cached[1].setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass
    return cached
