"""The queue manager (Postfix's qmgr): take due mail, deliver it, record what happened.

One loop takes due messages from the store, leaving out those already
being delivered, and reads their content in the same trip to the store's
thread. Each message's unfinished recipients are routed (routing/) and
grouped by (transport, next hop); each group is one delivery job, run
concurrently with every other (the SMTP client limits sessions per next
hop). When a message's jobs are done its outcome is settled:

- every recipient sent or bounced: the message is removed;
- otherwise it is deferred until now + its age, kept between
  minimal_backoff_time and maximal_backoff_time (qmgr's rule), unless it
  has outlived maximal_queue_lifetime (bounce_queue_lifetime for mail
  from <>): then the rest bounce as expired;
- new failures produce a DSN to the sender (qmgr/bounce.py), a DSN
  that fails produces one copy to the postmaster, and that copy is never
  bounced again; delay_warning_time produces one delay notice.

The notices enter the queue the way every message does, through cleanup
(CleanupService.enqueue_notices), and in the same transaction that records
the outcome: cleanup hands them to the group committer together with this
module's write of the outcome (`_record`), so a crash cannot lose one or
send one twice for the same failure. If the queue cannot take them (a full
disk), `_record` learns it in that transaction and keeps the failures
deferred, so their notices are made again at the next attempt.

Log lines: qmgr writes its own, `ID: from=<...>, size=N, nrcpt=N (queue
active)` each time a message enters the active set (as Postfix's qmgr does
when it opens a queue file, a retry included), `ID: from=<...>,
status=expired, returned to sender` and `ID: removed`; the delivery agent's
`to=<...>` line is written here under the transport's name, as Postfix's
agents write it (with `orig_to=<...>` when cleanup rewrote the recipient); bounce
(qmgr/bounce.py) and cleanup write theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from mailferry import metrics
from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf
from mailferry.config.notify import notify_classes
from mailferry.delivery import outcome
from mailferry.delivery.agents import Transports, reopen_client_tables
from mailferry.delivery.dns import NexthopResolver
from mailferry.delivery.local import ForwardError
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import Spawner
from mailferry.maillog import Log
from mailferry.message import (BOUNCED, DEFERRED, DEFERRED_QUEUE, PENDING, DeliveryResult,
                               NewMessage, QueuedMessage, Recipient)
from mailferry.qmgr import bounce
from mailferry.qmgr.bounce import DELAY_NOTICE, POSTMASTER_DELAY_NOTICE, BounceSettings, Notice
from mailferry.queue.store import QueueError
from mailferry.routing.resolve import Resolver, Route, RoutingError, parse_transport

# After a wake-up while deliveries are in flight, let newly queued mail gather this long, so
# one queue scan and one commit serve many messages under load (measured with bench/intake).
GATHER_SECONDS = 0.05
GATHER_AFTER = 8      # ... when the scan before took at least this many messages
SCAN_BATCH = 500
# Content of messages being delivered is held in memory: cap it, so a queue
# of large messages to a slow destination cannot exhaust memory.
IN_FLIGHT_BYTES = 256 << 20
_REMOVED = "removed"  # the outcome of a message with nothing left to do
T = TypeVar("T")


class Store(Protocol):
    """What qmgr reads and writes in the queue (queue/store.py)."""

    def due(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[QueuedMessage]: ...

    def contents(self, queue_ids: Sequence[str]) -> dict[str, bytes]: ...

    def update(self, message: QueuedMessage) -> None: ...

    def remove(self, queue_id: str) -> bool: ...


class Committer(Protocol):
    """The queue's group committer (queue/commit.py): writes in the next transaction."""

    async def run(self, function: Callable[..., T], *args: Any) -> T: ...


class NoticeIntake(Protocol):
    """cleanup (cleanup/service.py): the way into the queue for qmgr's notices."""

    async def enqueue_notices(self, notices: Sequence[NewMessage],
                              then: Callable[[list[str] | QueueError], T]) -> T: ...


class RouteResolver(Protocol):
    """routing/resolve.py: a recipient's (transport, next hop)."""

    async def resolve(self, address: str, sender: str = "") -> Route: ...


class DeliveryAgent(Protocol):
    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]: ...


class Agents(Protocol):
    """The delivery agents by transport name (delivery/agents.py)."""

    def immediate(self, transport: str, nexthop: str) -> DeliveryResult | None: ...

    def client(self, transport: str) -> DeliveryAgent: ...

    def forget_dead_destinations(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    minimal_backoff_time: float = 300.0
    maximal_backoff_time: float = 4000.0
    maximal_queue_lifetime: float = 5 * 86400.0
    bounce_queue_lifetime: float = 5 * 86400.0
    delay_warning_time: float = 0.0
    queue_run_delay: float = 300.0
    active_limit: int = 20000
    myhostname: str = "localhost"
    mail_name: str = "mailferry"
    bounce_size_limit: int = 50000
    double_bounce_recipient: str = "postmaster"
    bounce_notice_recipient: str = "postmaster"
    delay_notice_recipient: str = "postmaster"
    notify_classes: frozenset[str] = frozenset({"resource", "software"})
    double_bounce_sender: str = "double-bounce"
    myorigin: str = ""
    default_filter_nexthop: str = ""

    @classmethod
    def from_config(cls, config: Config) -> SchedulerSettings:
        def seconds(name: str) -> float:
            return float(config.time(name))
        return cls(
            minimal_backoff_time=seconds("minimal_backoff_time"),
            maximal_backoff_time=seconds("maximal_backoff_time"),
            maximal_queue_lifetime=seconds("maximal_queue_lifetime"),
            bounce_queue_lifetime=seconds("bounce_queue_lifetime"),
            delay_warning_time=seconds("delay_warning_time"),
            queue_run_delay=seconds("queue_run_delay"),
            active_limit=config.integer("qmgr_message_active_limit"),
            myhostname=config.get("myhostname"),
            mail_name=config.get("mail_name"),
            bounce_size_limit=config.integer("bounce_size_limit"),
            double_bounce_recipient=config.get("2bounce_notice_recipient"),
            bounce_notice_recipient=config.get("bounce_notice_recipient"),
            delay_notice_recipient=config.get("delay_notice_recipient"),
            notify_classes=notify_classes(config),
            double_bounce_sender=config.get("double_bounce_sender"),
            myorigin=config.get("myorigin"),
            default_filter_nexthop=config.get("default_filter_nexthop").strip(),
        )

    def bounce_settings(self) -> BounceSettings:
        return BounceSettings(myhostname=self.myhostname, mail_name=self.mail_name,
                              bounce_size_limit=self.bounce_size_limit,
                              postmaster=self.double_bounce_recipient, myorigin=self.myorigin,
                              bounce_recipient=self.bounce_notice_recipient,
                              delay_recipient=self.delay_notice_recipient,
                              notify_classes=self.notify_classes,
                              double_bounce_sender=self.double_bounce_sender,
                              maximal_queue_lifetime=self.maximal_queue_lifetime,
                              delay_warning_time=self.delay_warning_time)

    def lifetime(self, sender: str) -> float:
        """How long mail from `sender` may wait: bounce_queue_lifetime for the null sender."""
        return self.bounce_queue_lifetime if sender == "" else self.maximal_queue_lifetime


class CleanupForwarder:
    """How local(8) forwards (delivery/local.py Forwarder): the copy enters the queue through
    cleanup, as every new message does, and qmgr is woken for it. The original's delivery is
    recorded after this returns: a crash in between forwards it again (at least once)."""

    def __init__(self, cleanup: NoticeIntake, wake: Callable[[], None] = lambda: None):
        self.cleanup = cleanup
        self.wake = wake     # the scheduler's, once it exists

    async def forward(self, message: NewMessage) -> str:
        message.arrival_time = message.arrival_time or time.time()
        queued = await self.cleanup.enqueue_notices([message], lambda inserted: inserted)
        if not isinstance(queued, list) or not queued:
            raise ForwardError(str(queued) if queued else "the queue did not take the copy")
        self.wake()
        return queued[0]


def delivery_agents(config: Config, master: MasterCf | None, log: Log, client_tables: dict,
                    spawner: Spawner | None = None, forwarder: CleanupForwarder | None = None) -> Transports:
    """The delivery agents of one configuration. `client_tables`: the SMTP clients'
    password tables, opened while still root (delivery/agents.py). `spawner`: runs
    deliveries with a user's rights (master/spawner.py)."""
    protocols = tuple(config.list("inet_protocols")) or ("all",)
    # The SMTP client applies smtp_mx_address_limit itself, per transport.
    dns = NexthopResolver.from_environment(inet_protocols=protocols, mx_address_limit=0)
    return Transports(config, master, log, dns, client_tables, spawner, forwarder)


class Scheduler:
    def __init__(self, store: Store, committer: Committer, cleanup: NoticeIntake, resolver: RouteResolver,
                 transports: Agents, log: Log, settings: SchedulerSettings | None = None,
                 client_tables: dict | None = None, spawner: Spawner | None = None,
                 forwarder: CleanupForwarder | None = None, clock: Callable[[], float] = time.time):
        """`client_tables`: the SMTP clients' password tables, opened while still root;
        reload() reads them again to build the new agents. `forwarder`: the one the
        agents were given (local(8) forwarding), woken by this scheduler. `clock`: the
        wall clock every due time, backoff, delay warning and lifetime is reckoned by
        (time.time; a test passes its own to walk a retry schedule without sleeping)."""
        self.clock = clock
        self.store = store
        self.committer = committer
        self.cleanup = cleanup
        self.resolver = resolver
        self.transports = transports
        self.log = log
        self.settings = settings or SchedulerSettings()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._in_flight: dict[str, asyncio.Task] = {}
        self._in_flight_bytes = 0
        # Due mail was left for lack of room (active_limit, IN_FLIGHT_BYTES): the next
        # finished message makes room, and wakes the loop.
        self._starved = False
        self._client_tables = client_tables or {}
        self._spawner = spawner
        self._forwarder = forwarder
        if forwarder is not None:
            forwarder.wake = self.wake

    @classmethod
    def from_config(cls, config: Config, master: MasterCf | None, store: Store, committer: Committer,
                    cleanup: NoticeIntake, log: Log, client_tables: dict | None = None,
                    spawner: Spawner | None = None, clock: Callable[[], float] = time.time) -> Scheduler:
        tables = client_tables or {}
        forwarder = CleanupForwarder(cleanup)
        return cls(store, committer, cleanup, Resolver.from_config(config),
                   delivery_agents(config, master, log, tables, spawner, forwarder), log,
                   SchedulerSettings.from_config(config), tables, spawner, forwarder, clock)

    def reload(self, config: Config, master: MasterCf | None) -> None:
        """New routes, agents and settings for the next messages taken; deliveries in
        progress finish with the agents they have."""
        self._client_tables = reopen_client_tables(self._client_tables, config, master, self.log, self._spawner)
        old = self.transports
        self.resolver = Resolver.from_config(config)
        self.transports = delivery_agents(config, master, self.log, self._client_tables, self._spawner,
                                          self._forwarder)
        self.settings = SchedulerSettings.from_config(config)
        old.close()   # idle cached sessions

    def close(self) -> None:
        """After drain(): the agents' idle cached sessions go."""
        self.transports.close()

    # --- the loop

    def wake(self) -> None:
        self._wakeup.set()

    def flush(self) -> None:
        """postqueue -f: deferred mail is due now (the store did that); dead destinations get another try."""
        self.transports.forget_dead_destinations()
        self.wake()

    async def run(self, idle_seconds: float) -> None:
        while not self._stopping:
            # Cleared before the scan: mail committed while the scan runs (after its
            # query) wakes the loop again, rather than waiting for queue_run_delay.
            self._wakeup.clear()
            taken = await self._take_due()
            if taken == SCAN_BATCH and len(self._in_flight) < self.settings.active_limit:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), idle_seconds)
            except TimeoutError:
                continue
            if taken >= GATHER_AFTER:
                # Busy: let more mail gather for one scan. Otherwise a message goes at once:
                # measured with bench/relay's latency probes at low load, an unconditional gather
                # was 25 of the 27 ms from 250 to delivered (Postfix: 1 ms).
                await asyncio.sleep(GATHER_SECONDS)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    async def drain(self, timeout: float) -> None:
        """Let deliveries in progress finish (up to `timeout`); the rest stay queued, untouched."""
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def run_once(self) -> int:
        """Take what is due now and wait until each of those messages is settled (for tests and tools)."""
        taken = await self._take_due()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        return taken

    async def _take_due(self) -> int:
        room = self.settings.active_limit - len(self._in_flight)
        byte_room = IN_FLIGHT_BYTES - self._in_flight_bytes
        if room <= 0 or byte_room <= 0:
            self._starved = True
            return 0
        messages, contents, self._starved = await asyncio.to_thread(
            self._load_due, self.clock(), min(room, SCAN_BATCH), tuple(self._in_flight), byte_room)
        for message in messages:
            content = contents.get(message.queue_id)
            if content is None:      # deleted between the two reads
                continue
            self.log.line("qmgr", f"{message.queue_id}: from=<{message.sender}>, size={message.size}, "
                                  f"nrcpt={len(message.recipients)} (queue active)")
            task = asyncio.create_task(self._process(message, content, self.clock()))
            self._in_flight[message.queue_id] = task
            self._in_flight_bytes += len(content)
            task.add_done_callback(lambda _, queue_id=message.queue_id, size=len(content):
                                   self._done(queue_id, size))
        return len(messages)

    def _load_due(self, now: float, limit: int, exclude: tuple[str, ...], byte_room: int):
        messages = self.store.due(now, limit, exclude)
        taken, total = [], 0
        for message in messages:
            if taken and total + message.size > byte_room:
                break     # the rest waits for room; one message always goes
            taken.append(message)
            total += message.size
        contents = self.store.contents([m.queue_id for m in taken]) if taken else {}
        return taken, contents, len(taken) < len(messages)

    def _done(self, queue_id: str, size: int) -> None:
        self._in_flight_bytes -= size
        task = self._in_flight.pop(queue_id, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            self.log.warning("qmgr", f"{queue_id}: delivery failed unexpectedly: {task.exception()!r}; "
                                     "the message stays queued")
        if self._starved:
            self._starved = False
            self.wake()

    # --- one message

    async def _process(self, message: QueuedMessage, content: bytes, activated: float) -> None:
        groups: dict[Route, list[Recipient]] = {}
        immediate: list[tuple[Recipient, Route, DeliveryResult]] = []
        attempted = [r for r in message.recipients if r.status in (PENDING, DEFERRED)]
        for recipient in attempted:
            try:
                route = (self._filter_route(message.content_filter, recipient.address) if message.content_filter
                         else await self.resolver.resolve(recipient.address, message.sender))
            except RoutingError as error:
                immediate.append((recipient, Route("qmgr", ""), outcome.routing_failure(error)))
                continue
            result = self.transports.immediate(route.transport, route.nexthop)
            if result is not None:
                immediate.append((recipient, route, result))
            else:
                groups.setdefault(route, []).append(recipient)
        for recipient, route, result in immediate:
            self._outcome(message, recipient, route, result, activated, activated)
        jobs = [self._run_job(message, content, route, recipients, activated)
                for route, recipients in groups.items()]
        if len(jobs) == 1:
            await jobs[0]          # the usual case: no task of its own needed
        elif jobs:
            await asyncio.gather(*jobs)
        await self._finish(message, content, attempted)

    def _filter_route(self, content_filter: str, address: str) -> Route:
        """content_filter or FILTER: every recipient goes to the filter's transport; with no
        next hop, to default_filter_nexthop, else the recipient's domain (postconf(5))."""
        route = parse_transport(content_filter)
        if route.nexthop:
            return route
        domain = address.rpartition("@")[2] if "@" in address else self.settings.myhostname
        return Route(route.transport, self.settings.default_filter_nexthop or domain)

    async def _run_job(self, message: QueuedMessage, content: bytes, route: Route,
                       recipients: list[Recipient], activated: float) -> None:
        dispatched = self.clock()
        try:
            results = await self.transports.client(route.transport).deliver(
                DeliveryJob(message, content, recipients, route.nexthop))
        except Exception as error:    # a bug must not lose mail: the recipients wait
            self.log.warning(route.transport, f"{message.queue_id}: delivery agent failed: {error!r}")
            results = [outcome.agent_failure(error)] * len(recipients)
        for recipient, result in zip(recipients, results):
            self._outcome(message, recipient, route, result, activated, dispatched)

    def _outcome(self, message: QueuedMessage, recipient: Recipient, route: Route,
                 result: DeliveryResult, activated: float, dispatched: float) -> None:
        recipient.status, recipient.dsn, recipient.reason = result.status, result.dsn, result.reason
        now = self.clock()
        queued = max(activated - message.arrival_time, 0.0)
        in_qmgr = max(dispatched - activated, 0.0)
        self.log.line(route.transport, (
            f"{message.queue_id}: to=<{recipient.address}>,{_orig_to(recipient)} relay={result.relay}, "
            f"delay={_seconds(now - message.arrival_time)}, delays={_seconds(queued)}/{_seconds(in_qmgr)}/"
            f"{_seconds(result.setup_seconds)}/{_seconds(result.transfer_seconds)}, dsn={result.dsn}, "
            f"status={result.status} ({result.reason})"))
        metrics.delivery_outcome(route.transport, result.status, now - message.arrival_time)

    async def _finish(self, message: QueuedMessage, content: bytes, attempted: list[Recipient]) -> None:
        now = self.clock()
        newly_bounced = [r for r in attempted if r.status == BOUNCED]
        expired = self._expire_if_too_old(message, now)
        notices = bounce.notices_for(message, content, newly_bounced + expired,
                                     self.settings.bounce_settings(), now, self.log)
        self._settle(message, now)
        record = partial(self._record, message, notices, newly_bounced + expired)
        if notices:
            ids = await self.cleanup.enqueue_notices([notice.message for notice in notices], record)
        else:
            ids = await self.committer.run(record, [])
        self._log_settled(message, expired, notices, ids)
        if ids:
            self.wake()

    def _expire_if_too_old(self, message: QueuedMessage, now: float) -> list[Recipient]:
        waiting = [r for r in message.recipients if r.status in (PENDING, DEFERRED)]
        if not waiting or now - message.arrival_time < self.settings.lifetime(message.sender):
            return []
        for recipient in waiting:
            result = outcome.expired(recipient.dsn, recipient.reason)
            recipient.status, recipient.dsn, recipient.reason = result.status, result.dsn, result.reason
        return waiting

    def _settle(self, message: QueuedMessage, now: float) -> None:
        states = {recipient.status for recipient in message.recipients}
        message.attempts += 1
        if not states & {PENDING, DEFERRED}:
            message.queue = _REMOVED
            return
        message.queue = DEFERRED_QUEUE
        age = now - message.arrival_time
        backoff = min(max(age, self.settings.minimal_backoff_time), self.settings.maximal_backoff_time)
        message.next_attempt = now + backoff
        for recipient in message.recipients:
            if recipient.status == PENDING:
                recipient.status = DEFERRED

    def _record(self, message: QueuedMessage, notices: list[Notice], failed: list[Recipient],
                inserted: list[str] | QueueError) -> list[str]:
        """On the queue's writer thread, in the transaction that stored the notices
        (`inserted`: their queue IDs) or failed to (the QueueError): the outcome."""
        ids: list[str] = []
        if isinstance(inserted, QueueError):
            self._postpone_failures(message, notices, failed, inserted)
        else:
            ids = inserted
        if message.queue == _REMOVED:
            self.store.remove(message.queue_id)
        else:
            self.store.update(message)
        return ids

    def _postpone_failures(self, message: QueuedMessage, notices: list[Notice],
                           failed: list[Recipient], error: QueueError) -> None:
        """The queue cannot take the notices (full disk): record the deliveries that
        happened, so they are not repeated, and keep the failures for the next attempt,
        when their notices are made again."""
        bounce.log_not_queued(self.log, message, notices, error)
        for recipient in failed:
            recipient.status = DEFERRED
        if any(notice.label in (DELAY_NOTICE, POSTMASTER_DELAY_NOTICE) for notice in notices):
            message.delay_warned = False
        if message.queue == _REMOVED or message.next_attempt <= self.clock():
            message.queue = DEFERRED_QUEUE
            message.next_attempt = self.clock() + self.settings.minimal_backoff_time

    def _log_settled(self, message: QueuedMessage, expired: list[Recipient],
                     notices: list[Notice], ids: list[str]) -> None:
        if expired:
            self.log.line("qmgr", f"{message.queue_id}: from=<{message.sender}>, status=expired, "
                                  "returned to sender")
        bounce.log_queued(self.log, message, notices, ids)
        if message.queue == _REMOVED:
            self.log.line("qmgr", f"{message.queue_id}: removed")


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


delay_text = _seconds   # the same format for the bounced records pickup writes (local/returned.py)


def _orig_to(recipient: Recipient) -> str:
    """` orig_to=<original>,` when cleanup rewrote the recipient (it kept the original as
    ORCPT `rfc822;ORIGINAL`) or the client's ORCPT names another address; else nothing.
    Postfix writes the same field from its orig_rcpt record."""
    kind, _, original = (recipient.orcpt or "").partition(";")
    original = original.strip()
    if kind.strip().lower() != "rfc822" or not original or original.lower() == recipient.address.lower():
        return ""
    return f" orig_to=<{original}>,"
