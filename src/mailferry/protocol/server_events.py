"""What the SMTP server core tells its application (see smtp_server.py).

next_event() returns one of the three markers, or one of the events below.

Events that need a decision (the core waits, PAUSED, until it gets one):
    Hello(name, extended)            accept() writes the HELO/EHLO reply with the extensions
    MailFrom(path, params)           accept() -> 250 2.1.0 Ok
    RcptTo(path, params)             accept() -> 250 2.1.5 Ok
    DataRequested()                  accept() -> 354 and the message is read (only with
                                     ServerSettings.data_decision: smtpd_data_restrictions)
    MessageReceived(content, via)    accept_message(queue_id), or reject(...)
    StartTLSRequested()              accept() -> 220; then the handshake; then tls_started()
    AuthRequested(mechanism, initial_response)
    AuthResponse(response)           for both: auth_challenge(text) -> 334, accept() -> 235, reject()
Events for the record only (the core has answered already):
    Quit(), AuthAborted(), ConnectionLost(after), ProtocolViolation(reason, after, detail, closing)
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry.protocol.address import Path
from mailferry.protocol.esmtp_parameters import MailParameters, RcptParameters


class Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = Marker("NEED_DATA")   # feed more bytes (after sending data_to_send())
PAUSED = Marker("PAUSED")         # an event is waiting for the application's decision
CLOSED = Marker("CLOSED")         # send data_to_send(), then close the connection

# How a message came: MessageReceived.via.
DATA = "DATA"
BDAT = "BDAT"


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
class DataRequested:
    """DATA, before the 354: the application may refuse it (smtpd_data_restrictions)."""


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


Decision = (Hello | MailFrom | RcptTo | DataRequested | MessageReceived | StartTLSRequested | AuthRequested
            | AuthResponse)
Event = Decision | AuthAborted | Quit | ConnectionLost | ProtocolViolation
DECISIONS = (Hello, MailFrom, RcptTo, DataRequested, MessageReceived, StartTLSRequested, AuthRequested,
             AuthResponse)
