"""`sendmail -bs`: an SMTP conversation on standard input and output.

The same protocol core as smtpd, talking to a local user instead of a
socket. Every recipient is accepted (the user is local, as with sendmail
-bm); each accepted message becomes a maildrop file, so `-bs` works with
the daemon down too, and its "queued as" names that file. The sender is
the MAIL FROM given, as Postfix's sendmail -bs lets a local user choose it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from mailferry import refusals
from mailferry.local.maildrop import MaildropEnvelope, write_maildrop
from mailferry.protocol import replies
from mailferry.protocol import server_events as events
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings


def converse(read: Callable[[], bytes], write: Callable[[bytes], None], hostname: str,
             queue_directory: str, uid: int, message_size_limit: int) -> int:
    """Run one session; return the number of messages dropped."""
    conn = ServerConnection(ServerSettings(
        hostname=hostname, message_size_limit=message_size_limit, forbid_unauth_pipelining=False))
    write(conn.greeting())
    mail: events.MailFrom | None = None
    recipients: list[events.RcptTo] = []
    dropped = 0
    while True:
        event = conn.next_event()
        if event is events.NEED_DATA:
            write(conn.data_to_send())
            conn.receive(read())
            continue
        if event is events.CLOSED:
            write(conn.data_to_send())
            return dropped
        if isinstance(event, (events.Hello, events.MailFrom, events.RcptTo)):
            if isinstance(event, events.MailFrom):
                mail, recipients = event, []
            elif isinstance(event, events.RcptTo):
                recipients.append(event)
            conn.accept()
        elif isinstance(event, events.MessageReceived):
            envelope = MaildropEnvelope(
                sender=mail.path.address, recipients=[r.path.address for r in recipients], uid=uid,
                arrival_time=time.time(), dsn_ret=mail.params.ret, dsn_envid=mail.params.envid,
                body_type=mail.params.body,
                dsn_notify=recipients[0].params.notify if recipients else None)
            try:
                path = write_maildrop(queue_directory, envelope, _lf_lines(event.content))
            except OSError as exc:
                conn.refuse(refusals.maildrop_write_error(exc).reply)
                continue
            conn.accept_message(os.path.basename(path))
            dropped += 1
        elif isinstance(event, events.StartTLSRequested):
            conn.refuse(refusals.TLS_UNAVAILABLE_ON_STDIN.reply)
        elif isinstance(event, (events.AuthRequested, events.AuthResponse)):
            conn.refuse(replies.AUTH_NOT_ENABLED)


def _lf_lines(content: bytes) -> bytes:
    """Maildrop files hold what sendmail read: lines end in LF; pickup restores CRLF."""
    return content.replace(b"\r\n", b"\n")
