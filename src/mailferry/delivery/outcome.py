"""The one place where a delivery failure becomes deferred or bounced.

Every delivery agent reports through these functions, so the rule is
written once: a 2xx reply is sent, a 4xx reply or any local trouble
(a refused connection, a timeout, a failed lookup, a TLS or SASL problem)
is deferred, and only a 5xx reply from the destination, a permanent DNS
answer or an `error:` route bounces. The texts are Postfix's, so that
pflogsumm and an administrator's habits keep working.
"""

from __future__ import annotations

import errno

from mailferry.message import BOUNCED, DEFERRED, SENT, DeliveryResult
from mailferry.protocol.smtp_client import ServerReply


def from_reply(reply, relay: str, host: str, address: str, stage: str) -> DeliveryResult:
    """The destination's answer to one recipient. `reply` is a protocol.smtp_client.ServerReply."""
    if reply.code < 400:
        return DeliveryResult(SENT, reply.enhanced or "2.0.0", str(reply), relay)
    status = DEFERRED if reply.code < 500 else BOUNCED
    dsn = reply.enhanced or ("4.0.0" if status == DEFERRED else "5.0.0")
    return DeliveryResult(status, dsn, f"host {host}[{address}] said: {reply} (in reply to {stage} command)",
                          relay)


# --- the SMTP/LMTP client's session: setup refused, session lost, message refused before sending

def greeting_refused(reply: ServerReply, peer: str, relay: str, skip_5xx_greeting: bool) -> DeliveryResult:
    """A greeting other than 220. A 5xx bounces only with smtp_skip_5xx_greeting = no (a
    server that refuses everyone means it); by default it waits, and the next MX host is tried."""
    text = f"host {peer} refused to talk to me: {reply}"
    if reply.code >= 500 and not skip_5xx_greeting:
        return bounced(reply.enhanced or "5.0.0", text, relay)
    return deferred(reply.enhanced or "4.3.0", text, relay)


def hello_refused(reply: ServerReply, peer: str, verb: str, relay: str) -> DeliveryResult:
    """EHLO/LHLO (and HELO) refused: the session is not usable, the mail waits."""
    return deferred(reply.enhanced or "4.3.0",
                    f"host {peer} refused to talk to me: {reply} (in reply to {verb} command)", relay)


def sasl_refused(reply: ServerReply, peer: str, relay: str, soft_bounce: bool) -> DeliveryResult:
    """AUTH failed: a 5xx bounces unless smtp_sasl_auth_soft_bounce (the default) keeps it waiting."""
    text = f"SASL authentication failed; server {peer} said: {reply}"
    if reply.code >= 500 and not soft_bounce:
        return bounced(reply.enhanced or "5.7.8", text, relay)
    return deferred(reply.enhanced or "4.7.8", text, relay)


def too_big_for_server(size: int, limit: int, peer: str, relay: str) -> DeliveryResult:
    """The server's SIZE is smaller than the message: it will not grow, so the mail bounces."""
    return bounced("5.3.4", f"message size {size} exceeds size limit {limit} of server {peer}", relay)


def smtputf8_not_offered(peer: str, relay: str) -> DeliveryResult:
    return bounced("5.6.7", f"SMTPUTF8 is required, but was not offered by host {peer}", relay)


def connect_failed(host: str, address: str, port: int | None, reason: str) -> DeliveryResult:
    port_text = f":{port}" if port is not None else ""
    return deferred("4.4.1", f"connect to {host}[{address}]{port_text}: {reason}")


def session_lost(reason: str, relay: str = "none") -> DeliveryResult:
    """The session broke (hang-up, timeout, garbage): whatever was not answered waits."""
    return deferred("4.4.2", reason, relay)


def destination_suspended(reason: str) -> DeliveryResult:
    """A destination that just failed to connect: the rest of its mail waits without trying."""
    return deferred("4.4.1", f"delivery temporarily suspended: {reason}")


def deferred(dsn: str, reason: str, relay: str = "none") -> DeliveryResult:
    return DeliveryResult(DEFERRED, _class(dsn, "4"), reason, relay)


def bounced(dsn: str, reason: str, relay: str = "none") -> DeliveryResult:
    return DeliveryResult(BOUNCED, _class(dsn, "5"), reason, relay)


def sent(dsn: str, reason: str, relay: str = "none") -> DeliveryResult:
    return DeliveryResult(SENT, _class(dsn, "2"), reason, relay)


def from_dns_error(error) -> DeliveryResult:
    """delivery.dns.DnsError: NXDOMAIN and null MX bounce, everything else waits."""
    return (deferred if error.temporary else bounced)(error.dsn, error.text)


def error_transport(nexthop: str) -> DeliveryResult:
    """error(8): the next hop is the reason, optionally led by a status code (`5.1.1 text`)."""
    code, _, text = nexthop.partition(" ")
    if _is_status(code) and code[0] in "45":
        return (deferred if code[0] == "4" else bounced)(code, text or "delivery failed")
    return bounced("5.0.0", nexthop or "mail delivery disabled")


def retry_transport(nexthop: str) -> DeliveryResult:
    """retry(8): always a temporary failure."""
    code, _, text = nexthop.partition(" ")
    if _is_status(code):
        return deferred(code, text or "delivery temporarily suspended")
    return deferred("4.0.0", nexthop or "delivery temporarily suspended")


def routing_failure(error: Exception) -> DeliveryResult:
    """A recipient the resolver could not route (a lookup table that failed): it waits."""
    return deferred("4.3.0", str(error))


def agent_failure(error: BaseException) -> DeliveryResult:
    """A delivery agent that raised (a bug) must not lose mail: its recipients wait."""
    return deferred("4.3.0", f"delivery agent failed: {type(error).__name__}")


def expired(dsn: str, reason: str) -> DeliveryResult:
    """A recipient still waiting when its message outlives the queue lifetime bounces.
    It keeps the detail of its last temporary failure (4.4.1 becomes 5.4.1); one never
    tried, or last answered otherwise, gets 5.4.7 (delivery time expired)."""
    return DeliveryResult(BOUNCED, "5" + dsn[1:] if dsn[:1] == "4" else "5.4.7",
                          reason or "message delivery time expired")


def _is_status(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and all(part.isdigit() for part in parts) and text[0] in "245"


def _class(dsn: str, wanted: str) -> str:
    # A status code of the wrong class would contradict the outcome: keep its detail only.
    if _is_status(dsn):
        return dsn if dsn[0] == wanted else wanted + dsn[1:]
    return f"{wanted}.0.0"


# --- local(8): delivery/local.py. Postfix's texts from src/local/*.c and src/global/pipe_command.c

LOCAL_RELAY = "local"

# <sysexits.h> codes a command may exit with: (status, text); 4.x.x defers, 5.x.x bounces (sys_exits.c)
_SYSEXITS = {
    64: ("5.3.0", "command line usage error"), 65: ("5.6.0", "data format error"),
    66: ("5.3.0", "cannot open input"), 67: ("5.1.1", "user unknown"), 68: ("5.1.2", "host name unknown"),
    69: ("5.3.0", "service unavailable"), 70: ("5.3.0", "internal software error"),
    71: ("4.3.0", "system resource problem"), 72: ("5.3.0", "critical OS file missing"),
    73: ("5.2.0", "can't create user output file"), 74: ("5.3.0", "input/output error"),
    75: ("4.3.0", "temporary failure"), 76: ("5.5.0", "remote error in protocol"),
    77: ("5.7.0", "permission denied"), 78: ("5.3.5", "local configuration error"),
}


def local_delivered(reason: str) -> DeliveryResult:
    """`delivered to mailbox`, `delivered to maildir`, `delivered to command: CMD`, `delivered to file: PATH`."""
    return sent("2.0.0", reason, LOCAL_RELAY)


def local_forwarded(queue_id: str) -> DeliveryResult:
    return sent("2.0.0", f"forwarded as {queue_id}", LOCAL_RELAY)


def local_forward_failed(problem: str) -> DeliveryResult:
    """The forwarded copy could not be queued (cleanup refused, disk full): the original waits."""
    return deferred("4.3.0", f"cannot forward the message: {problem}", LOCAL_RELAY)


def local_unknown_user(user: str) -> DeliveryResult:
    return bounced("5.1.1", f'unknown user: "{user}"', LOCAL_RELAY)


def local_null_username(address: str) -> DeliveryResult:
    return bounced("5.1.3", f'null username in "{address}"', LOCAL_RELAY)


def local_forwarding_loop(address: str) -> DeliveryResult:
    """The message already has `Delivered-To: address`: it went round."""
    return bounced("5.4.6", f"mail forwarding loop for {address}", LOCAL_RELAY)


def local_nesting_limit() -> DeliveryResult:
    return bounced("5.4.6", "recipient nesting limit exceeded", LOCAL_RELAY)


def local_alias_loop(name: str) -> DeliveryResult:
    return bounced("5.4.6", f"alias database loop for {name}", LOCAL_RELAY)


def local_restricted(kind: str) -> DeliveryResult:
    """allow_mail_to_commands / allow_mail_to_files do not allow this expansion type."""
    return bounced("5.7.1", f"mail to {kind} is restricted", LOCAL_RELAY)


def local_trouble(reason: str, dsn: str = "4.3.0") -> DeliveryResult:
    """A lookup that failed, an unreadable .forward or :include:, a user database error:
    local trouble waits, with the text saying what to fix."""
    return deferred(dsn, reason, LOCAL_RELAY)


def local_bad_destination(reason: str) -> DeliveryResult:
    """An alias, .forward or :include: entry that can never be delivered (a relative file name)."""
    return bounced("5.3.5", reason, LOCAL_RELAY)


def local_mailbox_failed(mailbox: str, user: str, result, maildir: bool) -> DeliveryResult:
    """`result` is a delivery.spawn.MailboxResult with stored false. Postfix's mbox_dsn(): a full
    mailbox (mailbox_size_limit, EDQUOT, EFBIG) bounces 5.2.2, EAGAIN waits, a full disk waits
    (4.3.0); an mbox's other errors bounce (5.2.0) and a Maildir's wait (4.2.0). mailferry also
    waits on EACCES/EPERM: Postfix would have had root's rights there, so it is a setup to fix."""
    error = result.error or "unknown error"
    if error.startswith("cannot update"):
        text = error         # the mailbox writer's own text (delivery/mailbox.py), already Postfix's
    else:
        text = (f"maildir delivery failed: {error}" if maildir
                else f"cannot update mailbox {mailbox} for user {user}. {error}")
    if result.too_big or result.errno in (errno.EDQUOT, errno.EFBIG):
        return bounced("5.2.2", text, LOCAL_RELAY)
    if result.errno in (errno.EAGAIN, errno.ESTALE):
        return deferred("4.2.0", text, LOCAL_RELAY)
    if result.errno == errno.ENOSPC:
        return deferred("4.3.0", text, LOCAL_RELAY)
    if maildir or result.errno in (0, errno.EACCES, errno.EPERM):
        return deferred("4.2.0", text, LOCAL_RELAY)
    return bounced("5.2.0", text, LOCAL_RELAY)


def local_command_result(command: str, result, delivered: str) -> DeliveryResult:
    """What a `|command` (or mailbox_command) did, by its exit status (pipe_command.c); `result`
    is a delivery.spawn.CommandResult. Output the command wrote goes into the DSN text."""
    output = result.output.decode("utf-8", "replace").strip()
    said = f". Command output: {' '.join(output.split())}" if output else ""
    if result.exit_status == 0 and not result.timed_out:
        return local_delivered(delivered)
    if result.error:
        reason = f"cannot run command \"{command}\": {result.error}"
        return (deferred if result.temporary else bounced)("4.3.0", reason, LOCAL_RELAY)
    if result.timed_out:
        return bounced("5.3.0", f"Command time limit exceeded: \"{command}\"{said}", LOCAL_RELAY)
    if result.exit_status is None:
        return deferred("4.3.0", f"Command died with signal {result.signal}: \"{command}\"{said}", LOCAL_RELAY)
    status_text = output.split(None, 1)
    if status_text and _is_status(status_text[0]) and status_text[0][0] in "45":
        text = status_text[1] if len(status_text) > 1 else "delivery failed"
        return (deferred if status_text[0][0] == "4" else bounced)(status_text[0], text, LOCAL_RELAY)
    if result.exit_status in _SYSEXITS:
        dsn, text = _SYSEXITS[result.exit_status]
        return (deferred if dsn[0] == "4" else bounced)(dsn, f"{text}{said}", LOCAL_RELAY)
    return bounced("5.3.0", f"Command died with status {result.exit_status}: \"{command}\"{said}", LOCAL_RELAY)


def local_root_mailbox(user: str) -> DeliveryResult:
    """mailferry never writes as root (master/spawner.py refuses uid 0): mail for root's own
    mailbox waits until root is aliased to a person, as Postfix's docs advise anyway."""
    return deferred("4.3.0", f"mailferry does not deliver to the mailbox of {user} (uid 0): alias "
                             f"{user} to a real user in alias_maps (e.g. `{user}: you`), run "
                             "`mailferry newaliases`, then `mailferry postqueue -f`", LOCAL_RELAY)


def local_combined(results: list[DeliveryResult]) -> DeliveryResult:
    """One recipient's result when an alias or .forward fanned it out: any part that waits
    makes it wait (the whole expansion is tried again), else any bounce bounces, else sent."""
    for status in (DEFERRED, BOUNCED):
        failed = [result for result in results if result.status == status]
        if failed:
            return failed[0]
    reasons = list(dict.fromkeys(result.reason for result in results))
    return sent("2.0.0", "; ".join(reasons), LOCAL_RELAY)


# --- virtual(8): hosted mailboxes (delivery/virtual.py); the texts are Postfix's src/virtual/*.c

VIRTUAL = "virtual"
# The OS errors that mean the mailbox is full (Postfix's mbox_dsn: 5.2.2); any other write error waits.
_MAILBOX_FULL_ERRNOS = (errno.EDQUOT, errno.EFBIG)


def virtual_unknown_user(address: str) -> DeliveryResult:
    """No virtual_mailbox_maps entry for the address, nor for its @domain."""
    return bounced("5.1.1", f'unknown user: "{address.lower()}"', VIRTUAL)


def virtual_configuration_error() -> DeliveryResult:
    """A table that failed, or gave a bad path, uid or gid: the administrator fixes it, the mail
    waits (the detail is in the log's warning, as in Postfix)."""
    return deferred("4.3.5", "mail system configuration error", VIRTUAL)


def virtual_spawner_failed(problem: BaseException) -> DeliveryResult:
    return deferred("4.3.0", f"cannot reach the delivery spawner: {problem}", VIRTUAL)


def virtual_stored(result, path: str, maildir: bool) -> DeliveryResult:
    """The spawner's answer (a delivery.spawn.MailboxResult): stored; full, over virtual_mailbox_limit
    or the disk quota (bounce 5.2.2); or any other trouble, which waits (4.2.0), as Postfix's virtual
    does for a mailbox whose place the administrator controls."""
    if result.stored:
        return sent("2.0.0", "delivered to maildir" if maildir else "delivered to mailbox", VIRTUAL)
    what = "maildir delivery failed" if maildir else f"delivery failed to mailbox {path}"
    detail = f"{what}: {result.error or 'unknown error'}"
    if result.too_big or result.errno in _MAILBOX_FULL_ERRNOS:
        return bounced("5.2.2", detail, VIRTUAL)
    return deferred("4.2.0", detail, VIRTUAL)


# --- pipe(8): what a command's end means, as Postfix's pipe_command() and sys_exits.c read it

# <sysexits.h> codes: (status, text); the class decides. Any other non-zero code bounces (5.3.0).
SYS_EXITS = {
    64: ("5.3.0", "command line usage error"),    # EX_USAGE
    65: ("5.6.0", "data format error"),           # EX_DATAERR
    66: ("5.3.0", "cannot open input"),           # EX_NOINPUT
    67: ("5.1.1", "user unknown"),                # EX_NOUSER
    68: ("5.1.2", "host name unknown"),           # EX_NOHOST
    69: ("5.3.0", "service unavailable"),         # EX_UNAVAILABLE
    70: ("5.3.0", "internal software error"),     # EX_SOFTWARE
    71: ("4.3.0", "system resource problem"),     # EX_OSERR
    72: ("5.3.0", "critical OS file missing"),    # EX_OSFILE
    73: ("5.2.0", "can't create user output file"),  # EX_CANTCREAT
    74: ("5.3.0", "input/output error"),          # EX_IOERR
    75: ("4.3.0", "temporary failure"),           # EX_TEMPFAIL
    76: ("5.5.0", "remote error in protocol"),    # EX_PROTOCOL
    77: ("5.7.0", "permission denied"),           # EX_NOPERM
    78: ("5.3.5", "local configuration error"),   # EX_CONFIG
}


def command_output_text(output: bytes) -> str:
    """The command's output as Postfix quotes it: tabs and newlines become spaces, other
    unprintable characters `_`."""
    text = output.decode("utf-8", "replace").replace("\t", " ").replace("\n", " ")
    return "".join(char if char.isprintable() else "_" for char in text)


def command_failure(result, command: str, relay: str) -> DeliveryResult | None:
    """A finished command (delivery.spawn.CommandResult) that did not succeed, or None when it
    exited 0. Exit codes follow <sysexits.h>: 75 and 71 defer, the others bounce; output that
    starts with an enhanced status code (`4.2.2 mailbox full`) takes precedence. Death by a
    signal defers, as does a command that ran out of time (Postfix bounces that one: mailferry
    keeps the mail, since a stuck mail store is the usual cause) or that could not be started
    (Postfix's child then exits EX_TEMPFAIL)."""
    output = command_output_text(result.output).rstrip()
    with_output = f". Command output: {output}" if output else ""
    if result.error:
        return deferred("4.3.0", f"cannot run command \"{command}\": {result.error}", relay)
    if result.timed_out:
        return deferred("4.3.0", f"Command time limit exceeded: \"{command}\"{with_output}", relay)
    if result.exit_status is None:
        return deferred("4.3.0", f"Command died with signal {result.signal}: \"{command}\"{with_output}", relay)
    if result.exit_status == 0:
        return None
    status, _, text = output.partition(" ")
    if _is_command_status(status):
        return (deferred if status[0] == "4" else bounced)(status, text.lstrip(), relay)
    if result.exit_status in SYS_EXITS:
        dsn, text = SYS_EXITS[result.exit_status]
        return (deferred if dsn[0] == "4" else bounced)(dsn, f"{text}{with_output}", relay)
    return bounced("5.3.0", f"Command died with status {result.exit_status}: \"{command}\"{with_output}", relay)


def pipe_result(result, command: str, service: str) -> DeliveryResult:
    """pipe(8): `delivered via SERVICE service`, with the first 100 characters of any output."""
    failure = command_failure(result, command, service)
    if failure is not None:
        return failure
    output = command_output_text(result.output).rstrip()
    return sent("2.0.0", f"delivered via {service} service{f' ({output[:100]})' if output else ''}", service)


def pipe_too_big(service: str) -> DeliveryResult:
    """Larger than the service's size= attribute."""
    return bounced("5.2.3", "message too large", service)


def pipe_loop(address: str, service: str) -> DeliveryResult:
    """Flag D: the message already carries a Delivered-To: for this recipient."""
    return bounced("5.4.6", f"mail forwarding loop for {address}", service)


def pipe_spawner_unavailable(problem: OSError, service: str) -> DeliveryResult:
    """The privileged spawner did not answer: nothing ran, the mail waits."""
    return deferred("4.3.0", f"cannot run command: the spawner is unavailable ({problem})", service)


def _is_command_status(text: str) -> bool:
    """Postfix's dsn_valid(): one digit 2, 4 or 5, then two groups of 1-3 digits."""
    parts = text.split(".")
    return (_is_status(text) and len(parts[0]) == 1
            and all(1 <= len(part) <= 3 for part in parts[1:]))
