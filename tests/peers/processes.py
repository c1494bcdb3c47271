"""Process trees from /proc (no psutil), and the benches' Reaper.

- descendants / children_map: a daemon and every process below it; socket_inodes: its sockets.
- ProcessTree: CPU time (user+sys, reaped children included) and memory (summed RSS and PSS,
  sampled in a thread) of a daemon and all its descendants.
- Reaper: runs the registered clean-ups once, at exit, on an exception that ends the program and
  on SIGINT/SIGTERM/SIGHUP, so a bench never leaves daemons behind. Children registered in
  IN_FLIGHT (load generators) are killed first.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tests.peers import progress

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# load generators and other short-lived children in flight: the Reaper kills them first
IN_FLIGHT: set[subprocess.Popen] = set()


def socket_inodes(pid: int) -> set[str]:
    """The sockets a process holds open, as /proc/PID/fd links name them: `socket:[INODE]`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


def read_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat as [pid, comm, state, ppid, ...] (comm unsplit); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    close = raw.rfind(")")
    return [raw[: raw.find(" ")], raw[raw.find("(") + 1: close]] + raw[close + 2:].split()


def children_map() -> dict[int, list[int]]:
    """Every live process's children, by parent PID."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = read_stat(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[3]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """pid and all its live descendants (pid first)."""
    children = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[2] != "Z"


def _cpu_seconds(fields: list[str]) -> float:
    # fields: pid comm state ppid ... utime=13 stime=14 cutime=15 cstime=16
    return sum(int(fields[i]) for i in (13, 14, 15, 16)) / CLOCK_TICKS


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
        cpu = 0.0
        rss = pss = hwm = 0
        live = 0
        for pid in descendants(self.root_pid):
            fields = read_stat(pid)
            if fields is None:
                continue
            live += 1
            cpu += _cpu_seconds(fields)
            if memory:
                r, p, h = _memory(pid)
                rss += r
                pss += p
                hwm = max(hwm, h)
        return TreeSample(cpu, rss, pss, live, hwm)

    def _record(self, sample: TreeSample) -> None:
        self.peak_rss = max(self.peak_rss, sample.rss_bytes)
        self.peak_pss = max(self.peak_pss, sample.pss_bytes)
        self.peak_processes = max(self.peak_processes, sample.processes)
        self.peak_hwm = max(self.peak_hwm, sample.max_hwm_bytes)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._record(self.sample())
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
            fields = read_stat(pid)
            if fields is None:
                continue
            entry = by.setdefault(fields[1], {"cpu_seconds": 0.0, "processes": 0})
            entry["cpu_seconds"] += _cpu_seconds(fields)
            entry["processes"] += 1
        return dict(sorted(by.items(), key=lambda kv: -kv[1]["cpu_seconds"]))

    def cpu_by_process(self) -> list[dict]:
        """CPU seconds (as in cpu_by_command) of each live process of the
        tree: pid, ppid, command, threads; the root first."""
        out = []
        for pid in descendants(self.root_pid):
            fields = read_stat(pid)
            if fields is None:
                continue
            out.append({"pid": pid, "ppid": int(fields[3]), "command": fields[1],
                        "threads": int(fields[19]), "cpu_seconds": _cpu_seconds(fields)})
        return out

    def stop_sampling(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        self._record(self.sample())  # one last look, so a short run still gets a figure
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


class Reaper:
    """Run registered clean-up callables once: at exit, on an exception that
    ends the program, and on SIGINT/SIGTERM/SIGHUP (then exit 128+signal).
    Children in IN_FLIGHT (smtp-source runs) are killed first."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self._done = False
        atexit.register(self.run)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def add(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def remove(self, action: Callable[[], object]) -> None:
        # ==, not `is`: each `obj.stop` makes a new bound-method object, equal to the last one
        self._actions = [(w, a) for (w, a) in self._actions if a != action]

    def _on_signal(self, signum, frame) -> None:
        progress(f"interrupted by signal {signum}: cleaning up")
        self.run()
        os._exit(128 + signum)

    def run(self) -> None:
        if self._done:
            return
        self._done = True
        for proc in list(IN_FLIGHT):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # clean up the rest anyway
                progress(f"clean-up of {what} failed: {exc}")
