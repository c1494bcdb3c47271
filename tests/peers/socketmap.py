"""A small socketmap server (socketmap_table(5)) for the tests, on loopback TCP or a UNIX socket.

It speaks the protocol as Mailu's podop does: each request is the netstring "NAME KEY", each
reply a netstring "OK value", "NOTFOUND ", "TEMP reason", "TIMEOUT reason" or "PERM reason", and
a connection carries any number of requests. It answers from `maps` ({name: {key: value}}), and
some keys make it misbehave on purpose: "temp@..." (TEMP), "perm@..." (PERM), "timeout@..."
(TIMEOUT), "close@..." (closes the connection without replying). `requests` records what it was
asked, `connections` how many connections it accepted.

It runs its own event loop in a thread, so the test's process can stay synchronous, and the real
daemon or Postfix's postmap can ask it like any server.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tests.peers import free_port


class SocketmapServer:
    def __init__(self, maps: dict[str, dict[str, str]], unix_path: Path | None = None):
        self.maps = maps
        self.unix_path = unix_path
        self.port = 0 if unix_path else free_port()
        self.requests: list[tuple[str, str]] = []
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        """As a socketmap table names it: inet:127.0.0.1:PORT or unix:PATH."""
        return f"unix:{self.unix_path}" if self.unix_path else f"inet:127.0.0.1:{self.port}"

    def start(self) -> SocketmapServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._server = self._loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start(), which raises it
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="socketmap-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("socketmap server did not start in 10 s")
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> asyncio.AbstractServer:
        if self.unix_path:
            server = await asyncio.start_unix_server(self._serve, str(self.unix_path))
            self.unix_path.chmod(0o666)  # the daemon asks it after giving up root
            return server
        return await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    length = int((await reader.readuntil(b":"))[:-1])
                    request = (await reader.readexactly(length + 1))[:-1].decode()
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                name, _, key = request.partition(" ")
                self.requests.append((name, key))
                if key.startswith("close@"):
                    return
                reply = self._reply(name, key).encode()
                writer.write(b"%d:%s," % (len(reply), reply))
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def _reply(self, name: str, key: str) -> str:
        for prefix, status in (("temp@", "TEMP"), ("perm@", "PERM"), ("timeout@", "TIMEOUT")):
            if key.startswith(prefix):
                return f"{status} the test server says {status.lower()}"
        if name not in self.maps:
            return f"PERM no such map: {name}"
        value = self.maps[name].get(key)
        return "NOTFOUND " if value is None else f"OK {value}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None
        if self.unix_path:
            self.unix_path.unlink(missing_ok=True)
