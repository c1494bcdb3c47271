"""The scrape endpoint: `GET /metrics` on mailferry_metrics_listen, served by the master.

The address is checked and bound before root is given up (a taken port stops
the start with a message, as a taken SMTP port does), and served on the
master's event loop: no thread of its own. Each scrape adds up the processes'
files (metrics/__init__.py) in a worker thread, and asks the queue for its
counts by state (`queue_counts`, one grouped COUNT, not a read of the
messages).

Loopback only, unless mailferry_metrics_allow_remote = yes: the figures tell
who sends how much, and the endpoint has no authentication (put a TLS proxy
with authentication in front of it for a remote Prometheus).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from mailferry.metrics.address import MetricsAddressError, parse_listen

__all__ = ["Endpoint", "MetricsAddressError", "QueueCollector", "bind", "parse_listen"]

QUEUE_STATES = ("incoming", "active", "deferred", "hold")
REQUEST_TIMEOUT = 10.0
REQUEST_LIMIT = 8192


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(16)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener


class QueueCollector:
    """mailferry_queue_messages{queue}: asked at each scrape, in the scrape's thread."""

    def __init__(self, queue_counts: Callable[[], dict[str, int]]):
        self.queue_counts = queue_counts

    def collect(self):
        counts = self.queue_counts()
        family = GaugeMetricFamily("mailferry_queue_messages", "Messages in the queue, by queue (state)",
                                   labels=["queue"])
        for state in (*QUEUE_STATES, *sorted(set(counts) - set(QUEUE_STATES))):
            family.add_metric([state], counts.get(state, 0))
        yield family


class Endpoint:
    def __init__(self, listener: socket.socket, directory: str, queue_counts: Callable[[], dict[str, int]]):
        self.listener = listener
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=directory)
        self.registry.register(QueueCollector(queue_counts))
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, sock=self.listener, limit=REQUEST_LIMIT)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = await self._answer(head)
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, content_type.encode(), len(body)))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[bytes, bytes, str]:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", b"GET /metrics\n", "text/plain; charset=utf-8"
        if path not in (b"/metrics", b"/"):
            return b"404 Not Found", b"GET /metrics\n", "text/plain; charset=utf-8"
        body = await asyncio.to_thread(self.render)
        return b"200 OK", body, CONTENT_TYPE_PLAIN_0_0_4
