"""SMTP dialog scripts: what the client sends, what the server must answer.

A script is plain text, one step per line:

    # A comment.
    # settings: message_size_limit=1000 smtpd_recipient_limit=3
    S: 220
    C: EHLO client.example
    S: 250
    S+ PIPELINING
    C: MAIL FROM:<a@example.com>
    C: RCPT TO:<b@mx.example>
    S: 250 2.1.0
    S: 250 2.1.5

Client lines
    C: text      a command or message line; CR LF is added ("C:" alone sends an empty line)
    C! text      raw bytes with Python escapes (\\r \\n \\x00 ...); nothing is added
    C* N text    the line `text` N times (for big messages and many headers)
    In C: and C* lines, {N*x} stands for the character x written N times.
    Consecutive client lines are sent together, as one write, when the next
    S: line (or the end) is reached: a run of C: lines is a pipelined group.

Server lines
    S: prefix    read one reply; its last line must start with `prefix`
    S: EOF       the server has closed the connection
    S: NOTHING   no reply is waiting (e.g. for commands discarded after STARTTLS).
                 A later client line and an S: reply to it must follow: replies
                 come in order, so that reply, arriving next, is what proves
                 the server said nothing in between (no waiting for silence).
    S+ text      some line of the last reply contains `text`
    S- text      no line of the last reply contains `text`

Other steps
    T: starttls  do the TLS handshake now (after a 220 to STARTTLS)

Options go in comments at the top, `# name: value`:
    settings: name=value ...   Postfix main.cf parameters for the server
    relay: reject              refuse recipients outside mx.example, and routed ones
    tls: offered               STARTTLS is offered
    auth: MECH ...             these SASL mechanisms are offered (user1 / secret)
    postfix: differs: why      Postfix 3.7 answers differently on purpose (the
                               script is still right for mailferry)

Scripts assume myhostname = mx.example and that mail for mx.example is
local; other recipients are accepted unless `relay: reject` says otherwise.

run_script() drives any transport with three methods:
    send(data: bytes)
    read_reply() -> (code, lines) | None     None once the server has closed
    is_silent() -> bool                      True when no reply is pending
and, for `T: starttls`, start_tls(). The tests run every script against the
sans-IO ServerConnection; SocketTransport below runs the same scripts against
a real server (all scripts without a `postfix:` note pass against Postfix
3.7 set up as described, with smtpd_forbid_unauth_pipelining = yes,
smtpd_forbid_bare_newline = normalize, smtpd_forbid_bare_newline_exclusions
empty, and a client outside mynetworks for `relay: reject`).
"""

from __future__ import annotations

import codecs
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

OPTION_NAMES = ("settings", "relay", "tls", "auth", "postfix")
_REPEATED_CHAR = re.compile(r"\{(\d+)\*(.)\}")


class Transport(Protocol):
    def send(self, data: bytes) -> None: ...

    def read_reply(self) -> tuple[int, list[str]] | None: ...

    def is_silent(self) -> bool: ...

    def start_tls(self) -> None: ...


@dataclass(frozen=True)
class Step:
    kind: str          # "send", "expect", "eof", "nothing", "contains", "lacks", "starttls"
    text: str = ""
    data: bytes = b""
    line: int = 0


@dataclass
class Script:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def settings(self) -> dict[str, str]:
        """The `# settings:` option as {parameter: value}."""
        pairs = (item.split("=", 1) for item in self.options.get("settings", "").split())
        return {name.strip(): value.strip() for name, value in pairs}


class DialogError(AssertionError):
    pass


def load_script(path: Path) -> Script:
    return parse_script(path.read_text(encoding="utf-8"), name=path.stem)


def parse_script(text: str, name: str = "<script>") -> Script:
    script = Script(name)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("#"):
            _read_option(script, line)
            continue
        tag, rest = line[:2], line[3:] if len(line) > 2 else ""
        script.steps.extend(_steps_for(tag, rest, number, script.name))
    _check_silences_are_proven(script)
    return script


def _check_silences_are_proven(script: Script) -> None:
    for index, step in enumerate(script.steps):
        if step.kind != "nothing":
            continue
        later = [later_step.kind for later_step in script.steps[index + 1:]]
        if not ("send" in later and "expect" in later[later.index("send"):]):
            raise ValueError(f"{script.name}:{step.line}: S: NOTHING needs a later client line and an "
                             "S: reply to it, which proves the silence by order")


def run_script(script: Script, transport: Transport) -> None:
    """Play `script` against `transport`; DialogError says where it went wrong."""
    pending = bytearray()
    last_reply: tuple[int, list[str]] | None = None
    for step in script.steps:
        if step.kind == "send":
            pending += step.data
            continue
        try:
            last_reply = _play(script, step, transport, bytes(pending), last_reply)
        except DialogError:
            raise
        except AssertionError as error:
            _fail(script, step, str(error))
        pending.clear()
    if pending:
        transport.send(bytes(pending))


def _play(script: Script, step: Step, transport: Transport, pending: bytes,
          last_reply: tuple[int, list[str]] | None) -> tuple[int, list[str]] | None:
    """One server-side step, after sending what the client has queued."""
    if pending:
        transport.send(pending)
    if step.kind == "expect":
        last_reply = transport.read_reply()
        _check_reply(script, step, last_reply)
    elif step.kind == "eof":
        reply = transport.read_reply()
        if reply is not None:
            _fail(script, step, f"expected the server to close, got {_show(reply)}")
    elif step.kind == "nothing":
        if not transport.is_silent():
            _fail(script, step, f"expected no reply, got {_show(transport.read_reply())}")
    elif step.kind in ("contains", "lacks"):
        _check_lines(script, step, last_reply)
    elif step.kind == "starttls":
        transport.start_tls()
    return last_reply


class SocketTransport:
    """A script's client over TCP, for a real server."""

    def __init__(self, host: str, port: int, *, source_address: tuple[str, int] | None = None,
                 timeout: float = 10.0):
        self._socket = socket.create_connection((host, port), timeout=timeout,
                                                source_address=source_address)
        self._timeout = timeout
        self._received = bytearray()
        self._closed = False

    def send(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError:
            self._closed = True       # the server hung up; the next read says so

    def read_reply(self) -> tuple[int, list[str]] | None:
        lines: list[str] = []
        while True:
            end = self._received.find(b"\r\n")
            if end < 0:
                if not self._fill(self._timeout):
                    if self._closed and not lines and not self._received:
                        return None
                    raise AssertionError(f"no complete reply; so far {lines} {bytes(self._received)!r}")
                continue
            line = self._received[:end].decode("utf-8", "surrogateescape")
            del self._received[:end + 2]
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), lines

    def is_silent(self) -> bool:
        """Nothing has arrived so far. Whether more is on its way is settled by the
        script's next reply (see S: NOTHING), not by waiting a while."""
        if not self._received:
            self._fill(0.0)
            self._socket.settimeout(self._timeout)   # blocking again, as start_tls needs
        return not self._received

    def start_tls(self, context: ssl.SSLContext | None = None) -> None:
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._socket = context.wrap_socket(self._socket)

    def close(self) -> None:
        self._socket.close()

    def _fill(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False if nothing did."""
        if self._closed:
            return False
        self._socket.settimeout(timeout)
        try:
            data = self._socket.recv(65536)
        except (TimeoutError, socket.timeout, BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            data = b""
        if not data:
            self._closed = True
            return False
        self._received += data
        return True


# --- Parsing -------------------------------------------------------------------------------------

def _read_option(script: Script, line: str) -> None:
    name, colon, value = line.lstrip("#").strip().partition(":")
    if colon and name.strip() in OPTION_NAMES and not script.steps:
        script.options[name.strip()] = value.strip()


def _steps_for(tag: str, rest: str, number: int, name: str) -> list[Step]:
    if tag == "C:":
        return [Step("send", data=_expand(rest).encode("utf-8") + b"\r\n", line=number)]
    if tag == "C!":
        return [Step("send", data=codecs.escape_decode(rest.encode("utf-8"))[0], line=number)]
    if tag == "C*":
        count, _, text = rest.partition(" ")
        data = (_expand(text).encode("utf-8") + b"\r\n") * int(count)
        return [Step("send", data=data, line=number)]
    if tag == "S:":
        kind = {"EOF": "eof", "NOTHING": "nothing"}.get(rest.strip(), "expect")
        return [Step(kind, text=rest, line=number)]
    if tag == "S+":
        return [Step("contains", text=rest, line=number)]
    if tag == "S-":
        return [Step("lacks", text=rest, line=number)]
    if tag == "T:" and rest.strip() == "starttls":
        return [Step("starttls", line=number)]
    raise DialogError(f"{name}:{number}: cannot read {tag + ' ' + rest!r}")


def _expand(text: str) -> str:
    return _REPEATED_CHAR.sub(lambda match: match.group(2) * int(match.group(1)), text)


# --- Checking ------------------------------------------------------------------------------------

def _check_reply(script: Script, step: Step, reply: tuple[int, list[str]] | None) -> None:
    if reply is None:
        _fail(script, step, f"expected {step.text!r}, but the server closed the connection")
    if not reply[1][-1].startswith(step.text):
        _fail(script, step, f"expected {step.text!r}, got {_show(reply)}")


def _check_lines(script: Script, step: Step, reply: tuple[int, list[str]] | None) -> None:
    if reply is None:
        _fail(script, step, "no reply to look into")
    found = any(step.text in line for line in reply[1])
    if found != (step.kind == "contains"):
        verb = "lacks" if step.kind == "contains" else "has"
        _fail(script, step, f"the last reply {verb} {step.text!r}: {_show(reply)}")


def _show(reply: tuple[int, list[str]] | None) -> str:
    return "<closed>" if reply is None else " | ".join(reply[1])


def _fail(script: Script, step: Step, message: str) -> None:
    raise DialogError(f"{script.name}.dialog line {step.line}: {message}")
