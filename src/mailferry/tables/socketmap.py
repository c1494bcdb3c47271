"""`socketmap:inet:HOST:PORT:NAME` and `socketmap:unix:PATH:NAME`, as socketmap_table(5) describes them.

Sendmail's socketmap protocol, as Postfix's dict_sockmap speaks it (and
servers such as Mailu's podop answer it): the request is the netstring
"NAME KEY", the reply a netstring "OK value", "NOTFOUND ", "TEMP reason",
"TIMEOUT reason" or "PERM reason".

- Every failure (server down, a broken or slow connection, TEMP, TIMEOUT,
  PERM, a reply we cannot read) is a temporary failure: callers answer 4xx
  or defer, so nothing is lost. Postfix treats PERM as a configuration error,
  which also ends in a 4xx.
- One connection per server, shared by all tables that name it, reused and
  closed after Postfix's limits: 10 s idle, 100 s old. A connection the
  server closed is retried once, as Postfix does, so a restarted server
  costs no failure. Lookups on one connection take turns.
- A key longer than 10,000 bytes is "not found", as in Postfix. Keys are
  sent as they are (socketmap is a pattern table: no folding, whole keys).
"""

from __future__ import annotations

import asyncio
import time

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found, tempfail

# Postfix's defaults (dict_sockmap.c).
TIMEOUT = 100.0
MAX_REPLY = 100_000
MAX_QUERY = 10_000
MAX_IDLE = 10.0
MAX_TTL = 100.0

_ERROR_CLASSES = {b"TEMP": "temporary", b"TIMEOUT": "timeout", b"PERM": "permanent"}


class SocketmapError(Exception):
    """The conversation with the server broke; `retryable` when it closed the connection first."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def parse_endpoint(endpoint: str) -> tuple[str, str | tuple[str, int]]:
    """("unix", path) or ("inet", (host, port)); TableError in Postfix's words otherwise."""
    transport, colon, address = endpoint.partition(":")
    if not colon or transport not in ("inet", "unix"):
        raise TableError(f'need service transport:endpoint instead of "{endpoint}"; '
                         "use socketmap:inet:HOST:PORT:NAME or socketmap:unix:PATH:NAME")
    if transport == "unix":
        if not address:
            raise TableError(f'socketmap: empty socket path in "{endpoint}"')
        return "unix", address
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TableError(f'socketmap: bad inet endpoint "{endpoint}"; need inet:HOST:PORT')
    return "inet", (host, int(port))


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


async def read_netstring(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One netstring's payload. Raises SocketmapError (retryable if the peer had closed)."""
    try:
        head = await reader.readuntil(b":")
    except asyncio.IncompleteReadError as exc:
        raise SocketmapError("unexpected disconnect", retryable=not exc.partial) from None
    except asyncio.LimitOverrunError:
        raise SocketmapError("netstring format error") from None
    length_text = head[:-1]
    if not length_text.isdigit() or len(length_text) > 10:
        raise SocketmapError("netstring format error")
    length = int(length_text)
    if length > limit:
        raise SocketmapError("netstring size exceeds limit")
    try:
        body = await reader.readexactly(length + 1)
    except asyncio.IncompleteReadError:
        raise SocketmapError("unexpected disconnect") from None
    if body[-1:] != b",":
        raise SocketmapError("netstring format error")
    return body[:-1]


class _Connection:
    """One server's connection, shared by the tables that name it, used by one lookup at a time."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.transport, self.address = parse_endpoint(endpoint)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._opened = self._used = 0.0
        self.users = 0

    async def ask(self, request: bytes, timeout: float) -> bytes:
        self._bind_to_running_loop()
        assert self._lock is not None
        async with self._lock:
            return await asyncio.wait_for(self._ask_retrying(request), timeout)

    def _bind_to_running_loop(self) -> None:
        # A connection belongs to the loop that made it (postmap and tests run several loops).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._streams = None
            self._loop, self._lock = loop, asyncio.Lock()

    async def _ask_retrying(self, request: bytes) -> bytes:
        for attempt in (1, 2):
            reused = self._streams is not None and self._fresh()
            if not reused:
                self.close()
                await self._connect()
            try:
                return await self._exchange(request)
            except SocketmapError as problem:
                self.close()
                if not (reused and problem.retryable and attempt == 1):
                    raise
            except OSError as problem:
                self.close()
                if not reused or attempt == 2:
                    raise SocketmapError(problem.strerror or str(problem)) from None
        raise AssertionError("unreachable")

    def _fresh(self) -> bool:
        now = time.monotonic()
        return now - self._used < MAX_IDLE and now - self._opened < MAX_TTL

    async def _connect(self) -> None:
        try:
            if self.transport == "unix":
                self._streams = await asyncio.open_unix_connection(self.address, limit=MAX_REPLY + 64)
            else:
                host, port = self.address
                self._streams = await asyncio.open_connection(host, port, limit=MAX_REPLY + 64)
        except OSError as problem:
            raise SocketmapError(f"connect to {self.endpoint}: {problem.strerror or problem}") from None
        self._opened = time.monotonic()

    async def _exchange(self, request: bytes) -> bytes:
        assert self._streams is not None
        reader, writer = self._streams
        writer.write(netstring(request))
        await writer.drain()
        reply = await read_netstring(reader, MAX_REPLY)
        self._used = time.monotonic()
        return reply

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


_connections: dict[str, _Connection] = {}


class SocketmapTable(Table):
    type_name = "socketmap"
    is_pattern = True  # Postfix: "don't look up parent domains or network superblocks"
    folds_keys = False
    timeout = TIMEOUT

    def __init__(self, name: str):
        super().__init__(name)
        endpoint, colon, self.map_name = name.rpartition(":")
        if not colon or not endpoint:
            raise TableError(f"socketmap:{name}: socketmap requires server:socketmap argument "
                             "(socketmap:inet:HOST:PORT:NAME or socketmap:unix:PATH:NAME)")
        connection = _connections.get(endpoint) or _Connection(endpoint)
        _connections[endpoint] = connection
        connection.users += 1
        self._connection: _Connection | None = connection

    async def lookup(self, key: str) -> LookupResult:
        query = key.encode("utf-8", "surrogateescape")
        if len(query) > MAX_QUERY:
            return MISSING
        if self._connection is None:
            return tempfail(f"table {self.spec} is closed")
        try:
            reply = await self._connection.ask(self.map_name.encode() + b" " + query, self.timeout)
        except SocketmapError as problem:
            return tempfail(f"table {self.spec} lookup error: {problem}")
        except asyncio.TimeoutError:
            return tempfail(f"table {self.spec} lookup error: timeout")
        status, _, payload = reply.partition(b" ")
        if status == b"OK":
            return found(payload.decode("utf-8", "surrogateescape"))
        if status == b"NOTFOUND":
            return MISSING
        reason = payload.strip().decode("utf-8", "replace")
        error_class = _ERROR_CLASSES.get(status, "unknown")
        return tempfail(f"{self.spec} socketmap server {error_class} error" + (f": {reason}" if reason else ""))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.users -= 1
        if connection.users <= 0:
            connection.close()
            _connections.pop(connection.endpoint, None)
