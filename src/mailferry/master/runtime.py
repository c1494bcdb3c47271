"""The services of one running configuration, and their start, reload and stop.

The master process runs every service: smtpd, pickup, the queue manager and
the control socket. An smtpd worker process (see master/workers.py) runs
only smtpd and cleanup, with its own connection to the queue; after each
commit it tells the master's queue manager through a pipe.

Each service reads its own settings (`from_config`) and takes a new
configuration itself (`reload`); this module only builds, starts, reloads
and stops them, and wires them together: smtpd and pickup hand messages to
cleanup, cleanup wakes the queue manager, the queue manager hands its
notices back to cleanup.
"""

from __future__ import annotations

import asyncio
import os

from mailferry.cleanup.services import CleanupServices
from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf
from mailferry.local.pickup_service import PickupService, pickup_view
from mailferry.maillog import Log
from mailferry.master.control_server import ControlServer
from mailferry.qmgr.scheduler import Scheduler
from mailferry.queue import GroupCommitter, new_queue_id, open_queue
from mailferry.queue.showq import encode_messages
from mailferry.smtpd.service import SmtpdService, service_view

STOP_DELIVERY_GRACE = 5.0   # seconds deliveries in progress get to finish at stop


class Runtime:
    def __init__(self, config: Config, master: MasterCf, sockets, tls_contexts, log: Log, owner,
                 worker_notify_fd: int | None = None, workers_read_fd: int | None = None,
                 client_tables: dict | None = None, spawner=None):
        """`worker_notify_fd` makes this an smtpd worker that reports commits there;
        `workers_read_fd` is where the master hears its workers' reports. `spawner`
        (delivery.spawn.Spawner): runs deliveries with a user's rights."""
        self.config = config
        self.master = master
        self.sockets = sockets
        self.tls_contexts = tls_contexts
        self.log = log
        self.owner = owner
        self.queue_directory = config.get("queue_directory")
        self.smtpd_services: list = []
        self._tasks: list[asyncio.Task] = []
        self.worker_notify_fd = worker_notify_fd
        self.workers_read_fd = workers_read_fd
        self.scheduler: Scheduler | None = None
        self.pickup: PickupService | None = None
        self.control = None
        self.client_tables = client_tables or {}
        self.spawner = spawner

    @property
    def is_worker(self) -> bool:
        return self.worker_notify_fd is not None

    async def start(self) -> None:
        # MAILFERRY_QUEUE_BACKEND=ram keeps the queue in memory: for benchmarks of everything but
        # the disk (one process only: a RAM queue cannot be shared with smtpd workers).
        # The master copies the WAL back in a thread of its own; no commit of anyone's waits for it.
        self.store = open_queue(self.queue_directory, os.environ.get("MAILFERRY_QUEUE_BACKEND", "sqlite"),
                                checkpoints="elsewhere" if self.is_worker else "background")
        self.committer = GroupCommitter(self.store)
        # cleanup_service_name: each master.cf cleanup service with its -o (cleanup/services.py)
        self.cleanups = CleanupServices(self.config, self.master, self.committer, self.log,
                                        self._tell_master if self.is_worker else self._wake_qmgr)
        self.cleanup = self.cleanups.default
        if not self.is_worker:
            self.scheduler = Scheduler.from_config(self.config, self.master, self.store, self.committer,
                                                   self.cleanup, self.log, self.client_tables, self.spawner)
            self.pickup = PickupService.from_config(self.config, self.master, self._pickup_cleanup(), self.log)
        await self._start_smtpd(self.config, self.master)
        if self.scheduler is None or self.pickup is None:
            return
        if self.workers_read_fd is not None:
            asyncio.get_running_loop().add_reader(self.workers_read_fd, self._worker_queued)
        self.control = ControlServer(self.queue_directory, {
            "pickup": self.pickup.wake, "flush": self.scheduler.flush, "showq": self._showq}, self.log)
        await self.control.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.run(self.scheduler.settings.queue_run_delay), name="qmgr"),
            asyncio.create_task(self.pickup.run(), name="pickup"),
        ]

    def _wake_qmgr(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    async def _showq(self) -> bytes:
        """The queue for a user who may not read it directly (see mailferry.control)."""
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
        self._wake_qmgr()

    async def _start_smtpd(self, config: Config, master: MasterCf) -> None:
        for service in master.services:
            if service.command != "smtpd" or service.type != "inet":
                continue
            key = (service.name, service.type)
            cleanup = self.cleanups.for_view(service_view(config, service))
            smtpd = SmtpdService(service, config, self.tls_contexts.get(key), cleanup, self.log, new_queue_id)
            sockets = self.sockets.get(key, [])
            await smtpd.start(sockets)
            self.smtpd_services.append(smtpd)

    async def reload(self, config: Config, master: MasterCf) -> None:
        """New configuration for new work: listeners are rebuilt, open sessions finish on the old one."""
        self.config, self.master = config, master
        if self.scheduler is not None:
            self.scheduler.reload(config, master)
        if self.pickup is not None:
            self.pickup.reload(config, master)
        self.cleanups.reload(config, master)
        if self.pickup is not None:
            self.pickup.cleanup = self._pickup_cleanup()
        for smtpd in self.smtpd_services:
            smtpd.reload(config, master.find(smtpd.service.name, smtpd.service.type))
            smtpd.cleanup = self.cleanups.for_view(service_view(config, smtpd.service))

    def _pickup_cleanup(self):
        """The cleanup service sendmail's mail goes to: pickup's cleanup_service_name."""
        return self.cleanups.for_view(pickup_view(self.config, self.master))

    async def stop(self) -> None:
        for smtpd in self.smtpd_services:
            await smtpd.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
            await self.scheduler.drain(STOP_DELIVERY_GRACE)
            self.scheduler.close()
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

