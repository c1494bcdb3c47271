"""SMTP replies: one record type, its wire format, and the server's catalogue.

Every text the SMTP server sends on its own lives here, so that a reply can be
compared with Postfix's in one place. The texts below were checked against a
running Postfix 3.7.11 smtpd (Debian's package); see tests/dialogs/ for the
sessions that exercise them.

Enhanced status codes (RFC 3463) are sent whenever a reply has one, whatever
the client said in EHLO and whether or not ENHANCEDSTATUSCODES is advertised:
Postfix does the same, and clients that do not know them read them as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply. `text` may hold several lines separated by "\\n";
    each is sent with the code (and the enhanced code) in front."""

    code: int
    enhanced: str = ""          # "2.1.0"; "" for replies that carry none (220, EHLO, HELO)
    text: str = ""

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def closes_connection(self) -> bool:
        # 421 "closing transmission channel" (RFC 5321 3.8), 221 answers QUIT,
        # and Postfix hangs up after a 521 to a BDAT it cannot frame.
        return self.code in (221, 421, 521)

    def lines(self) -> list[str]:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return [prefix + line for line in self.text.split("\n")]

    def to_bytes(self) -> bytes:
        return _wire(self.code, self.enhanced, self.text)

    def __str__(self) -> str:
        return " ".join(filter(None, (str(self.code), self.enhanced, self.text)))


@lru_cache(maxsize=256)
def _wire(code: int, enhanced: str, text: str) -> bytes:
    """The bytes of a reply; the common ones (250 Ok, 354...) are formatted once."""
    prefix = f"{enhanced} " if enhanced else ""
    lines = [prefix + line for line in text.split("\n")]
    last = len(lines) - 1
    wire = "".join(f"{code}{' ' if number == last else '-'}{line}\r\n" for number, line in enumerate(lines))
    # Replies are ASCII except where SMTPUTF8 lets addresses through; an
    # address echoed back (VRFY, texts from the application) keeps the
    # bytes the client sent.
    return wire.encode("utf-8", "surrogateescape")


class ReplyError(Exception):
    """An error that already knows the reply it deserves."""

    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


# --- Sessions -----------------------------------------------------------------------------------

OK = Reply(250, "2.0.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
START_MAIL_INPUT = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
AUTH_SUCCESSFUL = Reply(235, "2.7.0", "Authentication successful")


def greeting(banner: str) -> Reply:
    return Reply(220, "", banner)


def helo_reply(hostname: str) -> Reply:
    return Reply(250, "", hostname)


def ehlo_reply(hostname: str, keywords: list[str]) -> Reply:
    return Reply(250, "", "\n".join([hostname, *keywords]))


def vrfy_reply(argument: str) -> Reply:
    # 252: "cannot verify, but will accept": the address is echoed as given.
    return Reply(252, "2.0.0", argument)


def auth_challenge(challenge: str) -> Reply:
    # Postfix sends "334 " (with the space) for an empty challenge.
    return Reply(334, "", challenge)


def message_queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_queued(size: int, queue_id: str) -> Reply:
    """The reply to BDAT ... LAST: Postfix counts the bytes of the message."""
    return Reply(250, "2.0.0", f"Ok: {size} bytes queued as {queue_id}")


def chunk_received(size: int) -> Reply:
    """The reply to a BDAT chunk that is not the last: this chunk's size."""
    return Reply(250, "2.0.0", f"Ok: {size} bytes")


# --- Sequence errors ----------------------------------------------------------------------------

SEND_HELO_FIRST = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
MAIL_AFTER_BDAT = Reply(503, "5.5.1", "Error: MAIL after BDAT")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Error: RCPT after BDAT")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA after BDAT")
TRANSACTION_IN_PROGRESS = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
# smtpd_tls_auth_only and no TLS yet (RFC 4954 4, Postfix's text).
AUTH_NEEDS_ENCRYPTION = Reply(504, "5.5.4", "Encryption required for requested authentication mechanism")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")

# --- Unknown and unavailable commands ------------------------------------------------------------

NOT_RECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
# BDAT without CHUNKING: the chunk's length cannot be trusted, so Postfix hangs up.
CHUNKING_NOT_IMPLEMENTED = Reply(521, "5.5.1", "Error: command not implemented")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")
# Not Postfix's: Postfix silently truncates an over-long command line and runs
# what is left. mailferry refuses the whole line instead (see smtp_server.py).
COMMAND_TOO_LONG = Reply(500, "5.5.2", "Error: command too long")
# A web request, a message header or other junk where a command belongs.
NON_SMTP_COMMAND = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
PIPELINING_VIOLATION = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")

# --- Argument syntax -----------------------------------------------------------------------------

HELO_SYNTAX = Reply(501, "", "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "", "Syntax: EHLO hostname")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
RSET_SYNTAX = Reply(501, "5.5.4", "Syntax: RSET")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY address [SMTPUTF8]")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism")
# A BDAT whose length cannot be read: the rest of the stream cannot be framed.
BDAT_SYNTAX = Reply(521, "5.5.4", "Syntax: BDAT count [LAST]")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SIZE_SYNTAX = Reply(501, "5.5.4", "Bad message size syntax")
BAD_RET_SYNTAX = Reply(501, "5.5.4", "Bad RET parameter syntax")
BAD_ENVID_SYNTAX = Reply(501, "5.5.4", "Bad ENVID parameter syntax")
BAD_NOTIFY_SYNTAX = Reply(501, "5.5.4", "Error: Bad NOTIFY parameter syntax")
BAD_ORCPT_SYNTAX = Reply(501, "5.5.4", "Error: Bad ORCPT parameter syntax")


def unsupported_option(parameter: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {parameter}")


# --- Limits -------------------------------------------------------------------------------------

SIZE_EXCEEDS_LIMIT = Reply(552, "5.3.4", "Message size exceeds fixed limit")
SIZE_EXCEEDS_FILE_SYSTEM = Reply(552, "5.3.4", "Message size exceeds file system imposed limit")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")
CHUNK_TOO_BIG = Reply(552, "5.3.4", "Chunk exceeds message size limit")
NULL_BDAT = Reply(551, "5.7.1", "Null BDAT request")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
TOO_MANY_HOPS = Reply(554, "5.4.0", "Error: too many hops")


def chunk_discarded(size: int) -> Reply:
    return Reply(551, "5.0.0", f"Discarded {size} bytes after earlier error")


def too_many_errors(hostname: str) -> Reply:
    return Reply(421, "4.7.0", f"{hostname} Error: too many errors")


def timeout_exceeded(hostname: str) -> Reply:
    return Reply(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def bare_newline(hostname: str, code: int) -> Reply:
    """smtpd_forbid_bare_newline = reject; the code is
    smtpd_forbid_bare_newline_reject_code (550 by default)."""
    enhanced = f"{str(code)[0]}.5.2"
    return Reply(code, enhanced, f"{hostname} Error: bare <LF> received")
