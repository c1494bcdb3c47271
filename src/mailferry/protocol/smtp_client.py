"""The SMTP/LMTP client side, sans-IO: replies are parsed from bytes, commands
are built as bytes, and one mail transaction is a small state machine. Nothing
here touches a socket; delivery/ drives it.

Using it
--------
    reader = ReplyReader()
    greeting = next_reply()                  # reader.feed(read()) until a reply comes
    send(hello_command("mx.example", lmtp=False))
    extensions = Extensions.from_reply(next_reply())
    ...STARTTLS, EHLO again, AUTH...
    txn = Transaction(mail_command(sender, size=len(content)),
                      [rcpt_command(address) for address in recipients],
                      data_payload(content), pipelining=extensions.pipelining, lmtp=False)
    send(txn.start())
    while not txn.done:
        for reply in reader.feed(read()):
            send(txn.receive(reply))
    for result in txn.results: ...           # (reply, "RCPT TO"), one per recipient

Failure handling
----------------
Malformed server output raises ClientProtocolError, from the reader or from
Transaction.receive() (a reply of the wrong class, such as 250 to DATA, or a
reply nobody asked for). Its str() is short and safe to log. After one, the
connection must be closed; recipients whose result is still None were not
decided and must be deferred, never bounced: the server may have taken the
message.

Reply classes follow Postfix's smtp client: a reply is read by its first digit
only, so "252" to RCPT accepts and "451" to end of DATA defers. 421 alone is
special: it ends the session wherever it comes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass

# --- Errors --------------------------------------------------------------------------------------


class ClientProtocolError(Exception):
    """The server said something that cannot be SMTP. The connection is lost
    for good: close it, and defer what was not decided."""

    def __init__(self, message: str, replies: tuple[ServerReply, ...] = ()):
        super().__init__(message)
        # Complete replies that came in the same feed() before the bad line:
        # the transaction may still learn from them (a 250 to end of DATA
        # followed by garbage is a delivered message, not a deferred one).
        self.replies = replies


def _preview(data: bytes | str, limit: int = 100) -> str:
    """A quoted, escaped, shortened piece of server output for a log line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


# --- Replies -------------------------------------------------------------------------------------

# RFC 3463: class.subject.detail, then a space or the end of the line.
_ENHANCED_CODE = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One reply from the server, all its lines."""

    code: int
    lines: tuple[str, ...]      # each line's text after "NNN-" / "NNN ", enhanced code included

    @property
    def enhanced(self) -> str:
        """The RFC 3463 code at the start of the first line, "" if none.
        Like Postfix, a code whose class contradicts the reply ("250 5.1.1")
        is not believed: it is left in the text."""
        if not self.lines:
            return ""
        match = _ENHANCED_CODE.match(self.lines[0])
        if match is None or match.group(1) != str(self.code)[0]:
            return ""
        return match.group(0)

    @property
    def text(self) -> str:
        """The lines joined with spaces, without the enhanced code that
        servers repeat on every line."""
        enhanced = self.enhanced
        if not enhanced:
            return " ".join(self.lines)
        return " ".join(_without_code(line, enhanced) for line in self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        # As Postfix logs it: "550 5.1.1 <a@b>: Recipient address rejected".
        return " ".join(filter(None, (str(self.code), self.enhanced, self.text)))


def _without_code(line: str, enhanced: str) -> str:
    if line == enhanced:
        return ""
    if line.startswith(enhanced + " "):
        return line[len(enhanced) + 1:]
    return line


class ReplyReader:
    """Bytes from the server in, complete replies out.

    Lines end in CR LF or a bare LF. The buffer holds at most one unfinished
    line of max_line_length bytes (plus its line end), and a reply at most
    max_lines lines, so a server cannot make it grow without bound. The search
    for a line end never looks at a byte twice: bytes searched without finding
    one are skipped next time.
    """

    def __init__(self, max_line_length: int = 2048, max_lines: int = 1000):
        self.max_line_length = max_line_length
        self.max_lines = max_lines
        self._buffer = bytearray()
        self._scan_from = 0                 # bytes before it hold no line end
        self._code = 0                      # of the reply being read; 0 between replies
        self._lines: list[str] = []
        self._error = ""                    # why the stream broke, once it has

    def feed(self, data: bytes) -> list[ServerReply]:
        """The replies that `data` completes, oldest first. Raises
        ClientProtocolError on malformed input, then on every later call."""
        if self._error:
            raise ClientProtocolError(self._error)
        buffer = self._buffer
        buffer += data
        complete: list[ServerReply] = []
        start = 0
        try:
            while (newline := buffer.find(b"\n", self._scan_from)) >= 0:
                end = newline - 1 if newline > start and buffer[newline - 1] == 0x0D else newline
                reply = self._take_line(bytes(buffer[start:end]))
                if reply is not None:
                    complete.append(reply)
                start = self._scan_from = newline + 1
            # Drop what was consumed in one step rather than line by line.
            del buffer[:start]
            self._scan_from = len(buffer)
            if len(buffer) > self.max_line_length + 1:     # + 1: a CR may wait for its LF
                raise self._fail(f"reply line from server longer than {self.max_line_length} bytes: "
                                 f"{_preview(bytes(buffer[:40]), 40)}")
        except ClientProtocolError as error:
            error.replies = tuple(complete)
            raise
        return complete

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an unfinished reply line held in memory."""
        return len(self._buffer)

    @property
    def in_reply(self) -> bool:
        """True while part of a reply has arrived: end of file now means the
        reply was cut short."""
        return bool(self._buffer or self._lines)

    def _take_line(self, line: bytes) -> ServerReply | None:
        """Add one line (no line end) to the reply being read; the reply once
        this line completes it."""
        if len(line) > self.max_line_length:
            raise self._fail(f"reply line from server longer than {self.max_line_length} bytes: "
                             f"{_preview(line[:40], 40)}")
        # "DDD", "DDD-text" or "DDD text"; bytes.isdigit() is ASCII-only.
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in b" -"):
            raise self._fail(f"malformed reply from server: {_preview(line)}")
        code = int(line[:3])
        if not 200 <= code <= 599:
            raise self._fail(f"malformed reply from server: {_preview(line)}")
        if self._code and code != self._code:
            raise self._fail(f"malformed reply from server: {_preview(line)} "
                             f"(continues a {self._code} reply)")
        if len(self._lines) >= self.max_lines:
            raise self._fail(f"reply from server has more than {self.max_lines} lines")
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if len(line) > 3 and line[3] == 0x2D:       # "-": more lines follow
            return None
        reply = ServerReply(code, tuple(self._lines))
        self._code = 0
        self._lines = []
        return reply

    def _fail(self, message: str) -> ClientProtocolError:
        # The stream cannot be framed any more: drop it and stay failed.
        self._error = message
        self._buffer = bytearray()
        self._scan_from = 0
        self._lines = []
        return ClientProtocolError(message)


# --- Extensions ----------------------------------------------------------------------------------

_FLAGS = {
    "PIPELINING": "pipelining", "STARTTLS": "starttls", "CHUNKING": "chunking",
    "8BITMIME": "eightbitmime", "DSN": "dsn", "SMTPUTF8": "smtputf8",
    "ENHANCEDSTATUSCODES": "enhancedstatuscodes",
}


@dataclass(frozen=True, slots=True)
class Extensions:
    """What an EHLO/LHLO reply advertised."""

    pipelining: bool = False
    starttls: bool = False
    chunking: bool = False
    eightbitmime: bool = False
    dsn: bool = False
    smtputf8: bool = False
    enhancedstatuscodes: bool = False
    size: int | None = None             # None: not advertised; 0: advertised without a limit
    auth: tuple[str, ...] = ()          # upper-case mechanisms, in the server's order

    @classmethod
    def from_reply(cls, reply: ServerReply) -> Extensions:
        fields: dict[str, object] = {}
        mechanisms: dict[str, None] = {}        # an ordered set
        for line in reply.lines[1:]:            # line 1 is the server's name and greeting
            words = line.upper().split()
            if not words:
                continue
            keyword = words[0]
            if keyword in _FLAGS:
                fields[_FLAGS[keyword]] = True
            elif keyword == "SIZE":
                fields["size"] = _advertised_size(words[1:])
            elif keyword == "AUTH":
                mechanisms.update(dict.fromkeys(words[1:]))
            elif keyword.startswith("AUTH="):
                # The pre-RFC 2554 spelling, still sent by Postfix with
                # broken_sasl_auth_clients = yes; the first mechanism is glued on.
                mechanisms.update(dict.fromkeys(filter(None, [keyword[5:], *words[1:]])))
        return cls(**fields, auth=tuple(mechanisms))


def _advertised_size(arguments: list[str]) -> int:
    # A missing or unreadable limit is treated as no limit: the server will
    # still refuse an oversized message at MAIL or at the end of DATA.
    if arguments and arguments[0].isascii() and arguments[0].isdigit():
        return int(arguments[0])
    return 0


# --- Commands ------------------------------------------------------------------------------------

STARTTLS = b"STARTTLS\r\n"
RSET = b"RSET\r\n"
QUIT = b"QUIT\r\n"
DATA = b"DATA\r\n"
AUTH_CANCEL = b"*\r\n"          # RFC 4954 4: abandon an AUTH exchange
END_OF_DATA = b".\r\n"


def _command(*words: str) -> bytes:
    line = " ".join(words)
    # Arguments come from queue files and configuration; a line end inside
    # one would let it smuggle a command of its own into the session.
    if "\r" in line or "\n" in line or "\0" in line:
        raise ValueError(f"line end or NUL inside an SMTP command: {line[:100]!r}")
    return line.encode("utf-8") + b"\r\n"


def hello_command(name: str, lmtp: bool) -> bytes:
    return _command("LHLO" if lmtp else "EHLO", name)


def helo_command(name: str) -> bytes:
    return _command("HELO", name)


def auth_command(mechanism: str, initial_response: bytes | None) -> bytes:
    if initial_response is None:
        return _command("AUTH", mechanism)
    # RFC 4954 4: "=" stands for an initial response that is empty, which
    # would otherwise look like no initial response at all.
    encoded = base64.b64encode(initial_response).decode("ascii") or "="
    return _command("AUTH", mechanism, encoded)


def auth_answer(data: bytes) -> bytes:
    return base64.b64encode(data) + b"\r\n"


def decode_challenge(reply: ServerReply) -> bytes:
    """The server's SASL challenge in a 334 reply."""
    text = reply.text.strip()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientProtocolError(f"malformed SASL challenge from server: {_preview(text)}") from None


def mail_command(sender: str, *, size: int | None = None, body: str | None = None,
                 ret: str | None = None, envid: str | None = None,
                 smtputf8: bool = False) -> bytes:
    """MAIL FROM with only the parameters given: the caller knows what the
    server advertised. `sender` is the bare address; "" (or "<>") is the null
    sender. `envid` is the plain text as stored and is sent xtext-encoded."""
    words = ["MAIL", f"FROM:<{'' if sender == '<>' else sender}>"]
    if size is not None:
        if size < 0:
            raise ValueError(f"negative message size: {size}")
        words.append(f"SIZE={size}")
    if body is not None:
        words.append(f"BODY={body}")
    if ret is not None:
        words.append(f"RET={ret}")
    if envid is not None:
        words.append(f"ENVID={encode_xtext(envid)}")
    if smtputf8:
        words.append("SMTPUTF8")
    return _command(*words)


def rcpt_command(address: str, *, notify: str | None = None, orcpt: str | None = None) -> bytes:
    """RCPT TO; `orcpt` is sent exactly as given ("rfc822;user+2Bx@example")."""
    words = ["RCPT", f"TO:<{address}>"]
    if notify is not None:
        words.append(f"NOTIFY={notify}")
    if orcpt is not None:
        words.append(f"ORCPT={orcpt}")
    return _command(*words)


def encode_xtext(text: str) -> str:
    """RFC 3461 xtext: "+", "=", controls, spaces and non-ASCII become "+XX"
    (UTF-8 bytes, upper-case hex)."""
    if all("!" <= char <= "~" and char not in "+=" for char in text):
        return text
    return "".join(chr(byte) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else f"+{byte:02X}"
                   for byte in text.encode("utf-8"))


def data_payload(content: bytes) -> bytes:
    """What follows a 354: `content` (a message with CR LF line ends)
    dot-stuffed (RFC 5321 4.5.2), ending in CR LF, then ".\\r\\n".

    One bytes.replace does the stuffing: it copies nothing when no line
    starts with a dot. The first line has no CR LF in front and is the one
    case handled on its own.
    """
    if not content:
        return END_OF_DATA
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    head = b"." if content.startswith(b".") else b""
    # Without a final CR LF the last line would run into the terminator.
    tail = END_OF_DATA if content.endswith(b"\r\n") else b"\r\n" + END_OF_DATA
    return b"".join((head, stuffed, tail))


# --- One mail transaction ------------------------------------------------------------------------

# Stages: the command a reply answers, in Postfix's "(in reply to X command)" words.
MAIL_FROM = "MAIL FROM"
RCPT_TO = "RCPT TO"
DATA_STAGE = "DATA"
END_OF_DATA_STAGE = "end of DATA"

# Replies to a "." sent only to close a DATA that no recipient needed.
_DISCARDED = "discarded"


class Transaction:
    """One MAIL ... end-of-DATA exchange on a session that is already greeted
    (and, if need be, under TLS and authenticated).

    `mail`, `rcpts` and `payload` are the bytes from mail_command(),
    rcpt_command() and data_payload(). start() gives the first bytes to send;
    receive() takes each reply in order and gives the bytes to send next.

    With pipelining, MAIL, every RCPT and DATA go out together (RFC 2920), and
    every one of their replies is read even when MAIL was refused, so that
    the session stays in step and can be reused. A 354 after all recipients
    were refused is answered with an empty message (".") whose reply is
    ignored, as Postfix does.

    results[i] is (reply, stage) for rcpts[i] once decided: a refusal at MAIL,
    RCPT or DATA, or the reply to end of DATA (LMTP: that recipient's own
    reply, RFC 2033 4.2). An entry still None when the transaction ends (after
    a ClientProtocolError) was not decided.
    """

    def __init__(self, mail: bytes, rcpts: list[bytes], payload: bytes, *,
                 pipelining: bool, lmtp: bool):
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        self.mail = mail
        self.rcpts = list(rcpts)
        self.payload = payload
        self.pipelining = pipelining
        self.lmtp = lmtp
        self.done = False
        self.results: list[tuple[ServerReply, str] | None] = [None] * len(self.rcpts)
        self.session_usable = True
        self.needs_reset = False
        # Once the message went out, a lost connection may mean it was
        # delivered all the same (RFC 1047): the driver logs it that way.
        self.payload_sent = False
        self._started = False
        self._mail_refused = False
        self._accepted: list[int] = []                      # indexes into rcpts, in order
        self._expected: deque[tuple[str, int]] = deque()    # (stage, recipient index) per reply due

    @property
    def stage(self) -> str | None:
        """The command whose reply is due next (for "lost connection ...
        while sending RCPT TO"-style logging); None when done."""
        if self.done or not self._expected:
            return None
        stage = self._expected[0][0]
        return END_OF_DATA_STAGE if stage == _DISCARDED else stage

    def start(self) -> bytes:
        if self._started:
            raise RuntimeError("the transaction has already started")
        self._started = True
        self._expected.append((MAIL_FROM, -1))
        if not self.pipelining:
            return self.mail
        self._expected.extend((RCPT_TO, index) for index in range(len(self.rcpts)))
        self._expected.append((DATA_STAGE, -1))
        return b"".join((self.mail, *self.rcpts, DATA))

    def receive(self, reply: ServerReply) -> bytes:
        """Take the next reply; return what to send now (often b"")."""
        if not self._started:
            raise RuntimeError("receive() before start()")
        if self.done:
            raise ClientProtocolError("unexpected reply from server after the transaction: "
                                      f"{_preview(str(reply))}")
        stage, index = self._expected.popleft()
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the channel; nothing more will come.
            self._decide_rest(reply, END_OF_DATA_STAGE if stage == _DISCARDED else stage)
            self._end(usable=False)
            return b""
        outgoing = _HANDLERS[stage](self, reply, index)
        if not self._expected:
            self.done = True
        return outgoing

    # --- Handlers, one per stage -----------------------------------------------------------------

    def _mail_reply(self, reply: ServerReply, index: int) -> bytes:
        if reply.code // 100 == 2:
            return b"" if self.pipelining else self._send_rcpt(0)
        self._require_failure(reply, MAIL_FROM)
        self._mail_refused = True
        self.needs_reset = True
        self._decide_rest(reply, MAIL_FROM)
        # Pipelined RCPT and DATA replies are still due, and read as ignored.
        return b""

    def _rcpt_reply(self, reply: ServerReply, index: int) -> bytes:
        if self._mail_refused:
            return b""
        if reply.code // 100 == 2:
            self._accepted.append(index)
        else:
            self._require_failure(reply, RCPT_TO)
            self.results[index] = (reply, RCPT_TO)
        if self.pipelining:
            return b""
        if index + 1 < len(self.rcpts):
            return self._send_rcpt(index + 1)
        if not self._accepted:
            self.needs_reset = True
            return b""
        self._expected.append((DATA_STAGE, -1))
        return DATA

    def _data_reply(self, reply: ServerReply, index: int) -> bytes:
        if not self._accepted:
            # Only with pipelining: DATA went out before the refusals came back.
            self.needs_reset = True
            if reply.code == 354:
                self._expected.append((_DISCARDED, -1))
                return END_OF_DATA
            return b""
        if reply.code == 354:
            if self.lmtp:
                self._expected.extend((END_OF_DATA_STAGE, position)
                                      for position in range(len(self._accepted)))
            else:
                self._expected.append((END_OF_DATA_STAGE, -1))
            self.payload_sent = True
            return self.payload
        self._require_failure(reply, DATA_STAGE)
        self.needs_reset = True
        self._decide_rest(reply, DATA_STAGE)
        return b""

    def _end_of_data_reply(self, reply: ServerReply, position: int) -> bytes:
        if reply.code // 100 != 2:
            self._require_failure(reply, END_OF_DATA_STAGE)
        if position < 0:                        # SMTP: one reply for all
            self._decide_rest(reply, END_OF_DATA_STAGE)
        else:                                   # LMTP: one per accepted recipient
            self.results[self._accepted[position]] = (reply, END_OF_DATA_STAGE)
        return b""

    def _discarded_reply(self, reply: ServerReply, index: int) -> bytes:
        return b""

    # --- Small helpers ---------------------------------------------------------------------------

    def _send_rcpt(self, index: int) -> bytes:
        self._expected.append((RCPT_TO, index))
        return self.rcpts[index]

    def _require_failure(self, reply: ServerReply, stage: str) -> None:
        """A reply that neither accepts nor refuses (354 to MAIL, 250 to
        DATA) leaves the state of the server unknown."""
        if reply.code // 100 not in (4, 5):
            self._end(usable=False)
            raise ClientProtocolError(f"unexpected reply from server to {stage} command: "
                                      f"{_preview(str(reply))}")

    def _decide_rest(self, reply: ServerReply, stage: str) -> None:
        for index, result in enumerate(self.results):
            if result is None:
                self.results[index] = (reply, stage)

    def _end(self, *, usable: bool) -> None:
        self.done = True
        self.session_usable = usable
        self._expected.clear()


# The transition table: which handler reads a reply to each stage.
_HANDLERS = {
    MAIL_FROM: Transaction._mail_reply,
    RCPT_TO: Transaction._rcpt_reply,
    DATA_STAGE: Transaction._data_reply,
    END_OF_DATA_STAGE: Transaction._end_of_data_reply,
    _DISCARDED: Transaction._discarded_reply,
}
