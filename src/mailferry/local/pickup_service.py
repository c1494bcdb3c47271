"""The pickup service: the daemon's loop around local/pickup.py.

It scans the maildrop directory at start, on each `pickup` control command
(`wake`, sent by sendmail after it writes a file) and every pickup wakeup
time (master.cf's wakeup column, 60 s by default, as Postfix's). Each file
becomes a NewMessage that goes through cleanup, the one way into the queue;
the file is removed only once the queue has committed the message.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf
from mailferry.cleanup.service import ContentRefused
from mailferry.local import pickup, returned
from mailferry.local.maildrop import MaildropError, UnsupportedMaildropVersion
from mailferry.local.pickup_milters import NonSmtpMilters
from mailferry.maillog import Log
from mailferry.message import NewMessage
from mailferry.qmgr.bounce import BounceSettings
from mailferry.queue import QueueError, new_queue_id

DEFAULT_WAKEUP = 60.0


class Intake(returned.NoticeIntake, Protocol):
    """cleanup (cleanup/service.py): the way into the queue."""

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "", milters=None) -> str: ...


class PickupService:
    def __init__(self, queue_directory: str, cleanup: Intake, log: Log, wakeup: float = DEFAULT_WAKEUP,
                 content_filter: str = "", receive_overrides: frozenset[str] = frozenset(),
                 bounce: BounceSettings | None = None, milters: NonSmtpMilters | None = None):
        self.queue_directory = queue_directory
        self.cleanup = cleanup
        self.log = log
        self.wakeup = wakeup
        self.content_filter = content_filter   # content_filter as pickup sees it (main.cf, its -o)
        self.receive_overrides = receive_overrides
        self.bounce = bounce or BounceSettings(myhostname="localhost")
        self.milters = milters                 # non_smtpd_milters (local/pickup_milters.py)
        self._wakeup_event = asyncio.Event()

    @classmethod
    def from_config(cls, config: Config, master: MasterCf | None, cleanup: Intake, log: Log) -> PickupService:
        return cls(config.get("queue_directory"), cleanup, log, _wakeup_seconds(master),
                   _content_filter(config, master), _receive_overrides(config, master),
                   returned.bounce_settings(config), NonSmtpMilters.from_config(config, log))

    def reload(self, config: Config, master: MasterCf | None) -> None:
        """The wakeup time of the new master.cf applies from the next wait."""
        self.wakeup = _wakeup_seconds(master)
        self.content_filter = _content_filter(config, master)
        self.receive_overrides = _receive_overrides(config, master)
        self.bounce = returned.bounce_settings(config)
        self.milters = NonSmtpMilters.from_config(config, self.log)

    def wake(self) -> None:
        self._wakeup_event.set()

    async def run(self) -> None:
        while True:
            # Cleared before the scan: a wake-up that comes during it (sendmail has
            # just written a file) makes one more scan, rather than waiting for the timer.
            self._wakeup_event.clear()
            await self.pick_up_all()
            try:
                await asyncio.wait_for(self._wakeup_event.wait(), self.wakeup)
            except TimeoutError:
                pass

    async def pick_up_all(self) -> None:
        for path in await asyncio.to_thread(pickup.scan, self.queue_directory):
            try:
                submission = await asyncio.to_thread(pickup.pick_up, path)
            except UnsupportedMaildropVersion as problem:
                self.log.warning("pickup", f"{path}: {problem}; left in place for a newer mailferry")
                continue
            except MaildropError as problem:
                moved = await asyncio.to_thread(pickup.quarantine, self.queue_directory, path)
                self.log.warning("pickup", f"{problem}; file moved to {moved}")
                continue
            except FileNotFoundError:
                continue
            queue_id = new_queue_id()
            submission.message.content_filter = self.content_filter
            submission.message.receive_overrides = self.receive_overrides
            self.log.line("pickup", f"{queue_id}: {pickup.log_text(submission)}")
            try:
                try:
                    if self.milters is None:
                        await self.cleanup.enqueue(submission.message, queue_id, submission.full_name)
                    else:
                        await self.milters.enqueue(self.cleanup, submission.message, queue_id, submission.full_name)
                except ContentRefused as refused:
                    if refused.refusal.reply.code < 500:
                        # The file stays for the next pass; the files after it go on.
                        self.log.warning("pickup", f"{queue_id}: {path}: {refused.refusal.reply.text}; will retry")
                        continue
                    await returned.return_to_sender(submission.message, queue_id, refused.refusal, self.bounce,
                                                    self.cleanup, self.log)
            except QueueError as problem:
                self.log.warning("pickup", f"{queue_id}: cannot queue {path}: {problem}; will retry")
                return
            await asyncio.to_thread(pickup.remove, path)


def _content_filter(config: Config, master: MasterCf | None) -> str:
    """content_filter for sendmail's mail: main.cf's, or the pickup service's -o content_filter=."""
    return pickup_view(config, master).get("content_filter").strip()


def _receive_overrides(config: Config, master: MasterCf | None) -> frozenset[str]:
    """receive_override_options for sendmail's mail (main.cf's, or pickup's -o)."""
    return frozenset(pickup_view(config, master).list("receive_override_options"))


def pickup_view(config: Config, master: MasterCf | None) -> Config:
    service = master.find("pickup", "unix") if master is not None else None
    if service is not None:
        config = config.with_overrides(service.overrides, f"master.cf, line {service.line}")
    return config


def _wakeup_seconds(master: MasterCf | None) -> float:
    service = master.find("pickup", "unix") if master is not None else None
    return float(service.wakeup_seconds) if service is not None and service.wakeup_seconds else DEFAULT_WAKEUP
