"""non_smtpd_milters: the milters for mail that did not come over SMTP (sendmail, through pickup).

Postfix's cleanup runs them for pickup's mail (cleanup_milter.c): it makes up the SMTP events a
milter expects, with the client "localhost [127.0.0.1]" (connect, EHLO localhost, MAIL, each
RCPT, DATA), then runs the content phase as for SMTP mail. Nobody is waiting for a reply, so a
refusal cannot be answered to a client; what becomes of the message depends on the reply:

- 5xx (reject, a custom 5xx, milter_default_action = reject): cleanup bounces it to the sender
  (CLEANUP_FLAG_BOUNCE, which pickup sets): every recipient gets `status=bounced` with the
  milter's text, and the sender a non-delivery notice with the message returned. The maildrop
  file is removed once that notice is queued; if it cannot be queued, the file stays.
- 4xx (tempfail, a milter that is down with milter_default_action = tempfail): cleanup cannot
  bounce (CLEANUP_STAT_DEFER), pickup keeps the maildrop file and tries it again at its next
  scan.
- discard: dropped (`milter-discard`); hold: queued on hold (`milter-hold`).

Either way nothing is lost: the message is queued, returned to its sender, or left in the
maildrop. Each refusal is logged as Postfix's cleanup logs it (`ID: milter-reject: EVENT from
localhost[127.0.0.1]: TEXT; from=<...> to=<...>`), each bounced recipient as bounce_append does.
"""

from __future__ import annotations

import time
from typing import Protocol

from mailferry import refusals
from mailferry.cleanup.service import ContentRefused
from mailferry.config.config import Config
from mailferry.maillog import Log
from mailferry.message import BOUNCED, NewMessage, QueuedMessage
from mailferry.milter.client import DISCARD, HOLD, Verdict
from mailferry.milter.session import MilterSession, non_smtp_macros
from mailferry.milter.settings import MilterSettings
from mailferry.qmgr import bounce
from mailferry.qmgr.scheduler import delay_text
from mailferry.queue import QueueError
from mailferry.refusals import Refusal

CLIENT_NAME, CLIENT_ADDRESS = "localhost", "127.0.0.1"   # Postfix's stand-in client for local mail
DONE, KEEP = True, False     # what pickup does with the maildrop file afterwards


class Intake(Protocol):
    """cleanup (cleanup/service.py): the way into the queue, for the message and its bounce."""

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "",
                      milters: MilterSession | None = None) -> str: ...

    async def enqueue_notices(self, notices, then): ...

    def on_queued(self) -> None: ...


class NonSmtpMilters:
    def __init__(self, settings: MilterSettings, myhostname: str, bounce_settings: bounce.BounceSettings,
                 log: Log):
        self.settings = settings
        self.myhostname = myhostname
        self.bounce_settings = bounce_settings
        self.log = log

    @classmethod
    def from_config(cls, config: Config, log: Log) -> NonSmtpMilters:
        return cls(MilterSettings.from_config(config, "non_smtpd_milters"), config.get("myhostname"),
                   bounce.BounceSettings(myhostname=config.get("myhostname"), mail_name=config.get("mail_name"),
                                         bounce_size_limit=config.integer("bounce_size_limit"),
                                         postmaster=config.get("2bounce_notice_recipient"),
                                         myorigin=config.get("myorigin")),
                   log)

    async def enqueue(self, cleanup: Intake, message: NewMessage, queue_id: str, full_name: str) -> bool:
        """Queue `message` through the milters; DONE when the maildrop file may go (queued,
        discarded, or returned to its sender), KEEP when it is to be tried again. A QueueError
        propagates, as from cleanup.enqueue."""
        if not self.settings.milters:
            await cleanup.enqueue(message, queue_id, full_name)
            return DONE
        recipient = [""]
        session = MilterSession(self.settings, lambda text: self.log.warning("cleanup", text),
                                non_smtp_macros(queue_id, message.sender, lambda: recipient[0], self.myhostname))
        try:
            verdict = await self._envelope(session, message, queue_id, recipient)
            if verdict is not None and verdict.kind == DISCARD:
                return DONE
            try:
                await cleanup.enqueue(message, queue_id, full_name,
                                      milters=session if verdict is None else None)
            except ContentRefused as refused:
                return await self._refused(cleanup, message, queue_id, refused.refusal)
            return DONE
        except _EnvelopeRefused as refused:
            return await self._refused(cleanup, message, queue_id, refused.refusal)
        finally:
            await session.close()

    async def _envelope(self, session: MilterSession, message: NewMessage, queue_id: str,
                        recipient: list[str]) -> Verdict | None:
        """The SMTP events Postfix's cleanup makes up; the first verdict ends them. A reject or
        tempfail raises _EnvelopeRefused; a HOLD puts the message on hold and a DISCARD is returned,
        both after Postfix's log line."""
        events = [("CONNECT", lambda: session.connect(CLIENT_NAME, CLIENT_ADDRESS, 0)),
                  ("EHLO", lambda: session.helo(CLIENT_NAME)),
                  ("MAIL", lambda: session.mail([f"<{message.sender}>"]))]
        for rcpt in message.recipients:
            async def rcpt_event(address: str = rcpt.address) -> Verdict | None:
                recipient[0] = address
                return await session.rcpt([f"<{address}>"])
            events.append(("RCPT", rcpt_event))
        events.append(("DATA", session.data))
        for event, run in events:
            verdict = await run()
            if verdict is None:
                continue
            if verdict.kind == HOLD:
                message.hold = True
                self._log(message, queue_id, "milter-hold", event, verdict.reason or "milter triggers HOLD action")
            elif verdict.kind == DISCARD:
                self._log(message, queue_id, "milter-discard", event, "milter triggers DISCARD action")
            else:
                self._log(message, queue_id, "milter-reject", event, verdict.reply[4:])
                raise _EnvelopeRefused(refusals.milter_reply(verdict.reply))
            return verdict
        return None

    async def _refused(self, cleanup: Intake, message: NewMessage, queue_id: str, refusal: Refusal) -> bool:
        reply = refusal.reply
        if reply.code < 500:
            return KEEP      # Postfix: CLEANUP_STAT_DEFER, the file stays in the maildrop
        return await self._bounce(cleanup, message, queue_id, reply.enhanced or "5.7.1", reply.text)

    async def _bounce(self, cleanup: Intake, message: NewMessage, queue_id: str, dsn: str, text: str) -> bool:
        """Every recipient bounced with the milter's words, and the notice to the sender queued;
        DONE once it is (or when none is due: a null sender, NOTIFY=NEVER), KEEP if it is not."""
        now = time.time()
        arrival = message.arrival_time or now
        for recipient in message.recipients:
            recipient.status, recipient.dsn, recipient.reason = BOUNCED, dsn, text
        queued = QueuedMessage(queue_id=queue_id, queue="active", sender=message.sender,
                               recipients=message.recipients, size=len(message.content), arrival_time=arrival,
                               message_id=message.message_id, client=message.client, origin=message.origin,
                               dsn_ret=message.dsn_ret, dsn_envid=message.dsn_envid, body_type=message.body_type,
                               smtputf8=message.smtputf8)
        notice = bounce.failure_notice(queued, message.content, message.recipients, self.bounce_settings, now)
        if notice is not None:
            ids = await cleanup.enqueue_notices([notice], lambda inserted: inserted)
            if isinstance(ids, QueueError) or not ids:
                self.log.warning("cleanup", f"{queue_id}: cannot queue the sender non-delivery notification: "
                                            f"{ids}; the maildrop file is kept for the next pickup pass")
                return KEEP
            cleanup.on_queued()      # qmgr: a notice waits
        delay = delay_text(now - arrival)
        for recipient in message.recipients:
            self.log.line("cleanup", f"{queue_id}: to=<{recipient.address}>, relay=none, delay={delay}, "
                                     f"delays={delay}/0/0/0, dsn={dsn}, status=bounced ({text})")
        if notice is not None:
            bounce.log_queued(self.log, queued, [bounce.Notice("sender non-delivery notification", notice)], ids)
        return DONE

    def _log(self, message: NewMessage, queue_id: str, action: str, event: str, text: str) -> None:
        """Postfix's cleanup_milter_apply line for a made-up SMTP event."""
        tail = f" from=<{message.sender}>"
        if message.recipients:
            tail += f" to=<{message.recipients[0].address}>"
        self.log.line("cleanup", f"{queue_id}: {action}: {event} from {CLIENT_NAME}[{CLIENT_ADDRESS}]: {text};{tail}")


class _EnvelopeRefused(Exception):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reply.text)
        self.refusal = refusal


