"""The running mail system: one process, one event loop, every service.

Start-up happens in two phases. `prepare()` runs before the event loop,
possibly as root: it reads and checks the configuration (a configuration
that `mailferry check` rejects does not start), binds every listener,
prepares the queue directory and gives up root. `serve()` then runs the
services until stop: smtpd listeners, pickup, the queue manager and the
control socket.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import signal
import socket
import sys
from syslog import LOG_MAIL

import mailferry
from mailferry import __version__, maillog, metrics
from mailferry.anvil import clients
from mailferry.anvil.status import statistics_lines
from mailferry.config.compat import log_lines as compat_log_lines
from mailferry.config.config import Config, load
from mailferry.config.mastercf import read_master_cf
from mailferry.delivery.agents import open_client_tables
from mailferry.diagnostics import ERROR
from mailferry.maillog import MailLog
from mailferry.metrics import endpoint as metrics_endpoint
from mailferry.master import workers
from mailferry.master.pidfile import remove_pid, running_pid, write_pid
from mailferry.master.privileges import Owner, PrivilegeError, drop_to, give_to, resolve_owner
from mailferry.master.runtime import Runtime
from mailferry.master.sdnotify import Notifier
from mailferry.master.spawner import SpawnerClient, SpawnerProcess, start_spawner
from mailferry.policy.check import configuration_problems
from mailferry.queue import QueueError, open_queue
from mailferry.queue.queue_id import use_process_tag
from mailferry.smtpd.service import listen_backlog, service_view
from mailferry.smtpd.tls import TLSSetupError, server_context
from mailferry.tables.ldap import log_warnings_to as log_ldap_warnings_to
from mailferry.tables.logsink import log_warnings_to as log_table_warnings_to
from mailferry.tables.proxy import approve_from as approve_proxy_maps


class StartupError(Exception):
    """Why the mail system cannot start; the message says what to fix.
    `details` are diagnostics to print before it, one per line."""

    def __init__(self, message: str, details: tuple[str, ...] = ()):
        super().__init__(message)
        self.details = details


class MailServer:
    def __init__(self, config_dir: str, background: bool = False):
        self.config_dir = config_dir
        self.background = background
        self.config: Config | None = None
        self.master = None
        self.owner: Owner | None = None
        self.log = None
        self.sockets: dict[tuple[str, str], list[socket.socket]] = {}
        self.worker_pids: list[int] = []
        self.worker_indexes: dict[int, int] = {}   # pid -> its column in anvil's table
        self.client_tables: dict = {}
        self.workers_read_fd: int | None = None
        self.spawner_process: SpawnerProcess | None = None
        self.spawner: SpawnerClient | None = None
        self.metrics_socket: socket.socket | None = None
        self.metrics_endpoint: metrics_endpoint.Endpoint | None = None
        self._stop = None
        self._reload_requested = False
        self.notifier = Notifier(None)


    # ---- phase 1: before the event loop
    def prepare(self) -> None:
        # Taken before any child is forked: only the master speaks to systemd (master/sdnotify.py).
        self.notifier = Notifier.from_environment()
        self.config, self.master = self._read_configuration()
        self.queue_directory = self.config.get("queue_directory")
        if (pid := running_pid(self.queue_directory)) is not None:
            raise StartupError(f"the mail system is already running: PID: {pid}")
        self.owner = resolve_owner(self.config.get("mail_owner"))
        self.tls_contexts = {}
        for service in self._smtpd_services(self.master):
            key = (service.name, service.type)
            self.sockets[key] = bind_listener(service, self.config)
            # Keys are often readable by root alone: read them before root is given up, as Postfix does.
            self.tls_contexts[key] = _tls_context(service, self.config)
        self._prepare_queue_directory()
        self._prepare_metrics()
        self._prepare_mail_spool()
        self.log = self._open_log()
        # A directory server that fails is the administrator's business: say so in the mail log.
        log_ldap_warnings_to(lambda text: self.log.warning("cleanup", text))
        log_table_warnings_to(lambda service, text: self.log.warning(service, text))
        _import_everything_the_services_use()
        # The one part that keeps root (master/spawner.py): forked before any thread exists
        # and before root is given up; started by anyone else, it runs as that user.
        self.spawner_process = start_spawner(self.config_dir, keep_stderr=not self.background)
        self.client_tables = open_client_tables(self.config, self.master, self.log)
        drop_to(self.owner)
        self._initialize_queue()

    def _initialize_queue(self) -> None:
        """Create (or check) the queue database once, before smtpd workers open it
        side by side: two processes setting up a new SQLite file race for its lock."""
        if os.environ.get("MAILFERRY_QUEUE_BACKEND", "sqlite") != "sqlite":
            return
        try:
            store = open_queue(self.queue_directory)
            try:
                # No smtpd runs yet, so no file can be between its write and its row.
                swept = store.sweep_content_files()
                missing = store.missing_content_files()
            finally:
                store.close()
        except QueueError as exc:
            raise StartupError(f"cannot open the queue: {exc}") from None
        for queue_id, path in missing:
            self.log.warning("master", f"{queue_id}: its content file {path} is missing: the message cannot be "
                                       f"delivered; restore the file, or remove the message (postsuper -d {queue_id})")
        if swept:
            self.log.warning("master", f"removed {len(swept)} content file(s) in {self.queue_directory}/content "
                                       f"that no queued message names (left by a crash): {', '.join(swept[:10])}")

    def _open_log(self):
        """Opened while still root, and given to mail_owner, so a reload can reopen it."""
        path = self.config.get("maillog_file")
        facility_name = self.config.get("syslog_facility")
        syslog_facility = maillog.facility(facility_name)
        log = MailLog(path, self.config.get("syslog_name"), self.config.get("myhostname"),
                      to_syslog=self.background or _stderr_is_the_journal(),
                      syslog_facility=LOG_MAIL if syslog_facility is None else syslog_facility)
        if syslog_facility is None:
            log.warning("master", f"{self.config.where('syslog_facility')}unknown syslog facility "
                                  f"\"{facility_name}\" on this system; logging as mail")
        if path and os.geteuid() == 0:
            os.chown(path, self.owner.uid, self.owner.gid)
        return log

    def _read_configuration(self):
        problems = [item for item in configuration_problems(self.config_dir) if item.severity == ERROR]
        if problems:
            raise StartupError(f"the configuration has {len(problems)} error(s); fix them "
                               f"(mailferry -c {self.config_dir} check) and start again",
                               tuple(item.format("mailferry/master") for item in problems))
        config = load(self.config_dir)
        master = read_master_cf(os.path.join(self.config_dir, "master.cf"))
        approve_proxy_maps(config.get)    # which proxy: tables this process serves (tables/proxy.py)
        return config, master

    @staticmethod
    def _smtpd_services(master):
        return [service for service in master.services
                if service.command == "smtpd" and service.type == "inet"]

    def _prepare_queue_directory(self) -> None:
        """The directories are mail_owner's; the files in maildrop stay their submitters'
        (pickup trusts a file's owner to say who sent it)."""
        paths = []
        path = self.queue_directory
        try:
            for sub, mode in (("", 0o755), ("pid", 0o755), ("public", 0o755), ("maildrop", 0o1733),
                              ("content", 0o700)):
                path = os.path.join(self.queue_directory, sub)
                os.makedirs(path, exist_ok=True)
                os.chmod(path, mode)
                paths.append(path)
            paths += [os.path.join(self.queue_directory, name) for name in os.listdir(self.queue_directory)
                      if name.startswith("queue.db")]
            give_to(paths, self.owner)
        except OSError as exc:
            # A read-only or full queue file system: say which and what to do, not a traceback.
            raise StartupError(f"queue_directory {self.queue_directory}: cannot prepare {exc.filename or path}: "
                               f"{exc.strerror}; the queue needs a writable file system with free space: "
                               "fix that and start again") from None

    def _prepare_metrics(self) -> None:
        """mailferry_metrics_listen (docs/metrics.md): the address bound and the processes'
        directory made while root, before any table is opened (their lookups are timed)."""
        value = self.config.get("mailferry_metrics_listen")
        try:
            address = metrics_endpoint.parse_listen(value, self.config.boolean("mailferry_metrics_allow_remote"))
        except metrics_endpoint.MetricsAddressError as exc:
            raise StartupError(f"{self.config.where('mailferry_metrics_listen')}{exc}") from None
        if address is None:
            return
        try:
            self.metrics_socket = metrics_endpoint.bind(*address)
        except OSError as exc:
            raise StartupError(f"{self.config.where('mailferry_metrics_listen')}cannot listen on {address[0]} "
                               f"port {address[1]}: {exc.strerror}; choose a free port") from None
        directory = os.path.join(self.queue_directory, "metrics")
        metrics.enable(directory)
        give_to([directory], self.owner)
        metrics.on_fork_in_child(self.metrics_socket.close)   # the master alone answers scrapes

    def _prepare_mail_spool(self) -> None:
        """A missing mail_spool_directory is made, root's and mode 755 as /var/mail is made by
        the system, when master.cf runs local(8) and home_mailbox does not send mail home. The
        spawner makes each user's own mailbox in it (master/spawner.py spool_access)."""
        if not any(service.command == "local" for service in self.master.services):
            return
        if self.config.get("home_mailbox") or self.config.get("mailbox_command"):
            return
        spool = self.config.get("mail_spool_directory").rstrip("/")
        if not spool or os.path.isdir(spool):
            return
        try:
            os.makedirs(spool, 0o755)
        except OSError as exc:
            raise StartupError(f"main.cf: mail_spool_directory = {spool}: cannot create it: {exc.strerror}; "
                               "create it, or set mail_spool_directory to an existing directory") from None
        os.chmod(spool, 0o755)

    # ---- phase 2: the event loop
    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        if self.spawner_process is not None:
            self.spawner = SpawnerClient(self.spawner_process.control)
        self.runtime = Runtime(self.config, self.master, self.sockets, self.tls_contexts, self.log, self.owner,
                               workers_read_fd=self.workers_read_fd, client_tables=self.client_tables,
                               spawner=self.spawner)
        await self.runtime.start()
        await self._start_metrics_endpoint()
        write_pid(self.queue_directory)
        if self.background:
            _detach_stderr()  # tells `mailferry start`, which reads our stderr, that we are up
        self.log.line("master", f"daemon started -- version {__version__}, configuration {self.config_dir}")
        self._log_compatibility(self.config)
        if self.owner is not None and os.geteuid() != 0 and self.spawner_process is not None:
            self.log.line("master", f"not running as root: every delivery (pipe, local, virtual) runs with the "
                                    f"rights of {self.owner.name}, whatever account it names")
        self.log.flush()
        # Listeners are bound and listening, the queue is open, pickup and qmgr run: ready.
        self.notifier.ready(self._status_text())
        loop = asyncio.get_running_loop()
        next_statistics = loop.time() + self.config.time("anvil_status_update_time")
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.2)
                self.log.flush()
                self._reap_workers()
                if loop.time() >= next_statistics:
                    next_statistics = loop.time() + self.config.time("anvil_status_update_time")
                    self._log_anvil_statistics()
                if self.spawner_process is not None:
                    self.spawner_process.check(self.log)
                if self._reload_requested:
                    self._reload_requested = False
                    await self._reload()
        finally:
            self.notifier.stopping()
            self.log.line("master", "terminating on signal 15")
            workers.signal_workers(self.worker_pids, signal.SIGTERM)
            if self.metrics_endpoint is not None:
                await self.metrics_endpoint.stop()
            await self.runtime.stop()
            if self.spawner_process is not None:
                self.spawner_process.stop()
            await workers.wait_for_workers(self.worker_pids, 60, self.log)
            self._log_anvil_statistics()    # as anvil does when it exits
            remove_pid(self.queue_directory)
            self.log.close()

    async def _start_metrics_endpoint(self) -> None:
        if self.metrics_socket is None:
            return
        self.metrics_endpoint = metrics_endpoint.Endpoint(self.metrics_socket, metrics.directory(),
                                                          self.runtime.store.counts)
        await self.metrics_endpoint.start()
        host, port = self.metrics_socket.getsockname()[:2]
        self.log.line("master", f"metrics: serving http://{f'[{host}]' if ':' in host else host}:{port}/metrics")

    def _reap_workers(self) -> None:
        """A worker that died took its sessions with it: anvil forgets their counts, or its
        clients would stay locked out by smtpd_client_connection_count_limit."""
        self.worker_pids = workers.reap_exited(self.worker_pids, self.log, self._forget_worker)

    def _forget_worker(self, pid: int) -> None:
        metrics.process_gone(pid)
        index = self.worker_indexes.pop(pid, None)
        if index is not None:
            clients.table().forget_process(index)

    def _log_anvil_statistics(self) -> None:
        for line in statistics_lines(clients.table(), float(self.config.time("anvil_rate_time_unit"))):
            self.log.line("anvil", line)

    # ---- an smtpd worker's life (see master/workers.py)
    def run_worker(self, notify_fd: int, index: int) -> int:
        use_process_tag(index)
        self.notifier = Notifier(None)   # only the master tells systemd anything
        clients.table().use_process_index(index)
        self.log.after_fork()
        if self.spawner_process is not None:
            self.spawner_process.close_in_worker()     # smtpd never delivers: no way to root
            self.spawner_process = None
        if self.background:
            _detach_stderr()
        _install_event_loop_policy()
        asyncio.run(self._serve_worker(notify_fd))
        return 0

    async def _serve_worker(self, notify_fd: int) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the master decides; Ctrl-C reaches both
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self.runtime = Runtime(self.config, self.master, self.sockets, self.tls_contexts, self.log, self.owner,
                               worker_notify_fd=notify_fd)
        await self.runtime.start()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.2)
                self.log.flush()
                if self._reload_requested:
                    self._reload_requested = False
                    await self._reload(quiet=True)
        finally:
            await self.runtime.stop()
            self.log.close()

    def _request_reload(self) -> None:
        self._reload_requested = True

    async def _reload(self, quiet: bool = False) -> None:
        self.notifier.reloading()
        try:
            await self._reload_configuration(quiet)
        finally:
            self.notifier.ready(self._status_text())   # the old configuration serves on when refused

    def _status_text(self) -> str:
        listeners = sum(len(sockets) for sockets in self.sockets.values())
        return f"accepting mail on {listeners} listener(s), queue {self.queue_directory}"

    async def _reload_configuration(self, quiet: bool) -> None:
        workers.signal_workers(self.worker_pids, signal.SIGHUP)
        try:
            config, master = self._read_configuration()
        except StartupError as exc:
            if not quiet:
                self.log.warning("master", f"reload refused, the running configuration stays: {exc}")
                for detail in exc.details:
                    self.log.warning("master", f"reload refused: {detail}")
            return
        if not quiet and config.get("mailferry_metrics_listen") != self.config.get("mailferry_metrics_listen"):
            self.log.warning("master", "reload: mailferry_metrics_listen changed; it takes effect at the next "
                                       "start (the metrics stay where they are served now)")
        if self.spawner is not None:
            await self.spawner.refresh_password_tables(self.log)   # root-only tables, read by the spawner
        await self.runtime.reload(config, master)
        self.log.reopen()
        if not quiet:
            self.log.line("master", f"reload -- version {__version__}, configuration {self.config_dir}")
            self._log_compatibility(config)

    def _log_compatibility(self, config: Config) -> None:
        """Postfix's lines about backwards-compatible defaults, below the last compatibility_level."""
        for text in compat_log_lines(config):
            self.log.line("master", text)


# Imported while we may still read them: once root is given up, the
# interpreter's own library may be out of reach (a Python installed under
# /root, as pyenv does), and a lazy import deep in a session would fail.
# mailferry's own modules are found by walking the package, so a new module
# cannot be forgotten; tests/unit/master/test_preload.py checks that every
# module they import, at the top or inside a function, is then loaded too.
_DAEMON_PACKAGE_SKIPS = ("mailferry.cli", "mailferry.__main__")
# Loaded by name at run time, where no import statement shows them.
_DYNAMIC_MODULES = (
    "encodings.idna", "encodings.ascii", "encodings.latin_1", "concurrent.futures.thread",
    # dnspython loads its transports and record types lazily
    "dns.asyncresolver", "dns.asyncbackend", "dns._asyncio_backend", "dns.asyncquery", "dns.nameserver",
    "dns.rdtypes.IN.A", "dns.rdtypes.IN.AAAA", "dns.rdtypes.ANY.MX", "dns.rdtypes.ANY.CNAME",
    "dns.rdtypes.ANY.SOA", "dns.rdtypes.ANY.NS", "dns.rdtypes.ANY.PTR", "dns.rdtypes.ANY.TXT",
)


def daemon_modules() -> list[str]:
    """Every mailferry module the daemon may run: the whole package but the command line."""
    return sorted(info.name for info in pkgutil.walk_packages(mailferry.__path__, "mailferry.")
                  if not info.name.startswith(_DAEMON_PACKAGE_SKIPS))


def _import_everything_the_services_use() -> None:
    for name in (*daemon_modules(), *_DYNAMIC_MODULES):
        importlib.import_module(name)
    try:
        importlib.import_module("uvloop")
    except ImportError:
        pass


def _tls_context(service, config: Config):
    try:
        return server_context(service_view(config, service))
    except TLSSetupError as exc:
        raise StartupError(f"master.cf, line {service.line}: service {service.name}: {exc}") from None


def bind_listener(service, config: Config) -> list[socket.socket]:
    """Bound, listening sockets for an inet service, made before root is given up."""
    host, port = service.listen_address()
    hosts = [host] if host else _interface_hosts(config)
    sockets = []
    for one_host in hosts:
        family = socket.AF_INET6 if ":" in one_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            listener.bind((one_host, port))
        except OSError as exc:
            listener.close()
            raise StartupError(f"master.cf, line {service.line}: service {service.name}: "
                               f"cannot listen on {one_host} port {port}: {exc.strerror}") from None
        listener.listen(listen_backlog(service, service_view(config, service)))
        listener.setblocking(False)
        sockets.append(listener)
    return sockets


def _interface_hosts(config: Config) -> list[str]:
    """Addresses for a service without one: inet_interfaces (and inet_protocols)."""
    interfaces = config.list("inet_interfaces")
    protocols = config.get("inet_protocols")
    wants_v6 = protocols in ("all", "ipv6") or "ipv6" in protocols
    wants_v4 = protocols in ("all", "ipv4") or "ipv4" in protocols
    if "all" in interfaces:
        return [host for host, wanted in (("0.0.0.0", wants_v4), ("::", wants_v6)) if wanted]
    if "loopback-only" in interfaces:
        return [host for host, wanted in (("127.0.0.1", wants_v4), ("::1", wants_v6)) if wanted]
    return [item.strip("[]") for item in interfaces]


def _stderr_is_the_journal() -> bool:
    """Started by systemd with standard error going to the journal (JOURNAL_STREAM is its
    device:inode, systemd.exec(5)): log through syslog, as Postfix does, so that the lines
    reach /var/log/mail.log and `journalctl -t mailferry/smtpd` alike."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(2)
    except OSError:
        return False
    return stream == f"{status.st_dev}:{status.st_ino}"


def _detach_stderr() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def run_foreground(config_dir: str, background: bool = False) -> int:
    server = MailServer(config_dir, background)
    try:
        server.prepare()
    except (StartupError, PrivilegeError) as exc:
        for line in getattr(exc, "details", ()):
            print(line, file=sys.stderr)
        print(f"mailferry/master: fatal: {exc}", flush=True, file=sys.stderr)
        return 1
    processes = workers.worker_count(server.master, server.config)
    if os.environ.get("MAILFERRY_QUEUE_BACKEND") == "ram":
        processes = 1  # a queue in one process's memory cannot be shared
    clients.share(processes)   # anvil's table, one session column per process
    # Fork before the event loop and any thread exist: a fork copies only the calling thread.
    server.worker_pids, server.workers_read_fd = workers.spawn_workers(processes - 1, server.run_worker)
    server.worker_indexes = {pid: index for index, pid in enumerate(server.worker_pids, start=1)}
    use_process_tag(0)
    _install_event_loop_policy()
    asyncio.run(server.serve())
    return 0


def _install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

