"""The accept loop at the descriptor limit: hold back, warn once, resume."""

import asyncio
import socket

from mailferry.smtpd import listener as listener_module
from mailferry.smtpd.listener import Listener, reserve


def test_the_reserve_grows_with_the_limit_within_bounds():
    assert [reserve(limit) for limit in (64, 1024, 4096, 1 << 20)] == [16, 32, 64, 64]


class Greeter(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"220 hi\r\n")


def test_near_the_limit_it_holds_back_warns_once_and_resumes(monkeypatch):
    in_use = {"count": 10 ** 6}      # "every descriptor taken" until the test frees some
    monkeypatch.setattr(listener_module, "open_descriptors", lambda: in_use["count"])
    monkeypatch.setattr(listener_module, "FIRST_PAUSE", 0.01)
    monkeypatch.setattr(listener_module, "MAX_PAUSE", 0.02)
    monkeypatch.setattr(listener_module, "_budget", None)
    warnings = []

    async def scenario():
        server = socket.create_server(("127.0.0.1", 0))
        server.setblocking(False)
        accepting = Listener(server, Greeter, warnings.append)
        accepting._budget.estimate = accepting._budget.ceiling     # as if accepts had just reached it
        await accepting.start()
        reader, writer = await asyncio.open_connection(*server.getsockname())
        for _ in range(20):                  # many retries while held back: still one warning
            await asyncio.sleep(0.02)
        assert not reader.at_eof() and reader._buffer == b""      # waiting in the backlog, not refused
        assert len(warnings) == 1 and warnings[0].startswith("accept connection: Too many open files (")
        in_use["count"] = 0
        assert await asyncio.wait_for(reader.readline(), 10) == b"220 hi\r\n"
        assert len(warnings) == 1
        writer.close()
        accepting.close()
        server.close()

    asyncio.run(scenario())
