"""Shared helpers for benches that run real peers on loopback.

- free_port / wait_for_port: pick and probe 127.0.0.1 ports.
- ProcessTree: CPU time (user+sys, reaped children included) and memory of
  a daemon and all its descendants, read from /proc (no psutil).
- PostfixInstance: a private Postfix (own config, queue, data and log, on a
  port of your choice, no chroot) started with `postfix -c DIR start`.
- SmtpSink: Postfix's smtp-sink as a throw-away SMTP/LMTP server.
- run_smtp_source: Postfix's smtp-source as the load generator, timed.
- Reaper: kills whatever was started, at exit, on exceptions and on
  SIGINT/SIGTERM, so a bench never leaves daemons behind.
- MailferryInstance: a private mailferry daemon (`mailferry -c DIR
  start-fg`, durable SQLite queue, DNS turned off with MAILFERRY_NAMESERVERS=none).
- BackgroundSmtpSource: run_smtp_source in a thread, for benches that watch
  something else while the load runs.
- LogWatcher: counts delivery outcomes in a growing maillog file.
- tail_file, postconf_settings, mailferry_version: small shared bits.

Everything binds to 127.x.x.x only. Works as root (the peers drop to
`postfix`/`nobody`); see shared/notes/test-peers.md for the background.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

POSTFIX = "/usr/sbin/postfix"
POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
POSTCONF = "/usr/sbin/postconf"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class PeerError(RuntimeError):
    """A peer could not be set up, started or checked."""


# --------------------------------------------------------------------------
# ports

def check_loopback(host: str) -> str:
    if not host.startswith("127."):
        raise PeerError(f"{host}: only 127.0.0.0/8 addresses may be used here")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((check_loopback(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0,
                  proc: subprocess.Popen | None = None, what: str = "server",
                  banner: bool = True) -> None:
    """Wait until HOST:PORT accepts connections (and, with `banner`, sends a
    220 greeting). Raise PeerError if `proc` exits first or time runs out."""
    check_loopback(host)
    deadline = time.monotonic() + timeout
    last = "no connection"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"{what} exited with status {proc.returncode} before "
                            f"it listened on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if not banner:
                    return
                s.settimeout(5)
                greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    except OSError:
                        pass
                    return
                last = f"greeting {greeting[:80]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise PeerError(f"{what} did not answer on {host}:{port} within {timeout:.0f} s ({last})")


# --------------------------------------------------------------------------
# /proc process trees

def _read_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    close = raw.rfind(")")
    return [raw[: raw.find(" ")], raw[raw.find("(") + 1: close]] + raw[close + 2:].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if fields is None:
            continue
        ppid = int(fields[3])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants (pid first)."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


@dataclass
class TreeSample:
    cpu_seconds: float   # user+sys of live processes plus their reaped children
    rss_bytes: int       # sum of VmRSS over the tree (shared pages counted per process)
    pss_bytes: int       # sum of Pss over the tree (shared pages split): the fairer total
    processes: int
    max_hwm_bytes: int   # largest single-process VmHWM among live processes


class ProcessTree:
    """CPU and memory of a daemon and its descendants.

    CPU: for each live process utime+stime+cutime+cstime. A child that has
    exited and been waited for is in its parent's cutime/cstime, so the sum
    over live processes covers short-lived workers too (Postfix's smtpd and
    cleanup, which exit after max_use or max_idle). Take the difference of
    two samples around a run.

    Memory: `start_sampling()` samples the summed RSS and PSS every
    `interval` seconds in a thread; `stop_sampling()` returns the peaks.
    """

    def __init__(self, root_pid: int, interval: float = 0.2):
        self.root_pid = root_pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.peak_hwm = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, memory: bool = True) -> TreeSample:
        cpu_ticks = 0
        rss = pss = hwm = 0
        pids = descendants(self.root_pid)
        alive = 0
        for pid in pids:
            fields = _read_stat(pid)
            if fields is None:
                continue
            alive += 1
            # fields: pid comm state ppid ... utime=13 stime=14 cutime=15 cstime=16
            cpu_ticks += sum(int(fields[i]) for i in (13, 14, 15, 16))
            if memory:
                r, p, h = _memory(pid)
                rss += r
                pss += p
                hwm = max(hwm, h)
        return TreeSample(cpu_ticks / CLOCK_TICKS, rss, pss, alive, hwm)

    def _loop(self) -> None:
        while not self._stop.is_set():
            s = self.sample()
            self.peak_rss = max(self.peak_rss, s.rss_bytes)
            self.peak_pss = max(self.peak_pss, s.pss_bytes)
            self.peak_processes = max(self.peak_processes, s.processes)
            self.peak_hwm = max(self.peak_hwm, s.max_hwm_bytes)
            self._stop.wait(self.interval)

    def start_sampling(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def cpu_by_command(self) -> dict[str, dict]:
        """CPU seconds (utime+stime+cutime+cstime) and process count per
        command name over the live tree, largest first. A worker that has
        exited is in its parent's figure (Postfix: master's)."""
        by: dict[str, dict] = {}
        for pid in descendants(self.root_pid):
            fields = _read_stat(pid)
            if fields is None:
                continue
            entry = by.setdefault(fields[1], {"cpu_seconds": 0.0, "processes": 0})
            entry["cpu_seconds"] += sum(int(fields[i]) for i in (13, 14, 15, 16)) / CLOCK_TICKS
            entry["processes"] += 1
        return dict(sorted(by.items(), key=lambda kv: -kv[1]["cpu_seconds"]))

    def cpu_by_process(self) -> list[dict]:
        """CPU seconds (as in cpu_by_command) of each live process of the
        tree: pid, ppid, command, threads; the root first."""
        out = []
        for pid in descendants(self.root_pid):
            fields = _read_stat(pid)
            if fields is None:
                continue
            out.append({"pid": pid, "ppid": int(fields[3]), "command": fields[1],
                        "threads": int(fields[19]),
                        "cpu_seconds": sum(int(fields[i]) for i in (13, 14, 15, 16)) / CLOCK_TICKS})
        return out

    def stop_sampling(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        s = self.sample()  # one last look, so a short run still gets a figure
        self.peak_rss = max(self.peak_rss, s.rss_bytes)
        self.peak_pss = max(self.peak_pss, s.pss_bytes)
        self.peak_hwm = max(self.peak_hwm, s.max_hwm_bytes)
        self.peak_processes = max(self.peak_processes, s.processes)
        return {
            "peak_rss_bytes": self.peak_rss,
            "peak_pss_bytes": self.peak_pss,
            "peak_processes": self.peak_processes,
            "max_process_hwm_bytes": self.peak_hwm,
        }


def _memory(pid: int) -> tuple[int, int, int]:
    """(VmRSS, Pss, VmHWM) of one process in bytes; zeros if it is gone."""
    rss = hwm = pss = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        return 0, 0, 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pss = rss
    return rss, pss, hwm


# --------------------------------------------------------------------------
# cleaning up

# load generators and other short-lived children in flight: the Reaper kills them first
_IN_FLIGHT: set[subprocess.Popen] = set()


class Reaper:
    """Run registered clean-up callables once: at exit, on an exception that
    ends the program, and on SIGINT/SIGTERM/SIGHUP (then exit 128+signal).
    Children started by run_smtp_source are killed first."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, object]] = []
        self._done = False
        atexit.register(self.run)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def add(self, what: str, action) -> None:
        self._actions.append((what, action))

    def remove(self, action) -> None:
        self._actions = [(w, a) for (w, a) in self._actions if a is not action]

    def _on_signal(self, signum, frame) -> None:
        progress(f"interrupted by signal {signum}: cleaning up")
        self.run()
        os._exit(128 + signum)

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        for proc in list(_IN_FLIGHT):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # clean up the rest anyway
                progress(f"clean-up of {what} failed: {exc}")


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
    """SIGTERM, wait, then SIGKILL the process (and its process group when
    it leads one). Returns the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        progress(f"PID {proc.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        return proc.wait()


def make_traversable(path: Path) -> None:
    """chmod 0755 each directory from `path` up to the root that is not
    already world-searchable, so that unprivileged daemons reach it."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            os.chmod(p, mode | 0o055)


# --------------------------------------------------------------------------
# Postfix

MASTER_CF_BASE = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
{qmgr}qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix instance under `root` (config in root/pf-etc, queue
    in root/pf-queue, data in root/pf-data, log in root/pf.log).

    `services` are extra master.cf lines, e.g.
    "127.0.0.1:2525 inet n - n - - smtpd". `main` overrides or adds main.cf
    parameters. `qmgr=False` leaves the queue manager out of master.cf, so
    that mail stays in the incoming queue: nothing is delivered or deferred.
    Nothing runs chrooted (Debian's own master.cf chroots most services;
    for loopback-only work it makes no difference but needs copies of /etc
    files in the queue directory).
    """

    def __init__(self, root: Path, services: list[str], main: dict[str, str] | None = None,
                 qmgr: bool = True, name: str = "pf"):
        self.root = Path(root)
        self.config_dir = self.root / f"{name}-etc"
        self.queue_dir = self.root / f"{name}-queue"
        self.data_dir = self.root / f"{name}-data"
        self.log_file = self.root / f"{name}.log"
        self.services = services
        self.qmgr = qmgr
        self.main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "bench.example.test",
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            # Nothing may leave loopback: a relayhost that is a closed
            # loopback port and no DNS, even if something tries to deliver.
            "relayhost": "[127.0.0.1]:9",
            "smtp_dns_support_level": "disabled",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "message_size_limit": "10240000",
            "biff": "no",
        }
        self.main.update(main or {})
        self.started = False

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)   # root's; postfix-script makes the rest
        self.data_dir.mkdir(exist_ok=True)
        shutil.chown(self.data_dir, self.main["mail_owner"])
        make_traversable(self.root)
        lines = [f"{k} = {v}" for k, v in self.main.items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        master = MASTER_CF_BASE.format(qmgr="" if self.qmgr else "#")
        (self.config_dir / "master.cf").write_text(
            "\n".join(self.services) + "\n" + master)
        # postfix-script's checks read these two from the config directory
        for extra in ("dynamicmaps.cf", "postfix-files"):
            src = Path("/etc/postfix") / extra
            if src.exists() and not (self.config_dir / extra).exists():
                shutil.copy(src, self.config_dir / extra)

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "MAIL_CONFIG": str(self.config_dir)})
        if check and proc.returncode != 0:
            raise PeerError(f"{' '.join(args)} exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def start(self) -> int:
        """`postfix start`; returns the master's PID once it is running."""
        self._run(POSTFIX, "-c", str(self.config_dir), "start")
        self.started = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid = self.master_pid()
            if pid:
                return pid
            time.sleep(0.05)
        raise PeerError(f"postfix started but wrote no pid file in {self.queue_dir}/pid")

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        """`postfix stop` and wait until the master and its children are gone."""
        pid = self.master_pid()
        if not pid:
            self.started = False
            return
        pids = descendants(pid)
        self._run(POSTFIX, "-c", str(self.config_dir), "stop", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for p in pids:  # whatever is left: the stop did not work
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False

    def delete_all(self) -> None:
        """postsuper -d ALL (works whether Postfix runs or not)."""
        self._run(POSTSUPER, "-c", str(self.config_dir), "-d", "ALL", check=False)

    def fresh_queue(self) -> None:
        """Replace the queue directory by an empty one (Postfix must be
        stopped); `postfix start` recreates its subdirectories. Directories
        that once held many files stay large on ext4: a fresh one makes every
        run start alike."""
        if self.master_pid():
            raise PeerError("fresh_queue: Postfix is running")
        shutil.rmtree(self.queue_dir, ignore_errors=True)
        self.queue_dir.mkdir()

    def queue_files(self, queues=("incoming", "active", "deferred", "hold", "maildrop")) -> int:
        """Queue files on disk, counted directly (needs no running Postfix)."""
        n = 0
        for q in queues:
            d = self.queue_dir / q
            if d.is_dir():
                for _, _, files in os.walk(d):
                    n += len(files)
        return n

    def postqueue_count(self) -> tuple[int, str]:
        """Messages by `postqueue -p` (needs the showq service): the count and
        the summary line ("-- 20 Kbytes in 20 Requests." or
        "Mail queue is empty")."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-p").stdout
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return parse_queue_summary(last), last


def parse_queue_summary(line: str) -> int:
    """The message count of a Postfix mailq summary line."""
    line = line.strip()
    if "queue is empty" in line:
        return 0
    words = line.split()
    if "in" in words:
        try:
            return int(words[words.index("in") + 1])
        except (ValueError, IndexError):
            pass
    raise PeerError(f"unexpected mail queue summary line: {line!r}")


def _alive(pid: int) -> bool:
    fields = _read_stat(pid)
    return fields is not None and fields[2] != "Z"


# --------------------------------------------------------------------------
# smtp-sink / smtp-source

class SmtpSink:
    """Postfix's smtp-sink on HOST:PORT as user `nobody`; with `directory`
    every transaction is written to its own file there."""

    def __init__(self, host: str, port: int, directory: Path | None = None,
                 lmtp: bool = False, backlog: int = 1000, user: str = "nobody"):
        args = [SMTP_SINK, "-u", user, "-c"]
        if lmtp:
            args.append("-L")
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(directory, user)
            args += ["-d", str(directory / "m")]
        args += [f"{check_loopback(host)}:{port}", str(backlog)]
        self.args = args
        self.host, self.port = host, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # a file, not a pipe: a chatty sink must never block on a full pipe
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.args, stdout=self.errors, stderr=self.errors,
                                     start_new_session=True)
        try:
            wait_for_port(self.host, self.port, proc=self.proc, what="smtp-sink")
        except PeerError as exc:
            raise PeerError(f"{exc}: {self.output()[-400:]}") from None

    def output(self) -> str:
        """What smtp-sink printed so far (its -c counters, warnings)."""
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")

    def counters(self) -> dict[str, int]:
        """smtp-sink's latest `-c` counters ("sess=N quit=N mesg=N", one
        record per update, ended by CR): {"sess": N, "quit": N, "mesg": N},
        empty before the first update. "mesg" counts the messages whose
        final "." the sink received. Reads with pread: the file offset is
        shared with the running sink, so it must not move."""
        fd = self.errors.fileno()
        size = os.fstat(fd).st_size
        tail = os.pread(fd, min(size, 512), max(0, size - 512))
        found = _SINK_COUNTERS.findall(tail)
        if not found:
            return {}
        sess, quit_, mesg = found[-1]
        return {"sess": int(sess), "quit": int(quit_), "mesg": int(mesg)}

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


@dataclass
class SourceResult:
    messages: int
    sessions: int
    seconds: float
    returncode: int
    stderr: str
    args: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def run_smtp_source(host: str, port: int, messages: int, sessions: int = 20,
                    size: int = 1024, sender: str = "sender@example.com",
                    recipient: str = "rcpt@example.com", extra: list[str] | None = None,
                    timeout: float = 600) -> SourceResult:
    """Run smtp-source to completion; wall time from spawn to exit."""
    args = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, *(extra or []),
            f"{check_loopback(host)}:{port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _IN_FLIGHT.add(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        _IN_FLIGHT.discard(proc)
    seconds = time.perf_counter() - start
    return SourceResult(messages, sessions, seconds, proc.returncode, output.strip(), args)


_SINK_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")


class BackgroundSmtpSource:
    """run_smtp_source in a thread: `start()`, then watch `done` (an Event)
    while doing something else; `result` is the SourceResult (or `error` the
    exception) once done. Its `seconds` run from smtp-source's spawn to its
    exit, measured in that thread, so polling does not blur them. Killed by
    the Reaper like any run_smtp_source child."""

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        self.done = threading.Event()
        self.result: SourceResult | None = None
        self.error: BaseException | None = None
        self.exited_at: float | None = None   # time.perf_counter() at exit
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_smtp_source(*self._args, **self._kwargs)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            self.error = exc
        finally:
            self.exited_at = time.perf_counter()
            self.done.set()

    def start(self) -> "BackgroundSmtpSource":
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> SourceResult:
        """Join; re-raise what smtp-source's run raised."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise PeerError("smtp-source is still running")
        return self.result


class LogWatcher:
    """Counts Postfix-style delivery records in a maillog file as it grows,
    reading only what was appended since the last `poll()` (complete lines
    only). Works for Postfix's and mailferry's logs alike:

        sent      "status=sent ("      (smtp/lmtp/local delivered it)
        deferred  "status=deferred ("
        bounced   "status=bounced ("
        expired   "status=expired,"
        removed   "QUEUEID: removed"   (qmgr: the message left the queue)

    and keeps the first `keep` lines that are not sent/removed records but
    say deferred/bounced or warning:/error:/fatal:/panic:, as evidence."""

    PATTERNS = {
        "sent": b" status=sent (",
        "deferred": b" status=deferred (",
        "bounced": b" status=bounced (",
        "expired": b" status=expired,",
        "removed": b": removed\n",
    }
    PROBLEMS = (b" status=deferred (", b" status=bounced (", b" status=expired,",
                b"warning:", b"error:", b"fatal:", b"panic:")

    def __init__(self, path: Path, keep: int = 20):
        self.path = Path(path)
        self.keep = keep
        self.offset = 0
        self.counts = {name: 0 for name in self.PATTERNS}
        self.problems: list[str] = []
        self.problem_lines = 0

    def poll(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return dict(self.counts)
        end = chunk.rfind(b"\n")
        if end < 0:
            return dict(self.counts)
        chunk = chunk[: end + 1]
        self.offset += len(chunk)
        for name, pattern in self.PATTERNS.items():
            self.counts[name] += chunk.count(pattern)
        for token in self.PROBLEMS:
            start = chunk.find(token)
            while start >= 0:
                line_start = chunk.rfind(b"\n", 0, start) + 1
                line_end = chunk.find(b"\n", start)
                self.problem_lines += 1
                if len(self.problems) < self.keep:
                    self.problems.append(chunk[line_start:line_end].decode(errors="replace"))
                start = chunk.find(token, line_end)
        return dict(self.counts)


def tail_file(path: Path, lines: int = 8) -> str:
    """The last `lines` lines of a text file ("" if it cannot be read)."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def postconf_settings(config_dir: Path, postconf: str = POSTCONF) -> dict:
    """What a private Postfix really runs with: `postconf -n`, `postconf -M`
    and default_process_limit (what master.cf's maxproc '-' means)."""
    def run(*flags: str) -> list[str]:
        out = subprocess.run([postconf, "-c", str(config_dir), *flags],
                             capture_output=True, text=True)
        return out.stdout.strip().splitlines()
    return {"postconf_n": run("-n"), "postconf_M": run("-M"),
            "default_process_limit": run("-h", "default_process_limit")}


def mailferry_version(binary: str, repo: Path | None = None) -> str:
    """mailferry.__version__ through the interpreter of the console script,
    plus the repository's commit and "+changes" when its work tree differs
    from it (read-only git)."""
    version = "unknown"
    try:
        first = Path(binary).read_bytes()[:200].split(b"\n")[0]
        if first.startswith(b"#!"):
            out = subprocess.run([first[2:].decode().strip(), "-c",
                                  "import mailferry; print(mailferry.__version__)"],
                                 capture_output=True, text=True, timeout=30)
            version = out.stdout.strip() or version
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        pass
    if repo is None:
        return version
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:
        return version
    return f"{version} ({commit}{' +uncommitted changes in src/' if dirty else ''})"


# --------------------------------------------------------------------------
# mailferry

class MailferryInstance:
    """A private mailferry daemon, `mailferry -c DIR start-fg`, under
    root/NAME: config in etc/, queue in queue/ (deleted by `fresh_queue()`
    while it is stopped), log in NAME.log, start-fg's own output in
    start-fg.stderr.

    `main` adds to or overrides the main.cf below; `services` are the
    master.cf lines. The queue is always the durable SQLite one
    (MAILFERRY_QUEUE_BACKEND is removed from the daemon's environment), and
    MAILFERRY_NAMESERVERS points at `nameservers`, "none" (DNS turned off) by
    default, so that nothing it resolves can reach the real network. Give
    SMTP next hops as [ip]:port (relayhost) and no DNS is needed at all.
    """

    def __init__(self, root: Path, binary: str, services: list[str],
                 main: dict[str, str] | None = None, name: str = "mailferry",
                 mail_owner: str = "nobody", nameservers: str = "none"):
        for server in nameservers.replace(",", " ").split():
            if server.lower() == "none":      # DNS turned off
                continue
            check_loopback(server.strip("[").split("]")[0].rsplit(":", 1)[0])
        self.binary = binary
        self.dir = Path(root) / name
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self.log_file = self.dir / f"{name}.log"
        self.stderr_file = self.dir / "start-fg.stderr"
        self.services = services
        self.mail_owner = mail_owner
        self.nameservers = nameservers
        self.main = {
            "myhostname": "bench.example.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "queue_directory": str(self.queue_dir),
            "maillog_file": str(self.log_file),
            "mail_owner": mail_owner,
        }
        self.main.update(main or {})
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MAILFERRY_QUEUE_BACKEND"}
        env["MAILFERRY_NAMESERVERS"] = self.nameservers
        return env

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, self.mail_owner)  # the daemon opens its log after dropping root
        make_traversable(self.dir)
        (self.config_dir / "main.cf").write_text(
            "".join(f"{k} = {v}\n" if v else f"{k} =\n" for k, v in self.main.items()))
        (self.config_dir / "master.cf").write_text("\n".join(self.services) + "\n")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def fresh_queue(self) -> None:
        """Delete the queue directory and the logs (the daemon must be stopped)."""
        if self.proc is not None and self.proc.poll() is None:
            raise PeerError("fresh_queue: mailferry is running")
        shutil.rmtree(self.queue_dir, ignore_errors=True)
        for f in (self.log_file, self.stderr_file):
            if f.exists():
                f.unlink()

    def start(self, host: str, port: int, timeout: float = 30) -> int:
        """start-fg in its own session; returns its PID once HOST:PORT greets."""
        with open(self.stderr_file, "wb") as err:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config_dir), "start-fg"],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         start_new_session=True, env=self.env)
        try:
            wait_for_port(host, port, timeout=timeout, proc=self.proc, what="mailferry start-fg")
        except PeerError as exc:
            self.stop()
            said = tail_file(self.stderr_file, 6) or tail_file(self.log_file, 6)
            raise PeerError(f"mailferry did not start: {exc}" +
                            (f"\n{said}" if said else "")) from None
        return self.proc.pid

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM start-fg and wait; its exit status (None if it was not running)."""
        if self.proc is None:
            return None
        running = self.proc.poll() is None
        status = stop_process(self.proc, timeout=timeout)
        self.proc = None
        if running and status not in (0, None):
            progress(f"  mailferry start-fg exited with status {status} on SIGTERM")
        return status

    def mailq(self) -> tuple[int, str]:
        """`mailferry mailq`: the message count and its last line."""
        out = self.cli("mailq")
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise PeerError(f"mailferry mailq exited {out.returncode}: "
                            f"{(out.stderr or out.stdout).strip()[-400:]}")
        return parse_queue_summary(lines[-1]), lines[-1]

    def settings(self) -> dict:
        """`mailferry postconf -n` and `-M`, as it reads its configuration."""
        def run(*flags: str) -> list[str]:
            out = self.cli("postconf", *flags)
            return (out.stdout or out.stderr).strip().splitlines()
        return {"postconf_n": run("-n"), "postconf_M": run("-M"),
                "environment": {"MAILFERRY_NAMESERVERS": self.nameservers}}

    def version(self, repo: Path | None = None) -> str:
        return mailferry_version(self.binary, repo)

    def log_tail(self, lines: int = 4) -> str:
        return "\n".join(t for t in (tail_file(self.stderr_file, lines),
                                     tail_file(self.log_file, lines)) if t)
