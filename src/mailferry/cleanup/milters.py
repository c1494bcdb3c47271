"""The milters' content phase in cleanup (Postfix's cleanup_milter.c): at end of data, after the
header and body checks and before address rewriting, the message goes to the milters of its
session (headers, end of headers, body, end of message); their modifications are applied to the
message before the commit, and their verdict decides whether it is queued at all.
"""

from __future__ import annotations

from mailferry import refusals
from mailferry.cleanup import service
from mailferry.maillog import Log
from mailferry.message import NewMessage, Recipient
from mailferry.milter.client import DISCARD, HOLD, SHUTDOWN
from mailferry.milter.edits import EditableMessage
from mailferry.milter.session import MilterSession

WHERE = "END-OF-MESSAGE"


async def run_content_milters(message: NewMessage, milters: MilterSession | None, log: Log) -> bool:
    """Run the content phase; False when the message is to be dropped (a milter's DISCARD).
    A reject or tempfail raises cleanup.service.ContentRefused: nothing is queued."""
    if milters is None or not milters.milters:
        return True
    queue_id = message.queue_id
    editable = EditableMessage.parse(message.content, message.sender, [r.address for r in message.recipients],
                                     own_header_marker=f" id {queue_id}".encode())
    smtpd_warn = milters.warn
    milters.warn = lambda text: log.warning("cleanup", text)
    try:
        outcome = await milters.message(editable)
    finally:
        milters.warn = smtpd_warn
    _apply(message, outcome.message, log)
    verdict = outcome.verdict
    if outcome.hold_reason or (verdict is not None and verdict.kind == HOLD):
        reason = outcome.hold_reason or verdict.reason or "milter triggers HOLD action"
        message.hold = True
        _log(log, message, "milter-hold", reason)
        if verdict is not None and verdict.kind == HOLD:
            return True
    if verdict is None:
        return True
    if verdict.kind == DISCARD:
        _log(log, message, "milter-discard", "milter triggers DISCARD action")
        return False
    reply = "421 4.7.0 Service unavailable" if verdict.kind == SHUTDOWN else verdict.reply
    _log(log, message, "milter-reject", reply[4:])
    raise service.ContentRefused(refusals.milter_reply(reply))


def _apply(message: NewMessage, edited: EditableMessage, log: Log) -> None:
    if not edited.changed:
        return
    message.content = edited.content()
    if edited.sender_changed:
        message.sender = edited.sender
        _sender_args(message, edited.sender_args or "")
    for deleted in edited.deleted_recipients:
        message.recipients = [r for r in message.recipients if r.address.lower() != deleted.lower()]
    for added in edited.added_recipients:
        message.recipients.append(_recipient(added.address, added.args))


def _sender_args(message: NewMessage, args: str) -> None:
    """The ESMTP args of SMFIR_CHGFROM that mean something to the queue: RET, ENVID, BODY, SMTPUTF8."""
    for word in args.split():
        keyword, _, value = word.partition("=")
        keyword = keyword.upper()
        if keyword == "RET" and value.upper() in ("FULL", "HDRS"):
            message.dsn_ret = value.upper()
        elif keyword == "ENVID" and value:
            message.dsn_envid = value
        elif keyword == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
            message.body_type = value.upper()
        elif keyword == "SMTPUTF8":
            message.smtputf8 = True


def _recipient(address: str, args: str) -> Recipient:
    recipient = Recipient(address)
    for word in args.split():
        keyword, _, value = word.partition("=")
        if keyword.upper() == "NOTIFY" and value:
            recipient.notify = value.upper()
        elif keyword.upper() == "ORCPT" and value:
            recipient.orcpt = value
    return recipient


def _log(log: Log, message: NewMessage, action: str, text: str) -> None:
    """Postfix's cleanup_milter_apply line: `ID: milter-reject: END-OF-MESSAGE from host[addr]: text;
    from=<..> to=<..> proto=ESMTP helo=<..>`."""
    client = message.client
    tail = f" from=<{message.sender}>"
    if message.recipients:
        tail += f" to=<{message.recipients[0].address}>"
    proto = "ESMTP" if client.protocol.startswith("ESMTP") else client.protocol
    tail += f" proto={proto}"
    if client.helo:
        tail += f" helo=<{client.helo}>"
    log.line("cleanup", f"{message.queue_id}: {action}: {WHERE} from {client.name}[{client.address}]: {text};{tail}")
