"""strace output, read back: `strace -f -tt -T -yy -s N -o FILE -p PID ...`, one event per system call.

-tt gives each call's entry time, -T its duration, so `returned` is when it came back; -yy names the
file or socket behind each descriptor (`fsync(5</q/queue.db-wal>)`, `write(9<TCP:[...]>, ...)`).
A call another thread interrupted is printed in two pieces (`<unfinished ...>`, then
`<... fsync resumed>`): they are joined back into one event.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.peers import PeerError

TRACED = "fsync,fdatasync,sendto,write,sendmsg,writev,pwrite64,link,linkat,rename,renameat,renameat2"
_LINE = re.compile(r"^(?P<tid>\d+) +(?P<time>\d\d:\d\d:\d\d\.\d+) (?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<fd>\d+)?(?:<(?P<path>(?:[^<>]|<[^<>]*>)*)>)?(?P<args>.*)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<args>.*)$")
_RESULT = re.compile(r"\) += (?P<ret>-?\d+|\?)(?: [A-Z]\w+ \([^)]*\))? <(?P<duration>\d+\.\d+)>$")


@dataclass
class Event:
    index: int          # position in the trace file of the line that completed it
    tid: int
    name: str
    fd: int | None
    path: str           # what -yy said the descriptor is ("" if none)
    text: str           # the arguments as strace printed them (data strings escaped)
    entered: float      # seconds since midnight
    returned: float
    result: str


def _seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse(text: str) -> list[Event]:
    events: list[Event] = []
    pending: dict[int, tuple[str, float]] = {}      # tid -> (the call's first half, its entry time)
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if not match:
            continue
        tid, stamp, rest = int(match["tid"]), _seconds(match["time"]), match["rest"]
        if rest.endswith("<unfinished ...>"):
            pending[tid] = (rest[: -len("<unfinished ...>")].rstrip(), stamp)
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            if tid not in pending:
                continue
            first, stamp = pending.pop(tid)
            rest = first + resumed["args"]
        result = _RESULT.search(rest)
        call = _CALL.match(rest)
        if not result or not call:
            continue                        # signals, exits, attach notices
        duration = float(result["duration"])
        events.append(Event(index, tid, call["name"], int(call["fd"]) if call["fd"] else None,
                            call["path"] or "", rest[: result.start()], stamp, stamp + duration,
                            result["ret"]))
    return events


class Tracer:
    """strace attached to running processes (and, -f, to every thread and child they make)."""

    def __init__(self, output: Path, pids: list[int], string_size: int = 8192):
        self.output = Path(output)
        self.stderr_path = self.output.with_suffix(".stderr")
        strace = shutil.which("strace")
        if strace is None:
            raise PeerError("strace is missing: run scripts/setup --test")
        command = [strace, "-f", "-tt", "-T", "-yy", "-s", str(string_size), "-e", f"trace={TRACED}",
                   "-o", str(self.output)]
        for pid in pids:
            command += ["-p", str(pid)]
        self.pids = pids
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)

    def wait_attached(self, timeout: float = 30.0) -> None:
        """Until strace says it attached to every pid (its stderr: "Process N attached")."""
        deadline = time.monotonic() + timeout
        while True:
            said = self.stderr_path.read_text(errors="replace")
            if all(f"Process {pid} attached" in said for pid in self.pids):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"strace did not attach to {self.pids}:\n{said[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> list[Event]:
        """Detach (SIGINT) and return the events."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return parse(self.output.read_text(errors="replace")) if self.output.exists() else []
