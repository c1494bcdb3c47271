"""The services of one running configuration, and their start, reload and stop.

The master process runs every service: smtpd, pickup, the queue manager and
the control socket. An smtpd worker process (see master/workers.py) runs
only smtpd and cleanup, with its own connection to the queue; after each
commit it tells the master's queue manager through a pipe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from mailferry.cleanup.cleanup import CleanupSettings
from mailferry.cleanup.service import CleanupService
from mailferry.config.config import Config
from mailferry.master.control_server import ControlServer
from mailferry.queue import GroupCommitter, QueueError, new_queue_id, open_queue
from mailferry.delivery.agents import Transports
from mailferry.qmgr.scheduler import Scheduler, SchedulerSettings
from mailferry.routing.resolve import Resolver
from mailferry.tables.match_lists import NetworkList

PICKUP_DEFAULT_WAKEUP = 60.0
STOP_DELIVERY_GRACE = 5.0   # seconds deliveries in progress get to finish at stop


class Runtime:
    def __init__(self, config: Config, master, sockets, tls_contexts, log, owner,
                 worker_notify_fd: int | None = None, workers_read_fd: int | None = None,
                 client_tables: dict | None = None):
        """`worker_notify_fd` makes this an smtpd worker that reports commits there;
        `workers_read_fd` is where the master hears its workers' reports."""
        self.config = config
        self.master = master
        self.sockets = sockets
        self.tls_contexts = tls_contexts
        self.log = log
        self.owner = owner
        self.queue_directory = config.get("queue_directory")
        self.smtpd_services: list = []
        self._tasks: list[asyncio.Task] = []
        self._pickup_wakeup = asyncio.Event()
        self.worker_notify_fd = worker_notify_fd
        self.workers_read_fd = workers_read_fd
        self.scheduler = None
        self.control = None
        self.client_tables = client_tables or {}

    @property
    def is_worker(self) -> bool:
        return self.worker_notify_fd is not None

    async def start(self) -> None:
        # MAILFERRY_QUEUE_BACKEND=ram keeps the queue in memory: for benchmarks of everything but
        # the disk (one process only: a RAM queue cannot be shared with smtpd workers).
        self.store = open_queue(self.queue_directory, os.environ.get("MAILFERRY_QUEUE_BACKEND", "sqlite"))
        self.committer = GroupCommitter(self.store)
        if not self.is_worker:
            self.scheduler = Scheduler(self.store, self.committer, Resolver.from_config(self.config),
                                       self._transports(self.config, self.master), self.log,
                                       SchedulerSettings.from_config(self.config))
        self.cleanup = self._cleanup_service(self.config)
        await self._start_smtpd(self.config, self.master)
        if self.is_worker:
            return
        if self.workers_read_fd is not None:
            asyncio.get_running_loop().add_reader(self.workers_read_fd, self._worker_queued)
        self.control = ControlServer(self.queue_directory, {
            "pickup": self._pickup_wakeup.set, "flush": self.scheduler.flush, "showq": self._showq}, self.log)
        await self.control.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.run(self.config.time("queue_run_delay")), name="qmgr"),
            asyncio.create_task(self._pickup_loop(), name="pickup"),
        ]

    def _transports(self, config: Config, master) -> Transports:
        from mailferry.delivery.dns import NexthopResolver
        protocols = tuple(config.list("inet_protocols")) or ("all",)
        # The SMTP client applies smtp_mx_address_limit itself, per transport.
        dns = NexthopResolver.from_environment(inet_protocols=protocols, mx_address_limit=0)
        return Transports(config, master, self.log, dns, self.client_tables)

    def _cleanup_service(self, config: Config) -> CleanupService:
        on_queued = self._tell_master if self.is_worker else self.scheduler.wake
        settings, is_local_client = _cleanup_configuration(config)
        return CleanupService(settings, self.committer, self.log, is_local_client, on_queued)

    async def _showq(self) -> bytes:
        """The queue for a user who may not read it directly (see mailferry.control)."""
        from mailferry.queue.showq import encode_messages
        messages = await asyncio.to_thread(self.store.messages)
        return encode_messages(messages)

    def _tell_master(self) -> None:
        try:
            os.write(self.worker_notify_fd, b"q")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the master will look anyway

    def _worker_queued(self) -> None:
        try:
            os.read(self.workers_read_fd, 4096)
        except BlockingIOError:
            return
        self.scheduler.wake()

    async def _start_smtpd(self, config: Config, master) -> None:
        from mailferry.smtpd.service import SmtpdService
        for service in master.services:
            if service.command != "smtpd" or service.type != "inet":
                continue
            key = (service.name, service.type)
            smtpd = SmtpdService(service, config, self.tls_contexts.get(key), self.cleanup, self.log, new_queue_id)
            sockets = self.sockets.get(key, [])
            await smtpd.start(sockets)
            self.smtpd_services.append(smtpd)

    async def _pickup_loop(self) -> None:
        pickup = self.master.find("pickup", "unix") if self.master else None
        interval = float(pickup.wakeup_seconds) if pickup is not None and pickup.wakeup_seconds else \
            PICKUP_DEFAULT_WAKEUP
        while True:
            await self._pick_up_all()
            self._pickup_wakeup.clear()
            try:
                await asyncio.wait_for(self._pickup_wakeup.wait(), interval)
            except TimeoutError:
                pass

    async def _pick_up_all(self) -> None:
        from mailferry.local import pickup
        from mailferry.local.maildrop import MaildropError, UnsupportedMaildropVersion
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
            self.log.line("pickup", f"{queue_id}: {pickup.log_text(submission)}")
            try:
                await self.cleanup.enqueue(submission.message, queue_id, submission.full_name)
            except QueueError as problem:
                self.log.warning("pickup", f"{queue_id}: cannot queue {path}: {problem}; will retry")
                return
            await asyncio.to_thread(pickup.remove, path)

    async def reload(self, config: Config, master) -> None:
        """New configuration for new work: listeners are rebuilt, open sessions finish on the old one."""
        self.config, self.master = config, master
        if self.scheduler is not None:
            from mailferry.delivery.agents import reopen_client_tables
            self.client_tables = reopen_client_tables(self.client_tables, config, master, self.log)
            old = self.scheduler.transports
            self.scheduler.resolver = Resolver.from_config(config)
            self.scheduler.transports = self._transports(config, master)
            self.scheduler.settings = SchedulerSettings.from_config(config)
            old.close()   # idle cached sessions; deliveries in progress finish on their own
        self.cleanup.settings, self.cleanup.is_local_client = _cleanup_configuration(config)
        for smtpd in self.smtpd_services:
            smtpd.reload(config, master.find(smtpd.service.name, smtpd.service.type))

    async def stop(self) -> None:
        for smtpd in self.smtpd_services:
            await smtpd.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
            await self.scheduler.drain(STOP_DELIVERY_GRACE)
            self.scheduler.transports.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.stop()
        await self.committer.close()
        self._log_queue_statistics()
        self.store.close()

    def _log_queue_statistics(self) -> None:
        """Every storage call is counted; the totals say what a message cost (OpenSMTPD does the same)."""
        sizes = self.committer.batch_sizes
        batches = sum(sizes.values())
        messages = sum(size * count for size, count in sizes.items())
        average = messages / batches if batches else 0.0
        calls = ", ".join(f"{name}={count}" for name, count in sorted(self.store.stats.items()))
        self.log.line("cleanup" if self.is_worker else "qmgr", f"queue statistics: {messages} messages in {batches} commits "
                              f"(average {average:.1f} per commit); {calls}")


def _cleanup_configuration(config: Config) -> tuple[CleanupSettings, Callable[[str], bool]]:
    """What cleanup takes from main.cf: its settings, and which clients get missing headers added."""
    settings = CleanupSettings(
        myhostname=config.get("myhostname"), myorigin=config.get("myorigin"),
        append_at_myorigin=config.boolean("append_at_myorigin"),
        tls_received_header=config.boolean("smtpd_tls_received_header"),
        mail_name=config.get("mail_name"))
    return settings, _local_header_clients(config).matches


def _local_header_clients(config: Config) -> NetworkList:
    """local_header_rewrite_clients: permit_inet_interfaces (the default) and permit_mynetworks."""
    networks = []
    for item in config.list("local_header_rewrite_clients"):
        if item == "permit_inet_interfaces":
            networks += ["127.0.0.0/8", "[::1]/128"]
            networks += [f"{address}" for address in _own_addresses()]
        elif item == "permit_mynetworks":
            networks.append(config.get("mynetworks"))
        elif item == "static:all":
            networks += ["0.0.0.0/0", "[::]/0"]
    return NetworkList(" ".join(networks))


def _own_addresses() -> list[str]:
    from mailferry.config.hostinfo import local_addresses
    return [str(address) for address, _ in local_addresses()]
