"""Postfix's smtp-source as the load generator, timed; in the foreground or in a thread."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.peers import PeerError, check_loopback
from tests.peers.processes import IN_FLIGHT

SMTP_SOURCE = "/usr/sbin/smtp-source"


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
    """Run smtp-source to completion; wall time from spawn to exit. The child is in IN_FLIGHT
    while it runs, so a Reaper kills it first."""
    args = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, *(extra or []),
            f"{check_loopback(host)}:{port}"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    IN_FLIGHT.add(proc)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        IN_FLIGHT.discard(proc)
    seconds = time.perf_counter() - start
    return SourceResult(messages, sessions, seconds, proc.returncode, output.strip(), args)


class BackgroundSmtpSource:
    """run_smtp_source in a thread: `start()`, then watch `done` (an Event)
    while doing something else; `result` is the SourceResult (or `error` the
    exception) once done. Its `seconds` run from smtp-source's spawn to its
    exit, measured in that thread, so polling does not blur them."""

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
