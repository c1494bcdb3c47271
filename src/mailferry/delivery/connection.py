"""One client connection to an SMTP or LMTP server: bytes out, replies in, with timeouts.

The protocol itself is in protocol/smtp_client.py; this is only the
socket, the reply queue and the facts about the peer that the log needs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from mailferry.protocol.smtp_client import ClientProtocolError, ReplyReader, ServerReply

READ_SIZE = 65536
DRAIN_ABOVE = 256 * 1024   # bytes queued before the writer waits for the socket


class ConnectionLost(Exception):
    """The peer closed the connection or stopped answering. str() is Postfix's wording."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str, address: str, port: int | None):
        self.reader = reader
        self.writer = writer
        self.host = host
        self.address = address
        self.port = port
        self._replies: deque[ServerReply] = deque()
        self._parser = ReplyReader()
        self.extensions = None
        self.tls = ""                 # Verified, Trusted, Untrusted or "" (plaintext)
        self.authenticated = False
        self.needs_reset = False
        self.created = time.monotonic()
        self.uses = 0
        self.closed = False
        self._broken = ""

    @property
    def relay(self) -> str:
        """`host[address]:port` as Postfix's relay= field has it (no port for a UNIX socket)."""
        suffix = f":{self.port}" if self.port is not None else ""
        return f"{self.host}[{self.address}]{suffix}"

    @property
    def peer(self) -> str:
        return f"{self.host}[{self.address}]"

    def send(self, data: bytes) -> None:
        if data:
            self.writer.write(data)

    async def flush(self, timeout: float | None) -> None:
        if self.writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
            await self._within(self.writer.drain(), timeout, "sending message content")

    async def reply(self, timeout: float | None, doing: str) -> ServerReply:
        """The next reply; ConnectionLost when the peer hangs up, times out or talks nonsense."""
        while not self._replies:
            if self._broken:
                raise ConnectionLost(self._broken)
            data = await self._within(self.reader.read(READ_SIZE), timeout, doing)
            if not data:
                self.closed = True
                raise ConnectionLost(f"lost connection with {self.peer} while {doing}")
            try:
                self._replies.extend(self._parser.feed(data))
            except ClientProtocolError as error:
                # The replies before the garbage still count (a 250 to end of DATA must
                # not be lost, or the message would be sent twice); then the session ends.
                self.closed = True
                self._broken = f"{error} from {self.peer} while {doing}"
                self._replies.extend(error.replies)
                if not self._replies:
                    raise ConnectionLost(self._broken) from None
        return self._replies.popleft()

    async def command(self, data: bytes, timeout: float | None, doing: str) -> ServerReply:
        self.send(data)
        return await self.reply(timeout, doing)

    async def _within(self, awaitable, timeout: float | None, doing: str):
        try:
            async with asyncio.timeout(timeout):
                return await awaitable
        except TimeoutError:
            self.closed = True
            raise ConnectionLost(f"conversation with {self.peer} timed out while {doing}") from None
        except (ConnectionError, OSError) as error:
            self.closed = True
            reason = error.strerror or str(error) or type(error).__name__
            raise ConnectionLost(f"lost connection with {self.peer} while {doing}: {reason}") from None

    def close(self, quit_command: bytes | None = None) -> None:
        """Say QUIT without waiting for its answer (smtp_skip_quit_response), and hang up."""
        if not self.closed and quit_command is not None:
            try:
                self.writer.write(quit_command)
            except (ConnectionError, OSError, RuntimeError):
                pass
        self.closed = True
        self.writer.close()
