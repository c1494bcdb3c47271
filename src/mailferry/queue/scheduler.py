"""The queue manager: take due messages, deliver each recipient, record the outcome.

This first version drives the `discard` and `error` transports only, so the
queue can be exercised end to end; any other transport defers with Postfix's
`mail transport unavailable`, and the message waits in the queue. Retry
backoff, lifetimes and DSN bounces arrive with the delivery agents.
"""

from __future__ import annotations

import asyncio
import time

from mailferry.message import BOUNCED, DEFERRED, DEFERRED_QUEUE, HOLD, PENDING, SENT, QueuedMessage, Recipient
from mailferry.routing.resolve import Resolver, Route

RETRY_WITHOUT_AGENT = 300.0  # seconds before an unavailable transport is tried again
# After a wake-up, let newly queued mail gather this long, so one queue scan and
# one commit serve many messages under load (measured with bench/intake).
GATHER_SECONDS = 0.05
_REMOVED = "removed"  # the outcome of a message with nothing left to do


class Scheduler:
    def __init__(self, store, committer, resolver: Resolver, log, batch: int = 100):
        self.store = store
        self.committer = committer
        self.resolver = resolver
        self.log = log
        self.batch = batch
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, idle_seconds: float) -> None:
        while not self._stopping:
            worked = await self.run_once()
            if worked:
                continue
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), idle_seconds)
            except TimeoutError:
                continue
            await asyncio.sleep(GATHER_SECONDS)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def run_once(self) -> int:
        messages = await asyncio.to_thread(self.store.due, time.time(), self.batch)
        if not messages:
            return 0
        for message in messages:
            self._deliver(message)
        # One write for the whole batch: one commit, not one per message.
        await self.committer.run(self._record_all, messages)
        for message in messages:
            self._log_outcome(message)
        return len(messages)

    def _deliver(self, message: QueuedMessage) -> None:
        started = time.time()
        for recipient in message.recipients:
            if recipient.status in (PENDING, DEFERRED):
                self._attempt(message, recipient, self.resolver.resolve(recipient.address), started)

    def _attempt(self, message: QueuedMessage, recipient: Recipient, route: Route, started: float) -> None:
        if route.transport == "discard":
            self._outcome(message, recipient, route, SENT, "2.0.0", route.nexthop or "discarded", started)
        elif route.transport == "error":
            self._outcome(message, recipient, route, BOUNCED, "5.0.0", route.nexthop or "mail delivery disabled", started)
        else:
            self._outcome(message, recipient, route, DEFERRED, "4.3.0",
                          f"mail transport unavailable: mailferry has no {route.transport} "
                          "delivery agent yet", started)

    def _outcome(self, message: QueuedMessage, recipient: Recipient, route: Route, status: str,
                 dsn: str, reason: str, started: float) -> None:
        recipient.status, recipient.dsn, recipient.reason = status, dsn, reason
        now = time.time()
        total = now - message.arrival_time
        queued = started - message.arrival_time
        self.log.line(route.transport, (
            f"{message.queue_id}: to=<{recipient.address}>, relay=none, delay={_seconds(total)}, "
            f"delays={_seconds(queued)}/0/0/{_seconds(now - started)}, dsn={dsn}, "
            f"status={status} ({reason})"))

    def _record_all(self, messages: list[QueuedMessage]) -> None:
        """On the queue's writer thread: store every outcome of the batch."""
        for message in messages:
            self._settle(message)
            if message.queue == _REMOVED:
                self.store.remove(message.queue_id)
            else:
                self.store.update(message)

    @staticmethod
    def _settle(message: QueuedMessage) -> None:
        states = {recipient.status for recipient in message.recipients}
        message.attempts += 1
        if states <= {SENT}:
            message.queue = _REMOVED
        elif states & {PENDING, DEFERRED}:
            message.queue = DEFERRED_QUEUE
            message.next_attempt = time.time() + RETRY_WITHOUT_AGENT
        else:
            # Only sent and bounced recipients are left, and this version cannot
            # send the bounce notice yet: keep the message, visibly, rather than
            # drop the sender's only evidence of the failure.
            message.queue = HOLD

    def _log_outcome(self, message: QueuedMessage) -> None:
        if message.queue == _REMOVED:
            self.log.line("qmgr", f"{message.queue_id}: removed")
        elif message.queue == HOLD:
            self.log.warning("qmgr", f"{message.queue_id}: bounce notification is not implemented "
                                     "yet; message placed on hold (see mailq, postsuper -d)")


def _seconds(value: float) -> str:
    """Postfix's delay format (format_tv with two significant digits and
    delay_logging_resolution_limit = 2): whole seconds, rounded, from 10 s up;
    below, two significant digits and at most two decimals; trailing zeros dropped."""
    if value <= 0:
        return "0"
    if value >= 10:
        return str(round(value))
    text = f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") or "0"
