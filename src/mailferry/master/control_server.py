"""The daemon's side of the control socket (see mailferry.control).

A handler returns None (the answer is `ok`) or the bytes to answer with; it
may be a coroutine function, for answers that read the queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from mailferry.control import COMMANDS, control_socket_path


class ControlServer:
    def __init__(self, queue_directory: str, handlers: dict[str, Callable], log):
        self.path = control_socket_path(queue_directory)
        self.handlers = handlers
        self.log = log
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # left by a daemon that died; our pid file says we are the only one
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        # Any local user may wake pickup (sendmail runs as them), as Postfix's public/pickup allows.
        os.chmod(self.path, 0o666)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode("ascii", "replace").strip()
            if line in COMMANDS and line in self.handlers:
                answer = self.handlers[line]()
                if asyncio.iscoroutine(answer):
                    answer = await answer
                writer.write(b"ok\n" if answer is None else answer)
            else:
                writer.write(b"error: unknown command\n")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            try:
                os.unlink(self.path)
            except OSError:
                pass
