"""Idle SMTP/LMTP sessions kept for the next message to the same next hop.

Postfix's smtp(8) keeps a session open after a delivery
(smtp_connection_cache_on_demand) for at most
smtp_connection_cache_time_limit while idle, and stops reusing it after
smtp_connection_reuse_count_limit transactions (0: no limit) or once it is
older than smtp_connection_reuse_time_limit. A session is cached under its
next hop, and also under the sender when the password depends on it
(smtp_sender_dependent_authentication), so one login never carries
another sender's mail.
"""

from __future__ import annotations

import asyncio
import time

from mailferry.delivery.connection import Connection
from mailferry.delivery.settings import ClientSettings
from mailferry.protocol import smtp_client as proto

SessionKey = tuple[str, ...]


def session_key(settings: ClientSettings, nexthop: str, sender: str) -> SessionKey:
    if settings.sasl_enable and settings.sender_dependent_authentication:
        return (nexthop, sender)
    return (nexthop,)


class SessionCache:
    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self._idle: dict[SessionKey, list[tuple[Connection, asyncio.TimerHandle]]] = {}

    def put(self, key: SessionKey, connection: Connection) -> None:
        """After a transaction: keep the session for the next one, or say QUIT when it has served."""
        settings = self.settings
        too_old = time.monotonic() - connection.created > settings.reuse_time_limit
        too_used = settings.reuse_count_limit and connection.uses >= settings.reuse_count_limit
        if connection.closed or not settings.cache_connections or too_old or too_used:
            connection.close(proto.QUIT)
            return
        timer = asyncio.get_running_loop().call_later(settings.cache_time_limit, self._expire, key, connection)
        self._idle.setdefault(key, []).append((connection, timer))

    def take(self, key: SessionKey) -> Connection | None:
        """The most recently used idle session that the server has not closed, or None."""
        idle = self._idle.get(key)
        found = None
        while idle and found is None:
            connection, timer = idle.pop()
            timer.cancel()
            if not connection.closed and not connection.reader.at_eof():
                found = connection
            else:
                connection.close()
        if idle is not None and not idle:
            del self._idle[key]
        return found

    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _expire(self, key: SessionKey, connection: Connection) -> None:
        idle = self._idle.get(key, [])
        for index, (cached, _) in enumerate(idle):
            if cached is connection:
                del idle[index]
                break
        if not idle:
            self._idle.pop(key, None)
        connection.close(proto.QUIT)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection, timer in idle:
                timer.cancel()
                connection.close(proto.QUIT)
        self._idle.clear()
