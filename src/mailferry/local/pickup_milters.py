"""non_smtpd_milters: the milters for mail that did not come over SMTP (sendmail, through pickup).

Postfix's cleanup runs them for pickup's mail (cleanup_milter.c): it makes up the SMTP events a
milter expects, with the client "localhost [127.0.0.1]" (connect, EHLO localhost, MAIL, each
RCPT, DATA), then runs the content phase as for SMTP mail. Nobody is waiting for a reply, so a
refusal cannot be answered to a client; what becomes of the message depends on the reply:

- a refusal, at one of the made-up events or at the end of the message, raises ContentRefused,
  as a header_checks REJECT does: pickup returns 5xx mail to its sender (local/returned.py,
  CLEANUP_FLAG_BOUNCE: every recipient `status=bounced` with the milter's text, a notice with
  the message to the sender, the maildrop file removed once that notice is queued) and keeps
  the maildrop file of 4xx mail for its next scan (CLEANUP_STAT_DEFER).
- discard: dropped (`milter-discard`); hold: queued on hold (`milter-hold`).

Either way nothing is lost: the message is queued, returned to its sender, or left in the
maildrop. Each refusal is logged as Postfix's cleanup logs it (`ID: milter-reject: EVENT from
localhost[127.0.0.1]: TEXT; from=<...> to=<...>`), each bounced recipient as bounce_append does.
"""

from __future__ import annotations

from typing import Protocol

from mailferry import refusals
from mailferry.cleanup.service import ContentRefused
from mailferry.config.config import Config
from mailferry.maillog import Log
from mailferry.message import NewMessage
from mailferry.milter.client import DISCARD, HOLD, Verdict
from mailferry.milter.session import MilterSession, non_smtp_macros
from mailferry.milter.settings import MilterSettings

CLIENT_NAME, CLIENT_ADDRESS = "localhost", "127.0.0.1"   # Postfix's stand-in client for local mail


class Intake(Protocol):
    """cleanup (cleanup/service.py): the way into the queue."""

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "",
                      milters: MilterSession | None = None) -> str: ...


class NonSmtpMilters:
    def __init__(self, settings: MilterSettings, myhostname: str, log: Log):
        self.settings = settings
        self.myhostname = myhostname
        self.log = log

    @classmethod
    def from_config(cls, config: Config, log: Log) -> NonSmtpMilters:
        return cls(MilterSettings.from_config(config, "non_smtpd_milters"), config.get("myhostname"), log)

    async def enqueue(self, cleanup: Intake, message: NewMessage, queue_id: str, full_name: str) -> None:
        """Queue `message` through the milters (or drop it: a DISCARD). Raises ContentRefused when
        a milter refused it, and QueueError, as cleanup.enqueue does."""
        if not self.settings.milters:
            await cleanup.enqueue(message, queue_id, full_name)
            return
        recipient = [""]
        session = MilterSession(self.settings, lambda text: self.log.warning("cleanup", text),
                                non_smtp_macros(queue_id, message.sender, lambda: recipient[0], self.myhostname))
        try:
            verdict = await self._envelope(session, message, queue_id, recipient)
            if verdict is not None and verdict.kind == DISCARD:
                return
            await cleanup.enqueue(message, queue_id, full_name, milters=session if verdict is None else None)
        finally:
            await session.close()

    async def _envelope(self, session: MilterSession, message: NewMessage, queue_id: str,
                        recipient: list[str]) -> Verdict | None:
        """The SMTP events Postfix's cleanup makes up; the first verdict ends them. A reject or
        tempfail raises ContentRefused; a HOLD puts the message on hold and a DISCARD is returned,
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
                raise ContentRefused(refusals.milter_reply(verdict.reply))
            return verdict
        return None

    def _log(self, message: NewMessage, queue_id: str, action: str, event: str, text: str) -> None:
        """Postfix's cleanup_milter_apply line for a made-up SMTP event."""
        tail = f" from=<{message.sender}>"
        if message.recipients:
            tail += f" to=<{message.recipients[0].address}>"
        self.log.line("cleanup", f"{queue_id}: {action}: {event} from {CLIENT_NAME}[{CLIENT_ADDRESS}]: {text};{tail}")
