"""The one place where a receiving-side failure becomes its SMTP reply.

smtpd, the restriction engine (policy/) and `sendmail -bs` report every refusal that is theirs
to make through this module, as delivery agents report through
delivery/outcome.py: a queue that is full or cannot write, a lookup that
failed for now, a TLS layer that is not there, a restriction that said no.
Each gets Postfix's code, enhanced status and text, so clients, pflogsumm
and an administrator's habits see what Postfix would have said.

Refusals the protocol core makes on its own (syntax, sequence, limits) are
in protocol/replies.py; those need no application to decide.

A restriction reports a Refusal with its action:
    REJECT            refuse now, permanently (reject_code, or its own code)
    DEFER             refuse now, for a while (defer_code)
    DEFER_IF_PERMIT   refuse for a while only if the restrictions that
                      follow end in a permit (Postfix's defer_if_permit)
The codes come from main.cf through policy/settings.py, which passes them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailferry.protocol.replies import Reply

if TYPE_CHECKING:   # for annotations only: `sendmail -bs` starts without queue/
    from mailferry.queue.store import QueueError

REJECT = "reject"
DEFER = "defer"
DEFER_IF_PERMIT = "defer_if_permit"

# Postfix's reply_class: which part of the session a restriction judged.
CLIENT = "Client host"
REVERSE_CLIENT = "Unverified Client host"
SASL_USER = "SASL login name"
HELO = "Helo command"
SENDER = "Sender address"
RECIPIENT = "Recipient address"
DATA_COMMAND = "Data command"
END_OF_DATA = "End-of-data"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reply to refuse with, and what the log says about it.

    `log_reason` names what decided (a restriction, a queue error);
    `warning`, when set, is a problem of our own making that the log must
    show as a warning (an unknown restriction in main.cf)."""

    reply: Reply
    action: str = REJECT
    log_reason: str = ""
    warning: str = ""


def server_configuration_error(restriction_name: str) -> Refusal:
    """A restriction mailferry does not know: never an accidental permit."""
    problem = f"unknown smtpd restriction: \"{restriction_name}\""
    return Refusal(Reply(451, "4.3.5", "Server configuration error"), DEFER, problem, problem)


def temporary_lookup_failure(name: str, warning: str = "") -> Refusal:
    """A table lookup that failed for now (tables.result TEMPFAIL): the
    client tries again later, never "unknown user". `warning`: what failed, for the log."""
    return Refusal(Reply(451, "4.3.0", f"<{name}>: Temporary lookup failure"), DEFER, "lookup failure", warning)


def unknown_virtual_alias(code: int, address: str) -> Refusal:
    """A recipient in a virtual_alias_domains domain that virtual_alias_maps does
    not know (smtpd_check.c check_rcpt_maps, unknown_virtual_alias_reject_code)."""
    return unknown_recipient(code, address, "virtual alias table")


def unknown_recipient(code: int, address: str, table: str = "") -> Refusal:
    """A recipient its address class's table does not know (check_rcpt_maps): `table` is
    "local recipient table" (unknown_local_recipient_reject_code), "virtual mailbox table"
    (unknown_virtual_mailbox_reject_code), "relay recipient table"
    (unknown_relay_recipient_reject_code), or "" with show_user_unknown_table_name = no."""
    text = f"User unknown in {table}" if table else "User unknown"
    return Refusal(Reply(code, "5.1.1", f"<{address}>: {RECIPIENT} rejected: {text}"),
                   REJECT if code >= 500 else DEFER, "reject_unlisted_recipient")


def rewrite_failure(status: str, text: str, log_reason: str) -> Refusal:
    """cleanup could not rewrite the addresses for now (a table failed, an alias
    expansion hit a limit): nothing is queued, the client tries again. The
    texts are Postfix's smtpd's for cleanup's CLEANUP_STAT_WRITE ("Error:
    queue file write error") and CLEANUP_STAT_DEFER ("Alias expansion error")."""
    return Refusal(Reply(451, status, text), DEFER, log_reason)


def queue_failure(error: QueueError) -> Refusal:
    """The queue did not take the message: nothing was stored, try later.
    The queue's errors carry their own code (451 4.3.0, or 452 4.3.1 when
    full); the text is Postfix's cleanup_strerror()."""
    # Imported here, not at the top: `sendmail -bs` (local/smtp_stdin.py)
    # would otherwise load the whole queue package, asyncio and sqlite3 at start-up.
    from mailferry.queue.store import QueueFull
    if isinstance(error, QueueFull):
        reply = Reply(error.reply_code, error.enhanced_status, "Insufficient system storage")
        return Refusal(reply, DEFER, f"queue is full: mail refused with {reply.code} {reply.enhanced}")
    return Refusal(Reply(error.reply_code, error.enhanced_status, "Error: queue file write error"), DEFER,
                   f"queue file write error: {error}")


def maildrop_write_error(error: OSError) -> Refusal:
    """`sendmail -bs` could not write its maildrop file."""
    return Refusal(Reply(451, "4.3.0", f"Error: cannot write the message: {error.strerror}"), DEFER,
                   f"cannot write the message: {error.strerror}")


# --- The restriction engine's replies (policy/), with Postfix's smtpd_check.c texts.
# The engine decides which applies and when; the words and codes are here.

ACCESS_DENIED = "Access denied"
SERVICE_UNAVAILABLE = "Service unavailable"
SERVER_CONFIGURATION_ERROR = Reply(451, "4.3.5", "Server configuration error")
GENERIC_SERVICE_UNAVAILABLE = Reply(450, "4.7.1", "Service unavailable")


def rejected_text(name: str, reply_class: str, detail: str) -> str:
    """"<name>: Recipient address rejected: detail", Postfix's usual form."""
    return f"<{name}>: {reply_class} rejected: {detail}"


def relay_denied_text(address: str) -> str:
    return f"<{address}>: Relay access denied"


def unknown_client_text(address: str) -> str:
    """reject_unknown_client_hostname (4.7.25, RFC 7372)."""
    return f"Client host rejected: cannot find your hostname, [{address}]"


def unknown_reverse_client_text(address: str) -> str:
    """reject_unknown_reverse_client_hostname (4.7.1)."""
    return f"Client host rejected: cannot find your reverse hostname, [{address}]"


def not_owned_text(sender: str, login: str) -> str:
    """reject_*sender_login_mismatch for a logged-in client (553 5.7.1)."""
    return f"<{sender}>: {SENDER} rejected: not owned by user {login}"


def not_logged_in_text(sender: str) -> str:
    """reject_*sender_login_mismatch for a client that did not log in (553 5.7.1)."""
    return f"<{sender}>: {SENDER} rejected: not logged in"


def header_not_owned_text(address: str, login: str) -> str:
    """smtpd_sender_login_header_check (mailferry's own): the header From: is not the login's."""
    return f"<{address}>: Header From: address rejected: not owned by user {login}"


def header_not_logged_in_text(address: str) -> str:
    return f"<{address}>: Header From: address rejected: not logged in"


PLAINTEXT_TEXT = "Session encryption is required"
# A table error (TableError) while a restriction ran: as Postfix's reject_server_error.
SERVER_CONFIGURATION_REFUSAL = Refusal(SERVER_CONFIGURATION_ERROR, DEFER, "server configuration error")


def access_denied_for(client: str) -> Refusal:
    """Every command after client restrictions refused the connection (smtpd_delay_reject = no)."""
    return Refusal(Reply(503, "5.7.0", f"Error: access denied for {client}"), REJECT, "access denied")

NULL_MX_TEXT = "Domain {domain} does not accept mail (nullMX)"

# Codes of the texts above that Postfix fixes rather than reads from main.cf.
SENDER_LOGIN_MISMATCH = (553, "5.7.1")
IMPROPER_PIPELINING = (503, "5.5.0")
MULTI_RECIPIENT_BOUNCE_DSN = "5.5.3"

# smtpd_dsn_fix: an address-specific status (X.1.Y) is made the judged
# address's (sender or recipient); other classes get X.0.0.
_DSN_MAP = {"1": ("4.1.8", "4.1.1"), "2": ("4.1.8", "4.1.2"), "3": ("4.1.7", "4.1.3"), "4": ("4.1.8", "4.1.4"),
            "5": ("4.1.0", "4.1.5"), "6": ("4.1.8", "4.1.6"), "7": ("4.1.7", "4.1.3"), "8": ("4.1.8", "4.1.2")}


def dsn_fix(status: str, reply_class: str) -> str:
    if len(status) < 5 or not status[0].isdigit() or status[1:4] != ".1.":
        return status
    sender_dsn, recipient_dsn = _DSN_MAP.get(status[4:], ("4.1.0", "4.1.0"))
    if reply_class == SENDER:
        fixed = sender_dsn
    elif reply_class == RECIPIENT:
        fixed = recipient_dsn
    else:
        fixed = "4.0.0"
    return status[0] + fixed[1:]


def split_dsn(text: str, default: str) -> tuple[str, str]:
    """Postfix's dsn_split: "5.7.1 go away" → ("5.7.1", "go away"); no status → (default, text)."""
    first, _, rest = text.partition(" ")
    if is_valid_dsn(first):
        return first, rest.lstrip()
    return default, text


def is_valid_dsn(status: str) -> bool:
    parts = status.split(".")
    return (len(parts) == 3 and parts[0] in ("2", "4", "5") and all(part.isdigit() for part in parts[1:])
            and len(parts[1]) <= 3 and len(parts[2]) <= 3)


def policy_refusal(code: int, dsn: str, text: str, log_reason: str = "", soft_bounce: bool = False) -> Refusal:
    """What smtpd_check_reject sends: a bad code or status becomes "450 4.7.1
    Service unavailable" (with a warning), soft_bounce turns 5xx into 4xx, the
    status class follows the code, and the text is cut to fit one 512-octet line."""
    warning = ""
    if not 400 <= code <= 599:
        warning = f"SMTP reply code configuration error: {code} {dsn} {text}"
    elif not is_valid_dsn(dsn):
        warning = f"DSN detail code configuration error: {code} {dsn} {text}"
    if warning:
        reply = GENERIC_SERVICE_UNAVAILABLE
    else:
        if soft_bounce and code >= 500:
            code -= 100
        printable = "".join(char if char.isprintable() else " " for char in text)
        reply = Reply(code, f"{str(code)[0]}{dsn[1:]}", printable[:500])
    return Refusal(reply, REJECT if reply.code >= 500 else DEFER, log_reason, warning)


# --- Session-level refusals of the application (the core answers the rest itself)

# smtpd_tls_security_level = encrypt, and MAIL came before STARTTLS.
STARTTLS_REQUIRED = Refusal(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
# STARTTLS was offered, but there is no certificate to start it with.
TLS_UNAVAILABLE = Refusal(Reply(454, "4.7.0", "TLS not available due to local problem"), DEFER)
TLS_UNAVAILABLE_ON_STDIN = Refusal(Reply(454, "4.7.0", "TLS not available on standard input"), DEFER)


# --- SMTP AUTH (auth/, Postfix's smtpd_sasl_glue.c and smtpd.c texts)

def auth_failed(reason: str) -> Refusal:
    """Wrong password, unknown user, a malformed response: counted as an error, so a
    client that keeps guessing meets smtpd_error_sleep_time and then the hard limit."""
    return Refusal(Reply(535, "5.7.8", f"Error: authentication failed: {reason}"), REJECT, reason)


def auth_unavailable(reason: str) -> Refusal:
    """The backend could not answer (Dovecot or the directory down): try again, never a 535."""
    return Refusal(Reply(454, "4.7.0", f"Temporary authentication failure: {reason}"), DEFER, reason)


def auth_rate_exceeded(address: str, rate: int, service: str) -> Refusal:
    """smtpd_client_auth_rate_limit: too many AUTH commands in anvil_rate_time_unit."""
    return Refusal(Reply(450, "4.7.1", f"Error: too many AUTH commands from {address}"), DEFER,
                   f"AUTH command rate limit exceeded: {rate}")


# --- Milters (milter/): a milter's reply, as Postfix's smtpd and cleanup pass it on

def milter_reply(text: str) -> Refusal:
    """A milter's "550 5.7.1 text" (its own words, or Postfix's for SMFIR_REJECT and
    SMFIR_TEMPFAIL, or those of milter_default_action), possibly multi-line (CRLF between
    lines, each with its code), as the client is to hear it."""
    lines = text.replace("\r\n", "\n").split("\n")
    code = int(lines[0][:3])
    enhanced = ""
    texts = []
    for line in lines:
        rest = line[4:] if len(line) > 3 else ""
        status, _, words = rest.partition(" ")
        if is_valid_dsn(status):
            enhanced = enhanced or status
            texts.append(words)
        else:
            texts.append(rest)
    return Refusal(Reply(code, enhanced, "\n".join(texts)), REJECT if code >= 500 else DEFER, "milter")


def milter_connect_refusal(myhostname: str, code: int) -> Refusal:
    """A milter refused the connection: Postfix's smtpd greets with these instead of 220."""
    if code == 421:
        return Refusal(Reply(421, "", f"{myhostname} Service unavailable - try again later"), DEFER, "milter")
    return Refusal(Reply(554, "", f"{myhostname} ESMTP not accepting connections"), REJECT, "milter")
