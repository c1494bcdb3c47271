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
NOOP, RSET, VRFY, QUIT...). It stops at the decisions listed in
server_events.py and waits for the application; until the application calls
accept(), reject() or auth_challenge(), next_event() returns PAUSED and
nothing is read or answered,
so a reply to a pipelined command can never overtake the reply that the
application is still working on (RFC 5321 6.1: no 250 before the commit).

The events, and what each expects, are in server_events.py; the MAIL and
RCPT parameters are read by esmtp_parameters.py; DATA and BDAT by
message_readers.py. This module keeps the session: the verb and sequence
tables, line framing, AUTH exchanges, Postfix's counters and error limits,
and the one _write().

`reject(code, enhanced, text)`, or refuse(reply), with 421 closes the session.
timeout_reply() gives the I/O layer Postfix's 421 for smtpd_timeout. command_counts and
disconnect_summary() carry Postfix's "ehlo=1 mail=1 rcpt=0/1 ... commands=2/3"
accounting: a command counts as a success when its final reply is below 400,
except "452 too many recipients", which Postfix does not count as an error
until smtpd_recipient_overshoot_limit is passed.

How input is read
-----------------
The receive buffer is one bytearray. A command line is found with one
find(b"\\n"); a line longer than line_length_limit is thrown away as it
arrives (the buffer never grows past the limit) and refused once it ends.

A message is read by message_readers.py: the end of DATA is searched for
without rescanning, a message over message_size_limit stops being stored,
and no spelling of a bare LF or bare CR ends it (no SMTP smuggling).
smtpd_forbid_bare_newline = normalize (the default here) turns bare-LF lines
into CR LF lines; reject refuses the message (and a command line ending in a
bare LF, then hangs up), as Postfix does. Postfix's "no" (bare LF ends lines
and the data) is not offered: it is read as normalize.

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

from collections import deque
from dataclasses import dataclass

from mailferry.protocol import replies
from mailferry.protocol.address import RECIPIENT, SENDER, Path, parse_path, split_path
from mailferry.protocol.esmtp_parameters import mail_parameters, rcpt_parameters
from mailferry.protocol.message_readers import (
    DROP_AS_DISCARDED, DROP_WITH_ERROR, STORE, ChunkReader, DataReader, as_received, bdat_arguments,
    has_bare_newline, message_refusal,
)
from mailferry.protocol.replies import Reply, ReplyError
from mailferry.protocol.server_events import (
    BDAT, CLOSED, DATA, DECISIONS, NEED_DATA, PAUSED, AuthAborted, AuthRequested, AuthResponse,
    ConnectionLost, DataRequested, Decision, Event, Hello, MailFrom, MessageReceived, ProtocolViolation, Quit,
    RcptTo,
    StartTLSRequested, Marker,
)

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
    numeric_domain: bool = False              # resolve_numeric_domain: user@192.0.2.1 accepted
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
    auth_mechanisms: tuple[str, ...] = ()     # SASL mechanisms offered in plaintext (smtpd_sasl_security_options)
    # ... and after STARTTLS (smtpd_sasl_tls_security_options); None: the same as in plaintext.
    # AUTH is enabled when either is non-empty.
    auth_mechanisms_tls: tuple[str, ...] | None = None
    auth_requires_tls: bool = False           # smtpd_tls_auth_only
    auth_broken_clients: bool = False         # broken_sasl_auth_clients: also say "AUTH=..."
    data_decision: bool = False               # ask the application before 354 (smtpd_data_restrictions)

    def __post_init__(self) -> None:
        if self.bare_newline not in _BARE_NEWLINE_VALUES:
            raise ValueError(f"smtpd_forbid_bare_newline: {self.bare_newline!r} is not one of "
                             "normalize, reject, no, yes")

    @property
    def greeting_text(self) -> str:
        return self.banner or f"{self.hostname} ESMTP mailferry"


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

_LINE_TOO_LONG = object()
# Postfix's smtpd_forbidden_commands default, "CONNECT GET POST" plus commands
# that do not start with a letter.
_FORBIDDEN_VERBS = frozenset({"CONNECT", "GET", "POST"})
# RFC 4954 4: SASL responses may be long (Kerberos tickets); 12288 octets is
# the RFC's floor. Over it, the RFC's own reply (Postfix hands any length on
# to its SASL server instead).
_AUTH_LINE_LIMIT = 12288
_AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")


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
        self.auth_advertised = True   # False: EHLO does not list AUTH (smtpd_sasl_exceptions_networks)
        self._pipelining_offered = False
        self.error_count = 0
        self._junk_count = 0
        self._counts: dict[str, list[int]] = {}
        self.last_command = "CONNECT"
        self._count_key = ""
        # Postfix's session history, kept only when the application sets a list here (notify_classes):
        # "In:  COMMAND" and "Out: REPLY LINE", and each failed reply with whether the
        # core made it itself (a protocol error) or the application refused with it.
        self.transcript: list[str] | None = None
        self.failed_replies: list[tuple[Reply, bool]] = []
        self._refusing = False
        # Transaction state.
        self.phase = IDLE
        self.sender: Path | None = None
        self._smtputf8 = False
        self.recipient_count = 0
        self._overshoot = 0
        # Line reading.
        self._line_scan_from = 0
        self._skipping_long_line = False
        # Message reading.
        self._data = DataReader(self.settings.message_size_limit)
        self._chunks = ChunkReader()

    # --- The I/O side ----------------------------------------------------------------------------

    def greeting(self) -> bytes:
        """The 220 banner. Call it when the banner is about to be written:
        bytes received before it count as talking before the greeting."""
        self._greeted = True
        banner = replies.greeting(self.settings.greeting_text).to_bytes()
        if self.transcript is not None:
            self._note_out(banner)
        return banner

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

    def next_event(self) -> Event | Marker:
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
        elif isinstance(event, DataRequested):
            self._start_data()
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
            self._refusing = True
            try:
                self._message_answered(reply)
            finally:
                self._refusing = False
            return
        if isinstance(event, (AuthRequested, AuthResponse)):
            self._mode = _COMMAND
        self._refusing = True
        try:
            self._write(reply, close=reply.code == 421)
        finally:
            self._refusing = False

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
        return len(self._buffer) + len(self._chunks.message)

    @property
    def unread_bytes(self) -> int:
        """Input received and not yet read: while a decision is pending it holds whatever the
        client pipelined, which only the I/O layer can bound (by reading no more)."""
        return len(self._buffer)

    @property
    def terminator_bytes_examined(self) -> int:
        """Bytes examined while looking for the end of DATA, over the session:
        tests use it to show that nothing is searched twice."""
        return self._data.bytes_examined

    @property
    def pipelining_offered(self) -> bool:
        return self._pipelining_offered

    def auth_mechanisms_now(self) -> tuple[str, ...]:
        """The SASL mechanisms that may be used now (they differ before and after STARTTLS)."""
        return self._auth_mechanisms_offered()

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
        if self.auth_advertised and (mechanisms := self._auth_mechanisms_offered()):
            keywords.append("AUTH " + " ".join(mechanisms))
            if settings.auth_broken_clients:
                keywords.append("AUTH=" + " ".join(mechanisms))
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
        data = reply.to_bytes()
        self._outgoing += data
        if self.transcript is not None:
            self._note_out(data)
            if not reply.is_success and reply.code >= 400:
                self.failed_replies.append((reply, not self._refusing))
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

    def _note_out(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").split("\r\n")[:-1]:
            self.transcript.append(f"Out: {line}")

    def _note_in(self, text: str) -> None:
        verb, _, rest = text.partition(" ")
        if verb.upper() == "AUTH":
            text = f"{verb} {rest.split(' ')[0]}"   # never a credential in a postmaster's mailbox
        self.transcript.append(f"In:  {text}")

    def _count(self, key: str, ok: bool) -> None:
        if not key:
            return
        counts = self._counts.setdefault(key, [0, 0])
        counts[0] += ok
        counts[1] += 1

    def _close(self) -> None:
        self._mode = _CLOSED
        self._buffer = bytearray()
        self._chunks.forget()

    # --- Reading ---------------------------------------------------------------------------------

    def _advance(self) -> Decision | Marker | None:
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

    def _read_command(self) -> Decision | Marker | None:
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
        if self.transcript is not None:
            self._note_in(text)
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

    def _read_data(self) -> Decision | Marker | None:
        end = self._data.find_end(self._buffer)
        if end < 0:
            return NEED_DATA
        content, self._buffer = self._data.take(self._buffer, end)
        self._mode = _COMMAND
        if content is None:
            self._reset_transaction()
            self._write(replies.MESSAGE_TOO_BIG)
            return None
        return self._message_complete(content, DATA)

    def _message_complete(self, content: bytes, via: str) -> Decision | None:
        """Checks that need the whole message; then the app decides."""
        self._chunks.forget()
        bare_newline = has_bare_newline(content)
        if bare_newline and self.settings.bare_newline == REJECT:
            self._reset_transaction()
            self._events.append(ProtocolViolation("bare <LF> received", via))
            self._write(replies.bare_newline(self.settings.hostname,
                                             self.settings.bare_newline_reject_code))
            return None
        content = as_received(content, via, bare_newline)
        refusal = message_refusal(content, self.settings.message_size_limit, self.settings.hopcount_limit)
        if refusal is not None:
            self._reset_transaction()
            self._write(refusal)
            return None
        return MessageReceived(content, via)

    def _message_answered(self, reply: Reply) -> None:
        self._reset_transaction()
        if reply.is_success:
            # Postfix forgives a client that delivers mail.
            self.error_count = 0
            self._junk_count = 0
        self._write(reply, close=reply.code == 421)

    # --- BDAT ------------------------------------------------------------------------------------

    def _read_chunk(self) -> Decision | Marker | None:
        if not self._chunks.read(self._buffer):
            return NEED_DATA
        self._mode = _COMMAND
        return self._chunk_complete()

    def _chunk_complete(self) -> Decision | None:
        chunks = self._chunks
        size, last = chunks.size, chunks.last
        if chunks.handling == DROP_AS_DISCARDED:
            if last:
                self._reset_transaction()
            self._write(replies.chunk_discarded(size))
            return None
        if chunks.handling == DROP_WITH_ERROR:
            error = chunks.error
            if last:
                # Postfix ends the transaction with a refused LAST chunk
                # (unlike a refused DATA, which leaves MAIL in place).
                self._reset_transaction()
            else:
                self.phase = DISCARDING if self.sender is not None else DISCARDING_IDLE
                chunks.forget()
            self._write(error)
            return None
        if not last:
            self.phase = CHUNKING
            self._write(replies.chunk_received(size))
            return None
        return self._message_complete(bytes(chunks.message), BDAT)

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
        settings = self.settings
        params = mail_parameters(parameter_text, smtputf8=settings.smtputf8, dsn=settings.dsn,
                                 size_limit=settings.message_size_limit)
        path = parse_path(path_text, allow_smtputf8=self.settings.smtputf8 and params.smtputf8,
                          role=SENDER, strict=self.settings.strict_envelopes,
                          numeric_domain=self.settings.numeric_domain)
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
        params = rcpt_parameters(parameter_text, dsn=self.settings.dsn)
        path = parse_path(path_text, allow_smtputf8=self.settings.smtputf8 and self._smtputf8,
                          role=RECIPIENT, strict=self.settings.strict_envelopes,
                          numeric_domain=self.settings.numeric_domain)
        return RcptTo(path, params)

    def _handle_data(self, argument: str) -> Reply | Decision | None:
        if refusal := SEQUENCE_ERRORS["DATA"].get(self.phase):
            return refusal
        if argument:
            return replies.DATA_SYNTAX
        if self.settings.data_decision:
            return DataRequested()
        self._start_data()
        return None

    def _start_data(self) -> None:
        self._write(replies.START_MAIL_INPUT, final=False)
        self._mode = _DATA
        self._data.start(self._buffer)

    def _handle_bdat(self, argument: str) -> Reply | None:
        if not self.settings.chunking:
            return replies.CHUNKING_NOT_IMPLEMENTED
        arguments = bdat_arguments(argument)
        if arguments is None:
            return replies.BDAT_SYNTAX
        size, last = arguments
        self._chunks.start(size, last, *self._chunk_plan(size, last))
        self._mode = _CHUNK
        return None

    def _chunk_plan(self, size: int, last: bool) -> tuple[str, Reply | None]:
        if self.phase in (DISCARDING, DISCARDING_IDLE):
            return DROP_AS_DISCARDED, None
        if refusal := SEQUENCE_ERRORS["BDAT"].get(self.phase):
            return DROP_WITH_ERROR, refusal
        if size == 0 and not last:
            return DROP_WITH_ERROR, replies.NULL_BDAT
        limit = self.settings.message_size_limit
        if limit and len(self._chunks.message) + size > limit:
            return DROP_WITH_ERROR, replies.CHUNK_TOO_BIG
        return STORE, None

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
        settings = self.settings
        if not (settings.auth_mechanisms or settings.auth_mechanisms_tls):
            return replies.AUTH_NOT_ENABLED
        if settings.auth_requires_tls and not self.tls_active:
            return replies.AUTH_NEEDS_ENCRYPTION
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

    def _read_auth_response(self) -> Decision | Marker | None:
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

    # --- Small helpers ---------------------------------------------------------------------------

    def _take_pending(self) -> Decision:
        event = self._pending
        if event is None:
            raise RuntimeError("no event is waiting for a decision")
        self._pending = None
        return event

    def _auth_mechanisms_offered(self) -> tuple[str, ...]:
        settings = self.settings
        if self.tls_active and settings.auth_mechanisms_tls is not None:
            return settings.auth_mechanisms_tls
        if settings.auth_requires_tls and not self.tls_active:
            return ()
        return settings.auth_mechanisms

    def _reset_transaction(self) -> None:
        self.phase = IDLE
        self.sender = None
        self._smtputf8 = False
        self.recipient_count = 0
        self._overshoot = 0
        self._chunks.forget()


# --- Functions on their own ---------------------------------------------------------------------

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
