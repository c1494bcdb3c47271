"""The accept loop of one smtpd listening socket, and what it does at the file-descriptor limit.

Why not loop.create_server: at EMFILE, asyncio's own loop logs a traceback every second for as
long as it lasts, and uvloop's (libuv's) silently accepts and closes the waiting connections.
Postfix logs `warning: accept connection: Too many open files` and carries on.

A session needs more than its socket: committing a message, reopening the log, a DNS query each
take a descriptor for a moment, and in Postfix they are other processes'. So a process stops
accepting while fewer than `reserve(limit)` descriptors of its RLIMIT_NOFILE are free, and the
sessions it has keep what they need (a real EMFILE from accept is handled the same way). The
warning is logged once for the episode; the listener stops watching the socket and looks again
after a pause that doubles up to MAX_PAUSE: the loop never spins, and the clients that wait stay
in the kernel's backlog until enough descriptors are free, when they get their 220. Another smtpd
process with descriptors to spare accepts them meanwhile.

Counting the open descriptors (/proc/self/fd) costs a directory read, so it is done only when an
estimate (the last count plus the connections accepted since, closes ignored) reaches the ceiling.

An episode ends once accept has not failed for QUIET seconds; only then can the warning be
logged again.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable

BATCH = 64              # accepts per wake-up: other sessions get the loop between batches
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
                 tls_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None):
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.warn = warn       # a warning for the mail log, as the service logs it now
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._pause = FIRST_PAUSE
        self._last_failure = -QUIET
        self._budget = descriptor_budget()

    def start(self) -> None:
        if not self._closed and not self._watching:
            if self._budget.near_the_limit():
                self._back_off(self._budget.describe())
                return
            self._loop.add_reader(self.sock.fileno(), self._accept_waiting)
            self._watching = True

    def close(self) -> None:
        """Stop accepting (the socket itself stays open: the master owns it)."""
        self._closed = True
        self._stop_watching()
        if self._retry is not None:
            self._retry.cancel()

    def _stop_watching(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False

    def _accept_waiting(self) -> None:
        for _ in range(BATCH):
            if self._budget.near_the_limit():
                self._back_off(self._budget.describe())
                return
            try:
                connection, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                 # the client gave up while it waited: next one
            except OSError as problem:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource, not the client's doing;
                # anything else would fail again at once: wait either way, never spin.
                self._back_off(problem.strerror)
                return
            self._pause = FIRST_PAUSE
            self._budget.took_one()
            self._serve(connection)

    def _back_off(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_failure >= QUIET:
            self.warn(f"accept connection: {reason}")
        self._last_failure = now
        self._stop_watching()
        self._retry = self._loop.call_later(self._pause, self.start)
        self._pause = min(self._pause * 2, MAX_PAUSE)

    def _serve(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_context is None:
            opening = self._loop.connect_accepted_socket(self.protocol_factory, connection)
        else:
            # smtpd_tls_wrappermode: the loop does the handshake before the session hears of it.
            opening = self._loop.connect_accepted_socket(self.protocol_factory, connection, ssl=self.tls_context,
                                                         ssl_handshake_timeout=self.handshake_timeout)
        self._loop.create_task(opening).add_done_callback(lambda task: _opened(task, connection))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _opened(task: asyncio.Task, connection: socket.socket) -> None:
    """A connection that could not become a session (a failed TLS handshake, no descriptor
    left for the TLS layer) is closed; the client simply sees the connection end."""
    if task.cancelled() or task.exception() is not None:
        connection.close()
