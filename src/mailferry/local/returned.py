"""Mail from sendmail that cleanup's content checks rejected goes back to its sender.

Postfix's pickup hands cleanup CLEANUP_FLAG_BOUNCE: a REJECT from header_checks or
body_checks (or a milter) does not vanish with no one to tell, as it would if the
maildrop file were just deleted; cleanup_bounce() logs each recipient as bounced and
sends the sender a non-delivery notice with the reply's text. mailferry does the same
here, with qmgr's notice maker (qmgr/bounce.py) and cleanup's way into the queue for
notices, before pickup removes the maildrop file. A refusal for now (4xx: a table that
failed, a REJECT with a 4.x.x status) leaves the file for pickup's next pass instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from mailferry.config.config import Config
from mailferry.maillog import Log
from mailferry.message import ACTIVE, BOUNCED, NewMessage, QueuedMessage, Recipient
from mailferry.qmgr.bounce import BounceSettings, Notice, failure_notice, log_queued
from mailferry.qmgr.scheduler import SchedulerSettings, delay_text
from mailferry.refusals import Refusal

T = TypeVar("T")


class NoticeIntake(Protocol):
    on_queued: Callable[[], None]    # wakes qmgr: cleanup calls it for smtpd's and pickup's mail

    async def enqueue_notices(self, notices: Sequence[NewMessage],
                              then: Callable[[list[str] | Exception], T]) -> T: ...


def bounce_settings(config: Config) -> BounceSettings:
    """The notice's settings as qmgr reads them for its own notices (one place reads them)."""
    return SchedulerSettings.from_config(config).bounce_settings()


async def return_to_sender(message: NewMessage, queue_id: str, refusal: Refusal, settings: BounceSettings,
                           cleanup: NoticeIntake, log: Log) -> None:
    """Log each recipient as bounced and queue the sender's notice (none for the null sender).
    Raises what cleanup raises when the notice cannot be queued (QueueError): then the
    maildrop file stays for the next pass."""
    now = time.time()
    reply = refusal.reply
    failed = [Recipient(r.address, r.orcpt, r.notify, BOUNCED, reply.enhanced, reply.text)
              for r in message.recipients]
    queued = QueuedMessage(queue_id, ACTIVE, message.sender, failed, len(message.content),
                           message.arrival_time or now, message_id=message.message_id, client=message.client,
                           origin=message.origin, dsn_ret=message.dsn_ret, dsn_envid=message.dsn_envid,
                           body_type=message.body_type, smtputf8=message.smtputf8)
    notice = failure_notice(queued, message.content, failed, settings, now)
    notices = [Notice("sender non-delivery notification", notice)] if notice is not None else []

    def record(ids: list[str] | Exception) -> list[str]:
        if isinstance(ids, Exception):
            raise ids
        return ids

    ids = await cleanup.enqueue_notices([n.message for n in notices], record)
    if ids:
        cleanup.on_queued()
    delay = max(0.0, now - (message.arrival_time or now))
    for recipient in failed:
        log.line("cleanup", f"{queue_id}: to=<{recipient.address}>, relay=none, delay={delay_text(delay)}, "
                            f"delays={delay_text(delay)}/0/0/0, dsn={reply.enhanced}, status=bounced ({reply.text})")
    log_queued(log, queued, notices, ids)
