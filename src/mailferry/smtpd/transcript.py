"""The postmaster's transcript of an SMTP session that had errors (Postfix's
smtpd_chat_notify), sent when one of the session's error classes is in
notify_classes (config/notify.py).

The protocol core keeps the history only when a session is given a list for it
(ServerConnection.transcript): with notify_classes free of smtpd's classes (the
default `resource, software` has two, so the default keeps it) nothing is
recorded. Each failed reply is classed as Postfix's smtpd classes it:

    protocol  the core's own refusals (syntax, sequence, unknown command, ...)
    bounce    a message over message_size_limit, too many hops (to bounce_notice_recipient)
    data      a table lookup that failed for now (451 4.3.0 Temporary lookup failure)
    software  a server configuration error (451 4.3.5), an internal error
    resource  the queue could not take the mail (queue file write error, insufficient storage)
    policy    every other refusal: restrictions, milters, header/body checks

The notice goes from double_bounce_sender to error_notice_recipient (to
bounce_notice_recipient when the session had a `bounce` error), with Postfix's
subject `<mail_name> SMTP server: errors from host[addr]`; it is queued with
origin "2bounce", so if it cannot be delivered it is dropped, never bounced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate

from mailferry.config.config import Config
from mailferry.config.notify import SMTPD_CLASSES, notify_classes
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.protocol.replies import Reply
from mailferry.qmgr.bounce import qualified

LENGTH = 78     # Postfix's line_wrap of the transcript
INDENT = 4


@dataclass(frozen=True, slots=True)
class TranscriptSettings:
    classes: frozenset[str]            # notify_classes ∩ smtpd's classes; empty: no transcript at all
    error_recipient: str = "postmaster"
    bounce_recipient: str = "postmaster"
    sender: str = "double-bounce"
    myorigin: str = ""
    myhostname: str = "localhost"
    mail_name: str = "Postfix"
    header_from_format: str = "standard"
    flush_threshold: int = 100         # smtpd_history_flush_threshold

    @classmethod
    def from_config(cls, config: Config) -> TranscriptSettings:
        return cls(classes=notify_classes(config) & SMTPD_CLASSES,
                   error_recipient=config.get("error_notice_recipient"),
                   bounce_recipient=config.get("bounce_notice_recipient"),
                   sender=config.get("double_bounce_sender"), myorigin=config.get("myorigin"),
                   myhostname=config.get("myhostname"), mail_name=config.get("mail_name"),
                   header_from_format=config.get("header_from_format"),
                   flush_threshold=config.integer("smtpd_history_flush_threshold"))


def error_class(reply: Reply, by_core: bool) -> str:
    """Postfix's error class of one failed reply (smtpd.c, smtpd_check.c)."""
    if reply.enhanced in ("5.3.4", "5.4.6", "4.4.6"):
        return "bounce"        # message too large, too many hops
    if by_core:
        return "protocol"
    text = reply.text
    if reply.enhanced == "4.3.0" and "Temporary lookup failure" in text:
        return "data"
    if reply.enhanced == "4.3.5" or "internal error" in text:
        return "software"
    if "queue file write error" in text or "Insufficient system storage" in text:
        return "resource"
    return "policy"


def errors_to_report(failed: list[tuple[Reply, bool]], classes: frozenset[str]) -> set[str]:
    return {error_class(reply, by_core) for reply, by_core in failed} & classes


def notice(settings: TranscriptSettings, client: str, history: list[str], errors: set[str],
           reason: str = "", now: float | None = None) -> NewMessage:
    """The message smtpd_chat_notify posts."""
    now = time.time() if now is None else now
    to = settings.bounce_recipient if "bounce" in errors else settings.error_recipient
    to = qualified(to, settings.myorigin)
    sender = qualified(settings.sender, settings.myorigin)
    daemon = qualified("MAILER-DAEMON", settings.myorigin or settings.myhostname)
    if settings.header_from_format == "obsolete":
        head = [f"From: {daemon} (Mail Delivery System)", f"To: {to} (Postmaster)"]
    else:
        head = [f"From: Mail Delivery System <{daemon}>", f"To: Postmaster <{to}>"]
    lines = [f"Date: {formatdate(now, localtime=True)}", *head,
             f"Subject: {settings.mail_name} SMTP server: errors from {client}",
             "Auto-Submitted: auto-generated", "", "Transcript of session follows.", ""]
    for line in history:
        lines += _wrap(_printable(line))
    lines.append("")
    if reason:
        lines.append(f"Session aborted, reason: {reason}")
    lines += ["", "For other details, see the local mail logfile"]
    content = b"".join(line.encode("ascii") + b"\r\n" for line in lines)
    return NewMessage(sender=sender, recipients=[Recipient(to)], content=content,
                      client=ClientInfo(name="localhost", address="127.0.0.1", protocol="local"),
                      origin="2bounce", arrival_time=now)


def _printable(text: str) -> str:
    return "".join(char if " " <= char <= "~" else "?" for char in text)


def _wrap(line: str) -> list[str]:
    """Postfix's line_wrap: lines of at most LENGTH, continuation lines indented by INDENT."""
    out = []
    first = True
    while True:
        width = LENGTH if first else LENGTH - INDENT
        prefix = "" if first else " " * INDENT
        if len(line) <= width:
            out.append((prefix + line).rstrip(" "))
            return out
        cut = line.rfind(" ", 1, width)
        if cut <= 0:
            cut = width
        out.append(prefix + line[:cut])
        line = line[cut:].lstrip(" ")
        first = False
