"""Accepting on one smtpd listening socket, and holding back near the file-descriptor limit.

A session needs more than its socket: committing a message, reopening the log, a DNS query each
take a descriptor for a moment, and in Postfix they are other processes'. So a process stops
accepting while fewer than `reserve(limit)` descriptors of its RLIMIT_NOFILE are free, and the
sessions it has keep what they need. Then:
- the warning `accept connection: Too many open files (...)` is logged once for the episode
  (an episode ends once accepting has not been held back for QUIET seconds);
- the listening server is closed in this process (it accepts on a duplicate of the master's
  socket, so the socket itself stays open) and is opened again after a pause that doubles up to
  MAX_PAUSE, if enough descriptors are free by then: the loop never spins;
- the clients that wait stay in the kernel's backlog until then, when they get their 220; another
  smtpd process with descriptors to spare accepts them meanwhile.

The accepting itself is the event loop's (loop.create_server): uvloop accepts in C, and a
connection costs no task. Were accept() itself to fail with EMFILE (something else took the
reserve), uvloop (libuv) closes the waiting connections at once rather than spin; asyncio's own
loop logs an error and retries after a second.

Counting the open descriptors (/proc/self/fd) costs a directory read, so it is done only when an
estimate (the last count plus the connections accepted since, closes ignored) reaches the ceiling.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable

FIRST_PAUSE = 0.05      # seconds
MAX_PAUSE = 1.0
QUIET = 60.0


def reserve(limit: int) -> int:
    """Descriptors kept free for what the sessions already open need."""
    return min(64, max(16, limit // 32))


class DescriptorBudget:
    """This process's file descriptors against its RLIMIT_NOFILE, shared by all its listeners
    (every service's connections take from the same limit)."""

    def __init__(self):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        self.ceiling = self.limit - reserve(self.limit)
        self.estimate = open_descriptors()
        self.pid = os.getpid()

    def took_one(self) -> None:
        self.estimate += 1

    def near_the_limit(self) -> bool:
        if self.estimate < self.ceiling:
            return False
        self.estimate = open_descriptors()
        return self.estimate >= self.ceiling

    def describe(self) -> str:
        return (f"Too many open files ({self.estimate} of RLIMIT_NOFILE {self.limit} in use, the last "
                f"{self.limit - self.ceiling} kept for the sessions open); new connections wait")


_budget: DescriptorBudget | None = None


def descriptor_budget() -> DescriptorBudget:
    """The budget of this process (a forked worker makes its own)."""
    global _budget
    if _budget is None or _budget.pid != os.getpid():
        _budget = DescriptorBudget()
    return _budget


class Listener:
    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 warn: Callable[[str], None],
                 tls_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None,
                 backlog: int = 100):
        self.sock = sock                    # the master's listening socket, shared by every process
        self.protocol_factory = protocol_factory
        self.warn = warn                    # a warning for the mail log, as the service logs it now
        self.tls_context = tls_context      # smtpd_tls_wrappermode: the loop does the handshake
        self.handshake_timeout = handshake_timeout
        self.backlog = backlog              # create_server listens again: with this backlog
        self._loop = asyncio.get_running_loop()
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        self._holding = False
        self._retry: asyncio.TimerHandle | None = None
        self._pause = FIRST_PAUSE
        self._last_hold = -QUIET
        self._budget = descriptor_budget()

    async def start(self) -> None:
        if self._closed or self._server is not None or self._holding:
            return
        if self._budget.near_the_limit():
            self._hold_back()
            return
        try:
            own = socket.socket(fileno=os.dup(self.sock.fileno()))
        except OSError:
            self._hold_back()           # not even a descriptor for that
            return
        self._server = await self._loop.create_server(self._session, sock=own, ssl=self.tls_context,
                                                      backlog=self.backlog,
                                                      ssl_handshake_timeout=self.handshake_timeout)

    def close(self) -> None:
        """Stop accepting (the master's socket stays open)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._stop_server()

    def _session(self) -> asyncio.Protocol:
        """A connection was accepted: it is served; past the ceiling, no more for now."""
        self._budget.took_one()
        if not self._holding and self._budget.near_the_limit():
            self._holding = True
            self._loop.call_soon(self._hold_back)   # not from inside the server's own callback
        return self.protocol_factory()

    def _hold_back(self) -> None:
        self._holding = True
        now = time.monotonic()
        if now - self._last_hold >= QUIET:
            self.warn(f"accept connection: {self._budget.describe()}")
        self._last_hold = now
        self._stop_server()
        if not self._closed:
            self._retry = self._loop.call_later(self._pause, self._try_again)
            self._pause = min(self._pause * 2, MAX_PAUSE)

    def _try_again(self) -> None:
        self._retry = None
        self._holding = False
        if self._closed:
            return
        if self._budget.near_the_limit():
            self._hold_back()
            return
        self._pause = FIRST_PAUSE
        self._loop.create_task(self.start())

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))
