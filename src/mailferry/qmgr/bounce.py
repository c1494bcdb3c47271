"""Delivery status notifications (RFC 3464 multipart/report), as Postfix's
bounce(8) daemon writes them: a failure notice, a delay warning, and the
postmaster's copy of a notice that itself could not be delivered.

The notice makers are pure functions: the caller hands over the queued
message, its content and the recipients to report, and gets a NewMessage
back. The content is joined from bytes rather than made by email.generator,
which would rewrap lines and could alter the returned original.

`notices_for` decides which notices one settled delivery attempt calls for;
qmgr hands them to cleanup, the way into the queue, and `log_queued` writes
bounce's log line for each once it is queued. bounce writes only `bounce`
lines; the notices' `message-id=` and `(queue active)` lines are cleanup's
and qmgr's, as in Postfix.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from mailferry.maillog import Log
from mailferry.message import DEFERRED, PENDING, ClientInfo, NewMessage, QueuedMessage, Recipient

CRLF = b"\r\n"
MAX_LINE = 78  # fold report lines longer than this, as RFC 5322 recommends

# Postfix's remote-failure form: "host mx.example.com[192.0.2.1] said: 550 5.1.1
# No such user (in reply to RCPT TO command)". Matched against the whole reason,
# so the last "(in reply to" ends the reply even when the reply itself has one.
_REMOTE_REASON = re.compile(r"host ([^\s\[]+)\[[^\]]*\] said: (.+) \(in reply to [^()]* command\)", re.DOTALL)

_SIGNATURE = [
    "For further assistance, please send mail to postmaster.",
    "",
    "If you do so, please include this problem report. You can",
    "delete your own text from the attached returned message.",
    "",
    "                   The mail system",
]


@dataclass(frozen=True, slots=True)
class BounceSettings:
    myhostname: str
    mail_name: str = "mailferry"
    bounce_size_limit: int = 50000          # Postfix's bounce_size_limit
    postmaster: str = "postmaster"          # 2bounce_notice_recipient
    bounce_recipient: str = "postmaster"    # bounce_notice_recipient
    delay_recipient: str = "postmaster"     # delay_notice_recipient
    notify_classes: frozenset[str] = frozenset({"resource", "software"})   # notify_classes
    double_bounce_sender: str = "double-bounce"   # the envelope sender of postmaster copies, as Postfix's
    myorigin: str = ""                      # qualifies a notice recipient without a domain, as cleanup does
    maximal_queue_lifetime: float = 5 * 86400   # seconds, for Will-Retry-Until in delay notices
    delay_warning_time: float = 0.0         # seconds; 0: no delay notices


@dataclass(frozen=True, slots=True)
class Notice:
    label: str           # how bounce's log line names it: "sender non-delivery notification"
    message: NewMessage


@dataclass(frozen=True, slots=True)
class _Kind:
    """What distinguishes one sort of notice from another."""

    subject: str
    origin: str
    action: str
    default_status: str
    id_tag: str          # keeps a delay warning's Message-ID apart from a bounce's of the same second
    returns_body: bool   # Postfix returns only the headers with a delay warning
    boilerplate: bool = True   # Postfix's postmaster copies carry only the reasons


_FAILURE = _Kind("Undelivered Mail Returned to Sender", "bounce", "failed", "5.0.0", "", True)
_DELAY = _Kind("Delayed Mail (still being retried)", "bounce", "delayed", "4.0.0", ".delay", False)
# A bounced notice to 2bounce_notice_recipient: the whole notice is the last copy there is.
_POSTMASTER_COPY = _Kind("Postmaster Copy: Undelivered Mail", "2bounce", "failed", "5.0.0", "", True, False)
# notify_classes=bounce: the headers of bounced mail to bounce_notice_recipient.
_POSTMASTER_BOUNCE_COPY = _Kind("Postmaster Copy: Undelivered Mail", "2bounce", "failed", "5.0.0", ".pm",
                                False, False)
# notify_classes=delay: the headers of delayed mail to delay_notice_recipient.
_POSTMASTER_DELAY = _Kind("Postmaster Warning: Delayed Mail", "2bounce", "delayed", "4.0.0", ".pmdelay",
                          False, False)


DELAY_NOTICE = "sender delay notification"
POSTMASTER_DELAY_NOTICE = "postmaster delay notification"


def notices_for(message: QueuedMessage, content: bytes, failed: list[Recipient],
                settings: BounceSettings, now: float, log: Log) -> list[Notice]:
    """The notices one settled attempt at `message` calls for, as Postfix's bounce(8)
    decides them: a failure notice to the sender for the newly `failed` recipients
    and, with notify_classes `bounce`, a headers-only copy to bounce_notice_recipient;
    when `message` has the null sender (a notice itself), the whole of it to
    2bounce_notice_recipient only with notify_classes `bounce` or `2bounce`; nothing
    when it is such a postmaster copy. After delay_warning_time, one delay warning
    per message (`message.delay_warned` is set), likewise copied to
    delay_notice_recipient with notify_classes `delay`."""
    notices: list[Notice] = []
    classes = settings.notify_classes
    if failed:
        if message.origin == "2bounce":
            log.warning("bounce", f"{message.queue_id}: discarding undeliverable postmaster "
                                  "notification (no double bounce of a double bounce)")
        elif message.sender == "":
            if "bounce" in classes or "2bounce" in classes:
                notices.append(Notice("postmaster non-delivery notification",
                                      postmaster_copy(message, content, failed, settings, now)))
        else:
            notice = failure_notice(message, content, failed, settings, now)
            if notice is not None:
                notices.append(Notice("sender non-delivery notification", notice))
            if "bounce" in classes:
                notices.append(Notice("postmaster non-delivery notification",
                                      _notice(_POSTMASTER_BOUNCE_COPY, message, content, failed, settings,
                                              now, settings.bounce_recipient)))
    delayed = [r for r in message.recipients if r.status in (PENDING, DEFERRED)]
    warn_after = settings.delay_warning_time
    if delayed and warn_after > 0 and not message.delay_warned and now - message.arrival_time >= warn_after:
        message.delay_warned = True
        notice = delay_notice(message, content, delayed, settings, now)
        if notice is not None:
            notices.append(Notice(DELAY_NOTICE, notice))
        if "delay" in classes and message.origin != "2bounce":
            notices.append(Notice(POSTMASTER_DELAY_NOTICE,
                                  _notice(_POSTMASTER_DELAY, message, content, delayed, settings, now,
                                          settings.delay_recipient)))
    return notices


def log_queued(log: Log, message: QueuedMessage, notices: list[Notice], ids: list[str]) -> None:
    """bounce's line for each queued notice: `ID: sender non-delivery notification: NOTICE_ID`."""
    for notice, notice_id in zip(notices, ids):
        log.line("bounce", f"{message.queue_id}: {notice.label}: {notice_id}")


def log_not_queued(log: Log, message: QueuedMessage, notices: list[Notice], error: Exception) -> None:
    log.warning("bounce", f"{message.queue_id}: cannot queue {len(notices)} notification(s): "
                          f"{error}; the failures are kept for the next attempt")


def wants_failure_notice(recipient: Recipient) -> bool:
    keywords = _notify_keywords(recipient)
    return keywords is None or "FAILURE" in keywords


def wants_delay_notice(recipient: Recipient) -> bool:
    keywords = _notify_keywords(recipient)
    return keywords is None or "DELAY" in keywords


def failure_notice(message: QueuedMessage, content: bytes, failed: list[Recipient],
                   settings: BounceSettings, now: float) -> NewMessage | None:
    wanted = [recipient for recipient in failed if wants_failure_notice(recipient)]
    if message.sender == "" or not wanted:
        return None  # never bounce a bounce
    return _notice(_FAILURE, message, content, wanted, settings, now, message.sender)


def delay_notice(message: QueuedMessage, content: bytes, delayed: list[Recipient],
                 settings: BounceSettings, now: float) -> NewMessage | None:
    wanted = [recipient for recipient in delayed if wants_delay_notice(recipient)]
    if message.sender == "" or not wanted:
        return None
    return _notice(_DELAY, message, content, wanted, settings, now, message.sender)


def postmaster_copy(message: QueuedMessage, content: bytes, failed: list[Recipient],
                    settings: BounceSettings, now: float) -> NewMessage:
    """The failure of a notice (sender "") reported to the postmaster. Its
    origin "2bounce" tells the caller never to report this one's failure."""
    return _notice(_POSTMASTER_COPY, message, content, failed, settings, now, settings.postmaster)


def _notify_keywords(recipient: Recipient) -> set[str] | None:
    if not recipient.notify:
        return None
    return {word.strip().upper() for word in recipient.notify.split(",")}


def qualified(address: str, myorigin: str) -> str:
    """`postmaster` → `postmaster@$myorigin`, as Postfix's cleanup qualifies every address of a
    local notice (append_at_myorigin): an unqualified one would have no route but local."""
    if not address or "@" in address or not myorigin:
        return address
    return f"{address}@{myorigin}"


def _notice(kind: _Kind, message: QueuedMessage, content: bytes, recipients: list[Recipient],
            settings: BounceSettings, now: float, to: str) -> NewMessage:
    to = qualified(to, settings.myorigin)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    message_id = f"{stamp}.{message.queue_id}{kind.id_tag}@{settings.myhostname}"
    boundary = f"{message.queue_id}.{int(now)}/{settings.myhostname}"
    returned = _returned_part(kind, message, content, settings)
    eight_bit = not returned.isascii()
    parts = [_notification_part(kind, message, recipients, settings, now),
             _report_part(kind, message, recipients, settings), returned]
    headers = _top_headers(kind, to, boundary, message_id, eight_bit, settings, now)
    # Postfix sends postmaster copies from double_bounce_sender; origin "2bounce" keeps them
    # from ever being bounced again.
    sender = qualified(settings.double_bounce_sender, settings.myorigin) if kind.origin == "2bounce" else ""
    return NewMessage(
        sender=sender, recipients=[Recipient(to)], content=_multipart(headers, boundary, parts),
        client=ClientInfo(name="localhost", address="127.0.0.1", protocol="local"),
        origin=kind.origin, message_id=message_id, body_type="8BITMIME" if eight_bit else None,
        arrival_time=now)


def _top_headers(kind: _Kind, to: str, boundary: str, message_id: str, eight_bit: bool,
                 settings: BounceSettings, now: float) -> list[str]:
    return [
        f"Date: {formatdate(now, localtime=True)}",
        f"From: MAILER-DAEMON@{settings.myhostname} (Mail Delivery System)",
        f"Subject: {kind.subject}",
        f"To: {_printable(to)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
        f"Message-Id: <{message_id}>",
    ]


def _multipart(headers: list[str], boundary: str, parts: list[bytes]) -> bytes:
    # Each delimiter owns the CRLF before it, so a part's body ends where its own text ends.
    delimiter = CRLF + b"--" + boundary.encode("ascii") + CRLF
    closing = CRLF + b"--" + boundary.encode("ascii") + b"--" + CRLF
    preamble = _lines(headers + ["", "This is a MIME-encapsulated message.", ""])
    return preamble.removesuffix(CRLF) + delimiter + delimiter.join(parts) + closing


def _part(description: str, content_type: str, body: bytes) -> bytes:
    headers = [f"Content-Description: {description}", f"Content-Type: {content_type}"]
    if not body.isascii():
        headers.append("Content-Transfer-Encoding: 8bit")
    return _lines(headers + [""]) + body


def _notification_part(kind: _Kind, message: QueuedMessage, recipients: list[Recipient],
                       settings: BounceSettings, now: float) -> bytes:
    if not kind.boilerplate:
        text = []
    else:
        text = _delay_text(message, settings, now) if kind is _DELAY else _failure_text(settings)
    for recipient in recipients:
        text += _fold(f"<{_printable(recipient.address)}>: {_printable(recipient.reason)}")
    return _part("Notification", "text/plain; charset=us-ascii", _lines(text))


def _failure_text(settings: BounceSettings) -> list[str]:
    return [
        f"This is the mail system at host {settings.myhostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
        *_SIGNATURE,
        "",
    ]


def _delay_text(message: QueuedMessage, settings: BounceSettings, now: float) -> list[str]:
    # Postfix quotes its delay_warning_time; the time the message has actually waited is as true.
    hours = int(max(0.0, now - message.arrival_time) // 3600)
    days = f"{settings.maximal_queue_lifetime / 86400:g}"
    return [
        f"This is the mail system at host {settings.myhostname}.",
        "",
        "#" * 68,
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
        "#" * 68,
        "",
        f"Your message could not be delivered for more than {hours} hour(s).",
        f"It will be retried until it is {days} day(s) old.",
        "",
        *_SIGNATURE,
        "",
    ]


def _report_part(kind: _Kind, message: QueuedMessage, recipients: list[Recipient],
                 settings: BounceSettings) -> bytes:
    fields = _message_fields(message, settings)
    for recipient in recipients:
        fields += [""] + _recipient_fields(kind, message, recipient, settings)
    return _part("Delivery report", "message/delivery-status", _lines(fields))


def _message_fields(message: QueuedMessage, settings: BounceSettings) -> list[str]:
    fields = []
    if message.dsn_envid:
        fields.append(f"Original-Envelope-Id: {_printable(message.dsn_envid)}")
    fields += [
        f"Reporting-MTA: dns; {settings.myhostname}",
        f"X-Postfix-Queue-ID: {message.queue_id}",  # Postfix's name: log and bounce parsers look for it
        f"X-Postfix-Sender: rfc822; {_printable(message.sender)}",
        f"Arrival-Date: {formatdate(message.arrival_time, localtime=True)}",
    ]
    return fields


def _recipient_fields(kind: _Kind, message: QueuedMessage, recipient: Recipient,
                      settings: BounceSettings) -> list[str]:
    fields = [f"Final-Recipient: rfc822; {_printable(recipient.address)}"]
    if recipient.orcpt:
        fields.append(f"Original-Recipient: {_original_recipient(recipient.orcpt)}")
    fields += [f"Action: {kind.action}", f"Status: {recipient.dsn or kind.default_status}"]
    fields += _diagnostic_fields(recipient.reason)
    if kind.action == "delayed":
        retry_until = message.arrival_time + settings.maximal_queue_lifetime
        fields.append(f"Will-Retry-Until: {formatdate(retry_until, localtime=True)}")
    return [line for field in fields for line in _fold(field)]


def _original_recipient(orcpt: str) -> str:
    """ORCPT is kept as given, "rfc822;addr"; a report writes "rfc822; addr"."""
    address_type, separator, address = orcpt.partition(";")
    if not separator:
        address_type, address = "rfc822", orcpt
    return f"{_printable(address_type.strip())}; {_printable(address.strip())}"


def _diagnostic_fields(reason: str) -> list[str]:
    remote = _REMOTE_REASON.fullmatch(reason)
    if remote is None:
        return [f"Diagnostic-Code: X-Postfix; {_printable(reason)}"]
    return [f"Remote-MTA: dns; {_printable(remote.group(1))}",
            f"Diagnostic-Code: smtp; {_printable(remote.group(2))}"]


def _returned_part(kind: _Kind, message: QueuedMessage, content: bytes, settings: BounceSettings) -> bytes:
    whole = (kind.returns_body and message.dsn_ret != "HDRS"
             and len(content) <= settings.bounce_size_limit)
    if whole:
        return _part("Undelivered Message", "message/rfc822", content)
    headers = _limit_headers(_header_block(content), settings.bounce_size_limit)
    return _part("Undelivered Message Headers", "text/rfc822-headers", headers)


def _header_block(content: bytes) -> bytes:
    """The headers with their last CRLF, without the empty line that ends them."""
    if content.startswith(CRLF):
        return b""
    end = content.find(CRLF + CRLF)
    return content if end < 0 else content[:end + 2]


def _limit_headers(headers: bytes, limit: int) -> bytes:
    if len(headers) <= limit:
        return headers
    last_line_end = headers.rfind(CRLF, 0, limit)
    return headers[:last_line_end + 2] if last_line_end >= 0 else b""  # whole lines only


def _printable(text: str) -> str:
    """What a report may carry: us-ascii, one line. Postfix likewise turns
    what it cannot print into '?'."""
    return "".join(" " if char in "\r\n\t" else char if " " <= char <= "~" else "?" for char in text)


def _fold(line: str) -> list[str]:
    """`line` cut before spaces into lines of at most MAX_LINE characters where
    possible; unfolding (dropping each CRLF) gives `line` back exactly."""
    line = line.rstrip(" ")  # a line of blanks would end a header
    lines = []
    while len(line) > MAX_LINE:
        # Cut after the line's first word, so that no line is only blanks.
        first_word = len(line) - len(line.lstrip(" ")) + 1
        cut = line.rfind(" ", first_word, MAX_LINE)
        if cut < 0:
            cut = line.find(" ", max(first_word, MAX_LINE))
        if cut < 0:
            break
        lines.append(line[:cut])
        line = line[cut:]
    return lines + [line]


def _lines(lines: list[str]) -> bytes:
    return b"".join(line.encode("ascii") + CRLF for line in lines)
