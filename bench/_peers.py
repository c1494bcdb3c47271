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

Everything binds to 127.x.x.x only. Works as root (the peers drop to
`postfix`/`nobody`); see shared/notes/test-peers.md for the background.
"""

from __future__ import annotations

import atexit
import os
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
