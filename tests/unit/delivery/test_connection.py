"""delivery/connection.py: one client connection, its timeouts and Postfix's words when it breaks."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from mailferry.delivery.connection import Connection, ConnectionLost

TINY = 0.2
LONG = 300.0


def run(coroutine):
    return uvloop.run(asyncio.wait_for(coroutine, 60))


class RawPeer:
    """A server that sends `script` on connect, records what it reads, and can be told to stop reading."""

    def __init__(self, script: bytes = b"", read: bool = True, hang_up: bool = False):
        self.script = script
        self.read = read
        self.hang_up = hang_up
        self.received = bytearray()
        self.hung_up = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        for writer in self.writers:
            writer.close()
        self.server.close()

    async def _session(self, reader, writer):
        self.writers.append(writer)
        writer.write(self.script)
        if self.hang_up:
            writer.close()
            return
        if not self.read:
            return
        while data := await reader.read(65536):
            self.received += data
        self.hung_up.set()

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return Connection(reader, writer, "mx.test", "127.0.0.1", self.port)


def test_a_reply_split_over_reads_comes_out_whole_and_in_order():
    async def scenario():
        async with RawPeer(b"220 mx.test ESMTP\r\n250-mx.test\r\n250 PIPELINING\r\n") as peer:
            connection = await peer.connect()
            greeting = await connection.reply(LONG, "receiving the initial server greeting")
            ehlo = await connection.reply(LONG, "performing the EHLO handshake")
            connection.close()
            return greeting, ehlo

    greeting, ehlo = run(scenario())
    assert (greeting.code, greeting.lines) == (220, ("mx.test ESMTP",))
    assert (ehlo.code, ehlo.lines) == (250, ("mx.test", "PIPELINING"))


def test_a_silent_peer_times_out_with_postfixs_words():
    async def scenario():
        async with RawPeer() as peer:
            connection = await peer.connect()
            with pytest.raises(ConnectionLost) as lost:
                await connection.reply(TINY, "receiving the initial server greeting")
            return str(lost.value), connection.closed

    text, closed = run(scenario())
    assert text == "conversation with mx.test[127.0.0.1] timed out while receiving the initial server greeting"
    assert closed


def test_a_peer_that_hangs_up_is_a_lost_connection():
    async def scenario():
        async with RawPeer(hang_up=True) as peer:
            connection = await peer.connect()
            with pytest.raises(ConnectionLost) as lost:
                await connection.reply(LONG, "sending RCPT TO")
            return str(lost.value), connection.closed

    text, closed = run(scenario())
    assert text == "lost connection with mx.test[127.0.0.1] while sending RCPT TO"
    assert closed


def test_replies_before_garbage_still_count_then_the_session_ends():
    async def scenario():
        async with RawPeer(b"250 2.0.0 Ok: queued as 1\r\nthis is not a reply\r\n") as peer:
            connection = await peer.connect()
            first = await connection.reply(LONG, "sending end of data")
            with pytest.raises(ConnectionLost) as lost:
                await connection.reply(LONG, "sending QUIT")
            return first, str(lost.value), connection.closed

    first, text, closed = run(scenario())
    assert (first.code, first.enhanced, first.text) == (250, "2.0.0", "Ok: queued as 1")
    assert text.endswith("from mx.test[127.0.0.1] while sending end of data")
    assert closed


def test_flush_waits_for_a_peer_that_does_not_read_until_the_data_timeout():
    async def scenario():
        async with RawPeer(read=False) as peer:
            connection = await peer.connect()
            connection.send(b"x" * (16 << 20))
            with pytest.raises(ConnectionLost) as lost:
                await connection.flush(TINY)
            return str(lost.value)

    assert run(scenario()) == "conversation with mx.test[127.0.0.1] timed out while sending message content"


def test_close_says_quit_once():
    async def scenario():
        async with RawPeer() as peer:
            connection = await peer.connect()
            connection.close(b"QUIT\r\n")
            connection.close(b"QUIT\r\n")
            await asyncio.wait_for(peer.hung_up.wait(), 10)
            return bytes(peer.received)

    assert run(scenario()) == b"QUIT\r\n"


def test_a_connection_that_timed_out_is_closed_without_quit():
    async def scenario():
        async with RawPeer() as peer:
            connection = await peer.connect()
            with pytest.raises(ConnectionLost):
                await connection.reply(TINY, "sending MAIL FROM")
            connection.close(b"QUIT\r\n")
            await asyncio.wait_for(peer.hung_up.wait(), 10)
            return bytes(peer.received)

    assert run(scenario()) == b""


def test_relay_and_peer_are_postfixs_fields():
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        tcp = Connection(reader, None, "mx.test", "192.0.2.1", 25)
        unix = Connection(reader, None, "localhost", "/run/lmtp", None)
    finally:
        loop.close()
    assert (tcp.relay, tcp.peer) == ("mx.test[192.0.2.1]:25", "mx.test[192.0.2.1]")
    assert (unix.relay, unix.peer) == ("localhost[/run/lmtp]", "localhost[/run/lmtp]")
