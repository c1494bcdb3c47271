"""The SMTP server side as a sans-IO state machine: bytes in, events out;
decisions in, bytes out (in the style of h11). Nothing here touches a socket.

Using it
--------
    conn = ServerConnection(ServerSettings(hostname="mx.example.com"))
    conn.receive(already_readable)        # optional: bytes that came before the banner
    send(conn.greeting())                 # "220 mx.example.com ESMTP mailferry"
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send()); conn.receive(read())   # b"" at EOF
        elif event is CLOSED:
            send(conn.data_to_send()); close(); break
        elif isinstance(event, RcptTo):
            conn.accept() or conn.reject(554, "5.7.1", "<x>: Relay access denied")
        elif isinstance(event, MessageReceived):
            queue_id = commit(event.content)   # may take as long as it needs
            conn.accept_message(queue_id)
        ...

The machine answers everything it can decide alone (syntax, sequence, limits,
NOOP, RSET, VRFY, QUIT...). It stops at the events below and waits for the
application; until the application calls accept(), reject() or
auth_challenge(), next_event() returns PAUSED and nothing is read or answered,
so a reply to a pipelined command can never overtake the reply that the
application is still working on (RFC 5321 6.1: no 250 before the commit).

Events that need a decision:
    Hello(name, extended)            accept() writes the HELO/EHLO reply with the extensions
    MailFrom(path, params)           accept() -> 250 2.1.0 Ok
    RcptTo(path, params)             accept() -> 250 2.1.5 Ok
    MessageReceived(content, via)    accept_message(queue_id), or reject(...)
    StartTLSRequested()              accept() -> 220; then the handshake; then tls_started()
    AuthRequested(mechanism, initial_response)
    AuthResponse(response)           for both: auth_challenge(text) -> 334, accept() -> 235, reject()
Events for the record only (the machine has answered already):
    Quit(), AuthAborted(), ConnectionLost(after), ProtocolViolation(reason, after, detail, closing)

`reject(code, enhanced, text)` with 421 closes the session. timeout_reply()
gives the I/O layer Postfix's 421 for smtpd_timeout. command_counts and
disconnect_summary() carry Postfix's "ehlo=1 mail=1 rcpt=0/1 ... commands=2/3"
accounting: a command counts as a success when its final reply is below 400,
except "452 too many recipients", which Postfix does not count as an error
until smtpd_recipient_overshoot_limit is passed.

How input is read
-----------------
The receive buffer is one bytearray. A command line is found with one
find(b"\\n"); a line longer than line_length_limit is thrown away as it
arrives (the buffer never grows past the limit) and refused once it ends.

DATA ends at exactly CR LF "." CR LF. The search for it starts where the last
one stopped (less 4 bytes), so no byte is examined twice. The CR LF of the DATA
command line is kept in front of the content, so a "." on the very first line
needs no special case. Dot-unstuffing is one bytes.replace over the whole
message, and bare-LF handling happens only when the counts of b"\\n" and
b"\\r\\n" differ. A message that grows past message_size_limit is no longer
stored (the last 4 bytes are kept for the terminator search) and is refused
with 552 when it ends.

A bare LF never ends the data, and a bare CR is never a line end: all the
SMTP-smuggling spellings of the terminator (\\n.\\n, \\r.\\r, \\r\\n.\\n ...) stay
inside the one message. smtpd_forbid_bare_newline = normalize (the default
here) turns bare-LF lines into CR LF lines; reject refuses the message (and
a command line ending in a bare LF, then hangs up), as Postfix does. Postfix's
"no" (bare LF ends lines and the data) is not offered: it is read as normalize.

Transitions
-----------
All command sequencing lives in two tables below: VERBS (per command: handler,
pipelining rule, HELO requirement, junk) and SEQUENCE_ERRORS (per command and
transaction phase: the refusal, if any). Each handler returns the Reply for
the client or the Event for the application, and _write() is the one place
that sends a reply and does the bookkeeping (counts, error limits, closing).

Differences from Postfix 3.7 (all deliberate)
---------------------------------------------
- An over-long command line is refused (500 5.5.2 Error: command too long);
  Postfix cuts it at line_length_limit and runs what is left.
- HELP and EXPN are unknown commands (500), as in Postfix; ETRN is "502 5.5.1
  Error: command not implemented" and is not advertised (no fast flush).
- VRFY answers 252 after a syntax check; recipient restrictions are not run.
- A SASL response line over 12288 octets (or line_length_limit, if larger)
  gets RFC 4954's "500 5.5.6 Authentication Exchange line is too long".
- smtpd_forbid_unauth_pipelining defaults to yes (Postfix >= 3.9).
- Postfix keeps a refused SIZE= in force for the next MAIL in the session; here
  each MAIL stands alone.
- The hop count is checked here rather than in cleanup, with cleanup's
  rule: Received: headers only (not Delivered-To:), our own included, so a
  message that arrives with hopcount_limit - 1 of them is refused (554 5.4.0).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from mailferry.protocol import replies
from mailferry.protocol.address import RECIPIENT, SENDER, Path, parse_path, split_path
from mailferry.protocol.replies import Reply, ReplyError

# --- Settings ------------------------------------------------------------------------------------

NORMALIZE = "normalize"     # smtpd_forbid_bare_newline values
REJECT = "reject"
# Postfix's "no" lets a bare LF end lines and the data (SMTP smuggling);
# mailferry never does, and reads "no" and "yes" as normalize.
_BARE_NEWLINE_VALUES = frozenset({NORMALIZE, REJECT, "no", "yes"})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the state machine needs from main.cf, already typed. The names in
    the comments are the Postfix parameters they come from."""

    hostname: str = "localhost"               # myhostname
    banner: str = ""                          # smtpd_banner, expanded; "" = "$myhostname ESMTP mailferry"
    message_size_limit: int = 10240000        # 0 = no limit
    recipient_limit: int = 1000               # smtpd_recipient_limit; 0 = no limit
    recipient_overshoot_limit: int = 1000     # smtpd_recipient_overshoot_limit
    hopcount_limit: int = 50                  # hopcount_limit; 0 = no limit
    soft_error_limit: int = 10                # smtpd_soft_error_limit
    hard_error_limit: int = 20                # smtpd_hard_error_limit; 0 = no limit
    junk_command_limit: int = 100             # smtpd_junk_command_limit
    error_sleep_time: float = 1.0             # smtpd_error_sleep_time
    line_length_limit: int = 2048             # line_length_limit
    bare_newline: str = NORMALIZE             # smtpd_forbid_bare_newline: normalize, reject (no, yes)
    bare_newline_reject_code: int = 550       # smtpd_forbid_bare_newline_reject_code
    forbid_unauth_pipelining: bool = True     # smtpd_forbid_unauth_pipelining
    helo_required: bool = False               # smtpd_helo_required
    strict_envelopes: bool = False            # strict_rfc821_envelopes (see address.py)
    vrfy_enabled: bool = True                 # not disable_vrfy_command
    # EHLO keywords (smtpd_discard_ehlo_keywords removes them, smtputf8_enable...)
    pipelining: bool = True
    size: bool = True
    enhanced_status_codes: bool = True        # only the keyword: codes are always sent, as by Postfix
    eightbitmime: bool = True
    dsn: bool = True
    smtputf8: bool = True
    chunking: bool = True
    starttls: bool = False                    # offer STARTTLS (smtpd_tls_security_level may/encrypt)
    auth_mechanisms: tuple[str, ...] = ()     # offered SASL mechanisms; () = AUTH not enabled
    auth_requires_tls: bool = False           # smtpd_tls_auth_only

    def __post_init__(self) -> None:
        if self.bare_newline not in _BARE_NEWLINE_VALUES:
            raise ValueError(f"smtpd_forbid_bare_newline: {self.bare_newline!r} is not one of "
                             "normalize, reject, no, yes")

    @property
    def greeting_text(self) -> str:
        return self.banner or f"{self.hostname} ESMTP mailferry"


# --- Events -------------------------------------------------------------------------------------

class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")   # feed more bytes (after sending data_to_send())
PAUSED = _Marker("PAUSED")         # an event is waiting for the application's decision
CLOSED = _Marker("CLOSED")         # send data_to_send(), then close the connection

DATA = "DATA"
BDAT = "BDAT"


@dataclass(frozen=True, slots=True)
class MailParameters:
    size: int | None = None       # SIZE=, as declared
    body: str | None = None       # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None        # DSN RET: "FULL" or "HDRS"
    envid: str | None = None      # DSN ENVID, xtext-decoded
    auth: str | None = None       # AUTH=, xtext-decoded ("<>" for none); None if absent or unreadable


@dataclass(frozen=True, slots=True)
class RcptParameters:
    notify: str | None = None     # "NEVER", or e.g. "SUCCESS,FAILURE" (upper case)
    orcpt: str | None = None      # "rfc822;user@example.com", the address xtext-decoded


@dataclass(frozen=True, slots=True)
class Hello:
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    path: Path
    params: MailParameters


@dataclass(frozen=True, slots=True)
class RcptTo:
    path: Path
    params: RcptParameters


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The whole message, CR LF line ends, no dot-stuffing."""

    content: bytes
    via: str                      # DATA or BDAT


@dataclass(frozen=True, slots=True)
class StartTLSRequested:
    pass


@dataclass(frozen=True, slots=True)
class AuthRequested:
    mechanism: str                # upper case
    initial_response: str | None  # None: absent; "": sent as "=" (RFC 4954)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    response: str                 # the client's line, base64 as sent


@dataclass(frozen=True, slots=True)
class AuthAborted:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    after: str                    # the last command, as in Postfix's "lost connection after DATA"


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """For the log. `reason` reads like Postfix's log text ("improper command
    pipelining", "non-SMTP command", "too many errors", ...); `after` is the
    command it happened after; `detail` the offending input, shortened."""

    reason: str
    after: str
    detail: str = ""
    closing: bool = False


Decision = Hello | MailFrom | RcptTo | MessageReceived | StartTLSRequested | AuthRequested | AuthResponse
Event = Decision | AuthAborted | Quit | ConnectionLost | ProtocolViolation
DECISIONS = (Hello, MailFrom, RcptTo, MessageReceived, StartTLSRequested, AuthRequested, AuthResponse)


# --- The transition tables ----------------------------------------------------------------------

# Transaction phases.
IDLE = "idle"                     # no MAIL yet
MAIL = "mail"                     # MAIL accepted, no recipient yet
RCPT = "rcpt"                     # at least one recipient accepted
CHUNKING = "chunking"             # BDAT chunks stored, LAST still to come
DISCARDING = "discarding"         # a BDAT failed: chunks are dropped until LAST or RSET
DISCARDING_IDLE = "discarding-idle"   # the same, in a session without MAIL

# Pipelining rules (RFC 2920 3.1).
GROUPABLE = "groupable"           # may be followed by more commands once PIPELINING was offered
LAST_IN_GROUP = "last"            # must be the last command of a group
UNCHECKED = "unchecked"           # STARTTLS (input is discarded anyway), AUTH, BDAT (data follows), QUIT...


@dataclass(frozen=True, slots=True)
class Verb:
    handler: str                  # the ServerConnection method
    pipelining: str = GROUPABLE
    needs_hello: bool = False     # refused before HELO/EHLO when smtpd_helo_required = yes
    junk: bool = False            # counts toward smtpd_junk_command_limit


VERBS: dict[str, Verb] = {
    "HELO": Verb("_handle_helo", LAST_IN_GROUP),
    "EHLO": Verb("_handle_ehlo", LAST_IN_GROUP),
    "STARTTLS": Verb("_handle_starttls", UNCHECKED),
    "AUTH": Verb("_handle_auth", UNCHECKED, needs_hello=True),
    "MAIL": Verb("_handle_mail", needs_hello=True),
    "RCPT": Verb("_handle_rcpt"),
    "DATA": Verb("_handle_data", LAST_IN_GROUP),
    "BDAT": Verb("_handle_bdat", UNCHECKED),
    "RSET": Verb("_handle_rset", junk=True),
    "NOOP": Verb("_handle_noop", LAST_IN_GROUP, junk=True),
    "VRFY": Verb("_handle_vrfy", LAST_IN_GROUP, junk=True),
    "ETRN": Verb("_handle_etrn", UNCHECKED, junk=True),
    "QUIT": Verb("_handle_quit", UNCHECKED),
}

# What each transaction command gets in each phase; a phase not listed is fine.
# Checked against Postfix 3.7, including the BDAT corner cases.
SEQUENCE_ERRORS: dict[str, dict[str, Reply]] = {
    "MAIL": {
        MAIL: replies.NESTED_MAIL, RCPT: replies.NESTED_MAIL, CHUNKING: replies.NESTED_MAIL,
        DISCARDING: replies.NESTED_MAIL, DISCARDING_IDLE: replies.MAIL_AFTER_BDAT,
    },
    "RCPT": {
        IDLE: replies.NEED_MAIL, DISCARDING_IDLE: replies.NEED_MAIL,
        CHUNKING: replies.RCPT_AFTER_BDAT, DISCARDING: replies.RCPT_AFTER_BDAT,
    },
    "DATA": {
        IDLE: replies.NEED_RCPT, MAIL: replies.NO_VALID_RECIPIENTS,
        CHUNKING: replies.DATA_AFTER_BDAT, DISCARDING: replies.DATA_AFTER_BDAT,
        DISCARDING_IDLE: replies.DATA_AFTER_BDAT,
    },
    # BDAT in a DISCARDING phase is not refused: its chunk is read and dropped.
    "BDAT": {IDLE: replies.NEED_RCPT, MAIL: replies.NO_VALID_RECIPIENTS},
    "AUTH": {
        MAIL: replies.TRANSACTION_IN_PROGRESS, RCPT: replies.TRANSACTION_IN_PROGRESS,
        CHUNKING: replies.TRANSACTION_IN_PROGRESS, DISCARDING: replies.TRANSACTION_IN_PROGRESS,
    },
}

# The order of Postfix's "disconnect from ..." counters.
COUNTED_COMMANDS = ("helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat",
                    "rset", "noop", "vrfy", "etrn", "quit", "unknown")

# Input modes.
_COMMAND = "command"
_DATA = "data"
_CHUNK = "chunk"
_AUTH_RESPONSE = "auth-response"
_TLS_HANDSHAKE = "tls-handshake"
_CLOSED = "closed"

END_OF_DATA = b"\r\n.\r\n"
_LINE_TOO_LONG = object()
# Postfix's smtpd_forbidden_commands default, "CONNECT GET POST" plus commands
# that do not start with a letter.
_FORBIDDEN_VERBS = frozenset({"CONNECT", "GET", "POST"})
_LARGEST_SIZE = 2 ** 63 - 1
_XTEXT = re.compile(r"(?:[!-*,-~]|\+[0-9A-Fa-f]{2})*")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9-]+")
# RFC 4954 4: SASL responses may be long (Kerberos tickets); 12288 octets is
# the RFC's floor. Over it, the RFC's own reply (Postfix hands any length on
# to its SASL server instead).
_AUTH_LINE_LIMIT = 12288
_AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")

# How a BDAT chunk is handled once read.
_STORE = "store"
_DROP_WITH_ERROR = "drop-with-error"   # reply self._chunk_error
_DROP_AS_DISCARDED = "drop-discarded"  # "551 Discarded N bytes after earlier error"


class ServerConnection:
    """One SMTP session, server side. See the module docstring."""

    def __init__(self, settings: ServerSettings | None = None):
        self.settings = settings or ServerSettings()
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self._events: deque[Event] = deque()   # record-only events not yet returned
        self._pending: Decision | None = None
        self._mode = _COMMAND
        self._greeted = False
        self._early_input = False
        self._eof = False
        # Session state.
        self.helo_name: str | None = None
        self.esmtp = False
        self.tls_active = False
        self.authenticated = False
        self._pipelining_offered = False
        self.error_count = 0
        self._junk_count = 0
        self._counts: dict[str, list[int]] = {}
        self.last_command = "CONNECT"
        self._count_key = ""
        # Transaction state.
        self.phase = IDLE
        self.sender: Path | None = None
        self._smtputf8 = False
        self.recipient_count = 0
        self._overshoot = 0
        # Line reading.
        self._line_scan_from = 0
        self._skipping_long_line = False
        # DATA reading.
        self._scan_from = 0
        self._data_over_limit = False
        self._stuffed_dots = 0
        self._dots_counted_to = 0
        # Bytes examined while looking for END_OF_DATA: tests use it to show
        # that nothing is searched twice.
        self.terminator_bytes_examined = 0
        # BDAT reading.
        self._message = bytearray()
        self._chunk_remaining = 0
        self._chunk_size = 0
        self._chunk_last = False
        self._chunk_handling = _STORE
        self._chunk_error: Reply | None = None

    # --- The I/O side ----------------------------------------------------------------------------

    def greeting(self) -> bytes:
        """The 220 banner. Call it when the banner is about to be written:
        bytes received before it count as talking before the greeting."""
        self._greeted = True
        return replies.greeting(self.settings.greeting_text).to_bytes()

    def receive(self, data: bytes) -> None:
        """Feed bytes read from the client; b"" means end of file."""
        if not data:
            self._eof = True
            return
        if self._mode in (_CLOSED, _TLS_HANDSHAKE):
            # Closed: nobody listens. Handshake: plaintext after STARTTLS is
            # never trusted (CVE-2011-0411).
            return
        if not self._greeted:
            self._early_input = True
        self._buffer += data

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def timeout_reply(self) -> bytes:
        """smtpd_timeout expired: everything still to send, then Postfix's 421."""
        self._write(replies.timeout_exceeded(self.settings.hostname), final=False, close=True)
        return self.data_to_send()

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS is done: forget everything learned
        in plaintext (RFC 3207 4.2); the client must say EHLO again."""
        if self._mode != _TLS_HANDSHAKE:
            raise RuntimeError("tls_started() without an accepted STARTTLS")
        self.tls_active = True
        self.helo_name = None
        self.esmtp = False
        self.authenticated = False
        self._pipelining_offered = False
        self._reset_transaction()
        self._buffer = bytearray()
        self._line_scan_from = 0
        self._mode = _COMMAND

    # --- Events and decisions --------------------------------------------------------------------

    def next_event(self) -> Event | _Marker:
        if not self._greeted:
            raise RuntimeError("greeting() must come first")
        if not self._events and self._pending is None:
            self._read_until_event()
        if self._events:
            event = self._events.popleft()
            if isinstance(event, DECISIONS):
                self._pending = event
            return event
        if self._pending is not None:
            return PAUSED
        return CLOSED if self._mode == _CLOSED else NEED_DATA

    def accept(self, text: str | None = None) -> None:
        """Say yes to the pending event, with the standard reply (its text
        replaced by `text` if given). MessageReceived needs a text: see
        accept_message()."""
        event = self._take_pending()
        if isinstance(event, Hello):
            self._hello_accepted(event)
        elif isinstance(event, MailFrom):
            self.sender = event.path
            self._smtputf8 = event.params.smtputf8
            self.phase = MAIL
            self._write(_with_text(replies.SENDER_OK, text))
        elif isinstance(event, RcptTo):
            self.recipient_count += 1
            self.phase = RCPT
            self._write(_with_text(replies.RECIPIENT_OK, text))
        elif isinstance(event, MessageReceived):
            if text is None:
                raise ValueError("accepting a message needs the reply text (or accept_message)")
            self._message_answered(Reply(250, "2.0.0", text))
        elif isinstance(event, StartTLSRequested):
            self._starttls_accepted(text)
        else:
            self.authenticated = True
            self._mode = _COMMAND
            self._write(_with_text(replies.AUTH_SUCCESSFUL, text))

    def accept_message(self, queue_id: str) -> None:
        """Accept MessageReceived with Postfix's "queued as" reply."""
        event = self._pending
        if not isinstance(event, MessageReceived):
            raise RuntimeError(f"no message is waiting for an answer (pending: {event!r})")
        self._pending = None
        if event.via == BDAT:
            self._message_answered(replies.chunk_queued(len(event.content), queue_id))
        else:
            self._message_answered(replies.message_queued(queue_id))

    def reject(self, code: int, enhanced: str, text: str) -> None:
        """Say no to the pending event. 421 also ends the session."""
        self.refuse(Reply(code, enhanced, text))

    def refuse(self, reply: Reply) -> None:
        """reject() with a ready Reply (as mailferry.refusals makes them)."""
        if not 400 <= reply.code <= 599:
            raise ValueError(f"a rejection needs a 4xx or 5xx code, not {reply.code}")
        event = self._take_pending()
        if isinstance(event, MessageReceived):
            self._message_answered(reply)
            return
        if isinstance(event, (AuthRequested, AuthResponse)):
            self._mode = _COMMAND
        self._write(reply, close=reply.code == 421)

    def auth_challenge(self, challenge: str) -> None:
        """Continue a SASL exchange: send "334 challenge" (base64, "" for
        none) and hand the client's next line over as AuthResponse."""
        if not isinstance(self._pending, (AuthRequested, AuthResponse)):
            raise RuntimeError(f"no AUTH exchange is waiting (pending: {self._pending!r})")
        self._pending = None
        self._write(replies.auth_challenge(challenge), final=False)
        self._mode = _AUTH_RESPONSE

    # --- What the application may want to know ---------------------------------------------------

    @property
    def reply_delay(self) -> float:
        """Seconds to wait before the next reply: smtpd_error_sleep_time once
        the client has made smtpd_soft_error_limit errors without delivering mail."""
        if self.error_count >= self.settings.soft_error_limit:
            return self.settings.error_sleep_time
        return 0.0

    @property
    def command_counts(self) -> dict[str, tuple[int, int]]:
        """{"rcpt": (successes, total), ...}"""
        return {name: (ok, total) for name, (ok, total) in self._counts.items()}

    def disconnect_summary(self) -> str:
        """The tail of Postfix's "disconnect from" line: "ehlo=1 mail=1 rcpt=0/1 commands=2/3"."""
        parts, all_ok, all_total = [], 0, 0
        for name in COUNTED_COMMANDS:
            if name not in self._counts:
                continue
            ok, total = self._counts[name]
            parts.append(_count_text(name, ok, total))
            all_ok += ok
            all_total += total
        parts.append(_count_text("commands", all_ok, all_total))
        return " ".join(parts)

    @property
    def buffered_bytes(self) -> int:
        """Input held in memory: unread input plus BDAT chunks stored so far."""
        return len(self._buffer) + len(self._message)

    @property
    def pipelining_offered(self) -> bool:
        return self._pipelining_offered

    def ehlo_keywords(self) -> list[str]:
        """The extensions an EHLO reply would list now, in Postfix's order."""
        settings = self.settings
        keywords = []
        if settings.pipelining:
            keywords.append("PIPELINING")
        if settings.size:
            limit = settings.message_size_limit
            keywords.append(f"SIZE {limit}" if limit else "SIZE")
        if settings.vrfy_enabled:
            keywords.append("VRFY")
        if settings.starttls and not self.tls_active:
            keywords.append("STARTTLS")
        if mechanisms := self._auth_mechanisms_offered():
            keywords.append("AUTH " + " ".join(mechanisms))
        if settings.enhanced_status_codes:
            keywords.append("ENHANCEDSTATUSCODES")
        if settings.eightbitmime:
            keywords.append("8BITMIME")
        if settings.dsn:
            keywords.append("DSN")
        if settings.smtputf8:
            keywords.append("SMTPUTF8")
        if settings.chunking:
            keywords.append("CHUNKING")
        return keywords

    # --- The one place that writes replies -------------------------------------------------------

    def _write(self, reply: Reply, *, final: bool = True, failed: bool | None = None,
               close: bool = False) -> None:
        """Queue `reply`. A final reply ends the current command: it is
        counted, and an error brings the session closer to the hard limit."""
        self._outgoing += reply.to_bytes()
        if final:
            if failed is None:
                failed = not reply.is_success
            self._count(self._count_key, not failed)
            if failed:
                self.error_count += 1
        if close or reply.closes_connection:
            self._close()
            return
        limit = self.settings.hard_error_limit
        if final and limit and self.error_count >= limit:
            self._events.append(ProtocolViolation("too many errors", self.last_command, closing=True))
            self._outgoing += replies.too_many_errors(self.settings.hostname).to_bytes()
            self._close()

    def _count(self, key: str, ok: bool) -> None:
        if not key:
            return
        counts = self._counts.setdefault(key, [0, 0])
        counts[0] += ok
        counts[1] += 1

    def _close(self) -> None:
        self._mode = _CLOSED
        self._buffer = bytearray()
        self._message = bytearray()

    # --- Reading ---------------------------------------------------------------------------------

    def _advance(self) -> Decision | _Marker | None:
        """One step of reading: NEED_DATA, a Decision, or None after progress."""
        if self._mode == _COMMAND:
            return self._read_command()
        if self._mode == _DATA:
            return self._read_data()
        if self._mode == _CHUNK:
            return self._read_chunk()
        if self._mode == _AUTH_RESPONSE:
            return self._read_auth_response()
        return NEED_DATA     # _TLS_HANDSHAKE: waiting for tls_started()

    def _read_until_event(self) -> None:
        """Read and answer until there is an event to report or input runs out."""
        while self._mode != _CLOSED:
            outcome = self._advance()
            if outcome is NEED_DATA:
                if self._eof:
                    self._events.append(ConnectionLost(self.last_command))
                    self._close()
                return
            if outcome is not None:
                self._events.append(outcome)
                return
            if self._events:
                return

    def _take_line(self, limit: int) -> bytes | object | None:
        """The next line without its line end; None while incomplete;
        _LINE_TOO_LONG once a line longer than `limit` has ended."""
        buffer = self._buffer
        newline = buffer.find(b"\n", self._line_scan_from)
        if newline < 0:
            if self._skipping_long_line or len(buffer) > limit + 1:
                # Drop it as it comes: the buffer stays bounded.
                self._skipping_long_line = True
                buffer.clear()
                self._line_scan_from = 0
            else:
                self._line_scan_from = len(buffer)
            return None
        self._line_scan_from = 0
        has_cr = newline > 0 and buffer[newline - 1] == 0x0D
        line = bytes(buffer[:newline - has_cr])
        del buffer[:newline + 1]
        if self._skipping_long_line or len(line) > limit:
            self._skipping_long_line = False
            return _LINE_TOO_LONG
        if not has_cr and self.settings.bare_newline == REJECT:
            self._bare_newline_in_command(line)
            return None
        return line

    def _bare_newline_in_command(self, line: bytes) -> None:
        self._events.append(ProtocolViolation("bare <LF> received", self.last_command,
                                              _preview(line), closing=True))
        self._count_key = ""
        self._write(replies.bare_newline(self.settings.hostname,
                                         self.settings.bare_newline_reject_code), close=True)

    def _read_command(self) -> Decision | _Marker | None:
        if self._early_input:
            self._early_input = False
            self._improper_pipelining("CONNECT")
            if self._mode == _CLOSED:
                return None
        line = self._take_line(self.settings.line_length_limit)
        if line is None:
            return None if self._mode == _CLOSED else NEED_DATA
        if line is _LINE_TOO_LONG:
            self._count_key = "unknown"
            self._write(replies.COMMAND_TOO_LONG)
            return None
        return self._dispatch(line)

    def _dispatch(self, line: bytes) -> Decision | None:
        text = line.decode("utf-8", "surrogateescape")
        words = text.split(None, 1)
        if not words or "\0" in text:
            self._count_key = "unknown"
            self._write(replies.BAD_SYNTAX)
            return None
        verb = words[0].upper()
        argument = words[1].strip() if len(words) > 1 else ""
        spec = VERBS.get(verb)
        if spec is None:
            self._unknown_command(words[0], text)
            return None
        self.last_command = verb
        self._count_key = verb.lower()
        if self._buffer and self._pipelining_forbidden_after(spec):
            self._improper_pipelining(verb)
            if self._mode == _CLOSED:
                return None
        if spec.junk:
            self._junk_count += 1
            if self._junk_count > self.settings.junk_command_limit:
                self.error_count += 1
        if spec.needs_hello and self.settings.helo_required and self.helo_name is None:
            self._write(replies.SEND_HELO_FIRST)
            return None
        try:
            outcome = getattr(self, spec.handler)(argument)
        except ReplyError as error:
            outcome = error.reply
        if isinstance(outcome, Reply):
            self._write(outcome)
            return None
        return outcome

    def _unknown_command(self, first_word: str, text: str) -> None:
        self.last_command = "UNKNOWN"
        self._count_key = "unknown"
        if _is_non_smtp_command(first_word):
            self._events.append(ProtocolViolation("non-SMTP command", self.last_command,
                                                  _preview(text.encode("utf-8", "surrogateescape")),
                                                  closing=True))
            self._write(replies.NON_SMTP_COMMAND)
            return
        self._write(replies.NOT_RECOGNIZED)

    def _pipelining_forbidden_after(self, spec: Verb) -> bool:
        if spec.pipelining == UNCHECKED:
            return False
        return spec.pipelining == LAST_IN_GROUP or not self._pipelining_offered

    def _improper_pipelining(self, after: str) -> None:
        closing = self.settings.forbid_unauth_pipelining
        self._events.append(ProtocolViolation("improper command pipelining", after,
                                              _preview(self._buffer), closing=closing))
        if closing:
            self._write(replies.PIPELINING_VIOLATION, close=True)

    # --- DATA ------------------------------------------------------------------------------------

    def _read_data(self) -> Decision | _Marker | None:
        buffer = self._buffer
        end = buffer.find(END_OF_DATA, self._scan_from)
        self.terminator_bytes_examined += (len(buffer) if end < 0 else end + len(END_OF_DATA)) \
            - self._scan_from
        if end < 0:
            # The terminator may start in the last 4 bytes: look there again next time.
            self._scan_from = max(len(buffer) - (len(END_OF_DATA) - 1), 0)
            self._watch_data_size()
            return NEED_DATA
        content = None
        if not self._data_over_limit:
            with memoryview(buffer) as view:
                content = bytes(view[2:end + 2])      # after our leading CR LF, with the last line's CR LF
        self._keep_after(end + len(END_OF_DATA))
        self._mode = _COMMAND
        if content is None:
            self._reset_transaction()
            self._write(replies.MESSAGE_TOO_BIG)
            return None
        return self._message_complete(content, DATA)

    def _watch_data_size(self) -> None:
        """Stop storing a message that is certain to be over the limit."""
        limit = self.settings.message_size_limit
        buffer = self._buffer
        if not limit:
            return
        if not self._data_over_limit:
            stored = len(buffer) - 2
            if stored <= limit:
                return
            # Stuffed dots do not count (RFC 1870). Counted incrementally, and
            # only for messages already near the limit.
            self._stuffed_dots += buffer.count(b"\r\n..", self._dots_counted_to)
            self._dots_counted_to = max(self._dots_counted_to, len(buffer) - 3)
            if stored - self._stuffed_dots <= limit:
                return
            self._data_over_limit = True
        surplus = len(buffer) - (len(END_OF_DATA) - 1)
        if surplus > 0:
            del buffer[:surplus]
            self._scan_from = 0

    def _keep_after(self, consumed: int) -> None:
        # A fresh buffer lets a large message's memory go at once.
        with memoryview(self._buffer) as view:
            self._buffer = bytearray(view[consumed:])

    def _message_complete(self, content: bytes, via: str) -> Decision | None:
        """Checks that need the whole message; then the app decides."""
        self._message = bytearray()
        has_bare_lf = content.count(b"\n") != content.count(b"\r\n")
        if has_bare_lf and self.settings.bare_newline == REJECT:
            self._reset_transaction()
            self._events.append(ProtocolViolation("bare <LF> received", via))
            self._write(replies.bare_newline(self.settings.hostname,
                                             self.settings.bare_newline_reject_code))
            return None
        if has_bare_lf:
            content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if via == DATA:
            content = content.replace(b"\r\n..", b"\r\n.")
            if content.startswith(b".."):
                content = content[1:]
        elif content and not content.endswith(b"\r\n"):
            content += b"\r\n"      # as Postfix does for a BDAT message without a final line end
        refusal = self._message_refusal(content)
        if refusal is not None:
            self._reset_transaction()
            self._write(refusal)
            return None
        return MessageReceived(content, via)

    def _message_refusal(self, content: bytes) -> Reply | None:
        settings = self.settings
        if settings.message_size_limit and len(content) > settings.message_size_limit:
            return replies.MESSAGE_TOO_BIG
        # Counting the Received: header we are about to add, as Postfix's cleanup does.
        if settings.hopcount_limit and count_received_headers(content) + 1 >= settings.hopcount_limit:
            return replies.TOO_MANY_HOPS
        return None

    def _message_answered(self, reply: Reply) -> None:
        self._reset_transaction()
        if reply.is_success:
            # Postfix forgives a client that delivers mail.
            self.error_count = 0
            self._junk_count = 0
        self._write(reply, close=reply.code == 421)

    # --- BDAT ------------------------------------------------------------------------------------

    def _read_chunk(self) -> Decision | _Marker | None:
        if self._chunk_remaining:
            if not self._buffer:
                return NEED_DATA
            take = min(self._chunk_remaining, len(self._buffer))
            if self._chunk_handling == _STORE:
                with memoryview(self._buffer) as view:
                    self._message += view[:take]
            del self._buffer[:take]
            self._chunk_remaining -= take
            if self._chunk_remaining:
                return NEED_DATA
        self._mode = _COMMAND
        return self._chunk_complete()

    def _chunk_complete(self) -> Decision | None:
        size, last = self._chunk_size, self._chunk_last
        if self._chunk_handling == _DROP_AS_DISCARDED:
            if last:
                self._reset_transaction()
            self._write(replies.chunk_discarded(size))
            return None
        if self._chunk_handling == _DROP_WITH_ERROR:
            error = self._chunk_error
            if last:
                # Postfix ends the transaction with a refused LAST chunk
                # (unlike a refused DATA, which leaves MAIL in place).
                self._reset_transaction()
            else:
                self.phase = DISCARDING if self.sender is not None else DISCARDING_IDLE
                self._message = bytearray()
            self._write(error)
            return None
        if not last:
            self.phase = CHUNKING
            self._write(replies.chunk_received(size))
            return None
        content = bytes(self._message)
        return self._message_complete(content, BDAT)

    # --- Handlers: one per verb, each returns a Reply, a Decision, or None when
    # --- it has answered already.

    def _handle_helo(self, argument: str) -> Reply | Decision:
        return Hello(argument, False) if argument else replies.HELO_SYNTAX

    def _handle_ehlo(self, argument: str) -> Reply | Decision:
        return Hello(argument, True) if argument else replies.EHLO_SYNTAX

    def _hello_accepted(self, event: Hello) -> None:
        self._reset_transaction()
        self.helo_name = event.name
        self.esmtp = event.extended
        self._pipelining_offered = event.extended and self.settings.pipelining
        hostname = self.settings.hostname
        if event.extended:
            self._write(replies.ehlo_reply(hostname, self.ehlo_keywords()))
        else:
            self._write(replies.helo_reply(hostname))

    def _handle_mail(self, argument: str) -> Reply | Decision:
        if refusal := SEQUENCE_ERRORS["MAIL"].get(self.phase):
            return refusal
        if argument[:5].upper() != "FROM:":
            return replies.MAIL_SYNTAX
        path_text, parameter_text = split_path(argument[5:])
        if not path_text:
            return replies.MAIL_SYNTAX
        params = self._mail_parameters(parameter_text)
        path = parse_path(path_text, allow_smtputf8=self.settings.smtputf8 and params.smtputf8,
                          role=SENDER, strict=self.settings.strict_envelopes)
        return MailFrom(path, params)

    def _handle_rcpt(self, argument: str) -> Reply | Decision | None:
        if refusal := SEQUENCE_ERRORS["RCPT"].get(self.phase):
            return refusal
        if argument[:3].upper() != "TO:":
            return replies.RCPT_SYNTAX
        path_text, parameter_text = split_path(argument[3:])
        if not path_text:
            return replies.RCPT_SYNTAX
        limit = self.settings.recipient_limit
        if limit and self.recipient_count >= limit:
            # Flow control, not an error, until the client overdoes it.
            self._overshoot += 1
            overdone = self._overshoot > self.settings.recipient_overshoot_limit
            self._write(replies.TOO_MANY_RECIPIENTS, failed=overdone)
            return None
        params = self._rcpt_parameters(parameter_text)
        path = parse_path(path_text, allow_smtputf8=self.settings.smtputf8 and self._smtputf8,
                          role=RECIPIENT, strict=self.settings.strict_envelopes)
        return RcptTo(path, params)

    def _handle_data(self, argument: str) -> Reply | None:
        if refusal := SEQUENCE_ERRORS["DATA"].get(self.phase):
            return refusal
        if argument:
            return replies.DATA_SYNTAX
        self._write(replies.START_MAIL_INPUT, final=False)
        self._mode = _DATA
        # Our own CR LF in front: a "." on the first line ends the data like any other.
        self._buffer[0:0] = b"\r\n"
        self._scan_from = 0
        self._data_over_limit = False
        self._stuffed_dots = 0
        self._dots_counted_to = 0
        return None

    def _handle_bdat(self, argument: str) -> Reply | None:
        if not self.settings.chunking:
            return replies.CHUNKING_NOT_IMPLEMENTED
        words = argument.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not 1 <= len(words) <= 2 or (len(words) == 2 and not last) \
                or not words[0].isascii() or not words[0].isdigit() \
                or int(words[0]) > _LARGEST_SIZE:
            return replies.BDAT_SYNTAX
        size = int(words[0])
        self._chunk_size = self._chunk_remaining = size
        self._chunk_last = last
        self._chunk_handling, self._chunk_error = self._chunk_plan(size, last)
        self._mode = _CHUNK
        return None

    def _chunk_plan(self, size: int, last: bool) -> tuple[str, Reply | None]:
        if self.phase in (DISCARDING, DISCARDING_IDLE):
            return _DROP_AS_DISCARDED, None
        if refusal := SEQUENCE_ERRORS["BDAT"].get(self.phase):
            return _DROP_WITH_ERROR, refusal
        if size == 0 and not last:
            return _DROP_WITH_ERROR, replies.NULL_BDAT
        limit = self.settings.message_size_limit
        if limit and len(self._message) + size > limit:
            return _DROP_WITH_ERROR, replies.CHUNK_TOO_BIG
        return _STORE, None

    def _handle_rset(self, argument: str) -> Reply:
        if argument:
            return replies.RSET_SYNTAX
        self._reset_transaction()
        return replies.OK

    def _handle_noop(self, argument: str) -> Reply:
        return replies.OK

    def _handle_vrfy(self, argument: str) -> Reply:
        if not self.settings.vrfy_enabled:
            return replies.VRFY_DISABLED
        words = argument.split()
        if not words:
            return replies.VRFY_SYNTAX
        if len(words) > 2 or (len(words) == 2 and words[1].upper() != "SMTPUTF8"):
            return replies.BAD_RECIPIENT_SYNTAX
        parse_path(words[0], allow_smtputf8=self.settings.smtputf8, role=RECIPIENT)
        return replies.vrfy_reply(words[0])

    def _handle_etrn(self, argument: str) -> Reply:
        return replies.NOT_IMPLEMENTED

    def _handle_quit(self, argument: str) -> Reply:
        self._events.append(Quit())
        return replies.BYE

    def _handle_starttls(self, argument: str) -> Reply | Decision:
        if self.tls_active:
            return replies.TLS_ALREADY_ACTIVE
        if not self.settings.starttls:
            return replies.NOT_IMPLEMENTED
        if argument:
            return replies.STARTTLS_SYNTAX
        return StartTLSRequested()

    def _starttls_accepted(self, text: str | None) -> None:
        if self._buffer:
            # Commands sent before the handshake must not be run as if they
            # had come over TLS (CVE-2011-0411).
            self._events.append(ProtocolViolation("pipelined input after STARTTLS discarded",
                                                  "STARTTLS", _preview(self._buffer)))
        self._buffer = bytearray()
        self._line_scan_from = 0
        self._write(_with_text(replies.READY_FOR_TLS, text))
        if self._mode != _CLOSED:
            self._mode = _TLS_HANDSHAKE

    def _handle_auth(self, argument: str) -> Reply | Decision:
        if not self._auth_mechanisms_offered():
            return replies.AUTH_NOT_ENABLED
        if not argument:
            return replies.AUTH_SYNTAX
        if self.authenticated:
            return replies.ALREADY_AUTHENTICATED
        if refusal := SEQUENCE_ERRORS["AUTH"].get(self.phase):
            return refusal
        words = argument.split()
        if len(words) > 2:
            return replies.AUTH_SYNTAX
        initial = words[1] if len(words) == 2 else None
        return AuthRequested(words[0].upper(), "" if initial == "=" else initial)

    def _read_auth_response(self) -> Decision | _Marker | None:
        line = self._take_line(max(self.settings.line_length_limit, _AUTH_LINE_LIMIT))
        if line is None:
            return None if self._mode == _CLOSED else NEED_DATA
        if line is _LINE_TOO_LONG:
            self._mode = _COMMAND
            self._write(_AUTH_LINE_TOO_LONG)
            return None
        response = line.decode("ascii", "replace").strip()
        if response == "*":
            self._mode = _COMMAND
            self._events.append(AuthAborted())
            self._write(replies.AUTH_ABORTED)
            return None
        # The mode stays _AUTH_RESPONSE until the application answers.
        return AuthResponse(response)

    # --- Parameters ------------------------------------------------------------------------------

    def _mail_parameters(self, text: str) -> MailParameters:
        fields: dict[str, object] = {}
        for word in text.split():
            keyword, equals, value = word.partition("=")
            keyword = keyword.upper()
            if keyword == "SIZE" and equals:
                fields["size"] = self._declared_size(value)
            elif keyword == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                fields["body"] = value.upper()
            elif keyword == "SMTPUTF8" and not equals and self.settings.smtputf8:
                fields["smtputf8"] = True
            elif keyword == "RET" and equals and self.settings.dsn:
                if "ret" in fields or value.upper() not in ("FULL", "HDRS"):
                    raise ReplyError(replies.BAD_RET_SYNTAX)
                fields["ret"] = value.upper()
            elif keyword == "ENVID" and equals and self.settings.dsn:
                envid = decode_xtext(value)
                if "envid" in fields or not envid or not envid.isprintable():
                    raise ReplyError(replies.BAD_ENVID_SYNTAX)
                fields["envid"] = envid
            elif keyword == "AUTH" and equals:
                # RFC 4954 5: a server that does not trust it simply ignores it.
                fields["auth"] = decode_xtext(value)
            else:
                raise ReplyError(replies.unsupported_option(word))
        return MailParameters(**fields)

    def _declared_size(self, value: str) -> int:
        if not value.isascii() or not value.isdigit():
            raise ReplyError(replies.BAD_SIZE_SYNTAX)
        size = int(value)
        if size > _LARGEST_SIZE:
            raise ReplyError(replies.SIZE_EXCEEDS_FILE_SYSTEM)
        limit = self.settings.message_size_limit
        if limit and size > limit:
            raise ReplyError(replies.SIZE_EXCEEDS_LIMIT)
        return size

    def _rcpt_parameters(self, text: str) -> RcptParameters:
        fields: dict[str, str] = {}
        for word in text.split():
            keyword, equals, value = word.partition("=")
            keyword = keyword.upper()
            if keyword == "NOTIFY" and equals and self.settings.dsn:
                if "notify" in fields:
                    raise ReplyError(replies.BAD_NOTIFY_SYNTAX)
                fields["notify"] = _notify_value(value)
            elif keyword == "ORCPT" and equals and self.settings.dsn:
                if "orcpt" in fields:
                    raise ReplyError(replies.BAD_ORCPT_SYNTAX)
                fields["orcpt"] = _orcpt_value(value)
            else:
                raise ReplyError(replies.unsupported_option(word))
        return RcptParameters(**fields)

    # --- Small helpers ---------------------------------------------------------------------------

    def _take_pending(self) -> Decision:
        event = self._pending
        if event is None:
            raise RuntimeError("no event is waiting for a decision")
        self._pending = None
        return event

    def _auth_mechanisms_offered(self) -> tuple[str, ...]:
        if self.settings.auth_requires_tls and not self.tls_active:
            return ()
        return self.settings.auth_mechanisms

    def _reset_transaction(self) -> None:
        self.phase = IDLE
        self.sender = None
        self._smtputf8 = False
        self.recipient_count = 0
        self._overshoot = 0
        self._message = bytearray()


# --- Functions on their own ---------------------------------------------------------------------

def decode_xtext(text: str) -> str | None:
    """RFC 3461 xtext -> text; None if malformed. Lower-case hex and a bare
    "=" are let through, as Postfix lets them through (SRS addresses in ORCPT
    are often sent unencoded)."""
    if not _XTEXT.fullmatch(text):
        return None
    return _XTEXT_HEX.sub(lambda match: chr(int(match.group(1), 16)), text)


def count_received_headers(content: bytes) -> int:
    """Received: header fields in the header section of `content`."""
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[:end + 2]
    return (b"\r\n" + header.lower()).count(b"\r\nreceived:")


def _notify_value(value: str) -> str:
    words = value.upper().split(",")
    if words == ["NEVER"] or (value and all(word in _NOTIFY_WORDS for word in words)):
        return ",".join(words)
    raise ReplyError(replies.BAD_NOTIFY_SYNTAX)


def _orcpt_value(value: str) -> str:
    address_type, semicolon, xtext = value.partition(";")
    address = decode_xtext(xtext)
    if not semicolon or not _ADDRESS_TYPE.fullmatch(address_type) or address is None:
        raise ReplyError(replies.BAD_ORCPT_SYNTAX)
    return f"{address_type};{address}"


def _is_non_smtp_command(first_word: str) -> bool:
    """Postfix's smtpd_forbidden_commands default, and message headers sent
    as commands (a client that pipelined DATA and got refused)."""
    first = first_word[0]
    if not (first.isascii() and first.isalpha()):
        return True
    if first_word.upper() in _FORBIDDEN_VERBS:
        return True
    name, colon, _ = first_word.partition(":")
    return bool(colon and name) and all("!" <= char <= "~" for char in name)


def _with_text(reply: Reply, text: str | None) -> Reply:
    return reply if text is None else Reply(reply.code, reply.enhanced, text)


def _count_text(name: str, ok: int, total: int) -> str:
    return f"{name}={ok}" if ok == total else f"{name}={ok}/{total}"


def _preview(data: bytes | bytearray, limit: int = 100) -> str:
    """Input for a log line: shortened, with CR and LF spelled out."""
    text = bytes(data[:limit]).decode("utf-8", "backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n")
