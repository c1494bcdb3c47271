"""Many idle sessions against the real daemon: each is served, and they do not starve a new one.

bench/connections measures this at 5,000 idle sessions beside Postfix; this test keeps the
promise in CI at a size any machine's default descriptor limit (1,024) allows on both ends,
and asserts outcomes only, never times.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

IDLE = 500
NEW_TRANSACTIONS = 5
WAIT = 60.0    # generous bound for any one reply on a loaded machine: a hang fails, a slow reply does not


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One whole reply (the last line of a multi-line one)."""
    while True:
        line = await asyncio.wait_for(reader.readline(), WAIT)
        if not line or line[3:4] != b"-":
            return line


async def open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    greeting = await reply(reader)
    writer.write(b"EHLO idle.example\r\n")
    return reader, writer, greeting, await reply(reader)


async def transaction(port: int, n: int) -> list[bytes]:
    """A whole new session while the idle ones are held: every reply, in order."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    replies = [await reply(reader)]
    for command in (b"EHLO active.example", b"MAIL FROM:<sender@example.test>", b"RCPT TO:<user@example.test>",
                    b"DATA"):
        writer.write(command + b"\r\n")
        replies.append(await reply(reader))
    writer.write(f"Subject: while {IDLE} sessions idle, {n}\r\n\r\nhello\r\n.\r\n".encode())
    replies.append(await reply(reader))
    writer.write(b"QUIT\r\n")
    replies.append(await reply(reader))
    writer.close()
    return replies


async def still_served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes, bytes]:
    writer.write(b"NOOP\r\n")
    noop = await reply(reader)
    writer.write(b"QUIT\r\n")
    quit_reply = await reply(reader)
    writer.close()
    return noop, quit_reply


async def scenario(port: int) -> tuple[list, list, list]:
    opened = await asyncio.gather(*(open_idle(port) for _ in range(IDLE)))
    new = [await transaction(port, n) for n in range(NEW_TRANSACTIONS)]
    after = await asyncio.gather(*(still_served(reader, writer) for reader, writer, _, _ in opened))
    return opened, new, after


def test_idle_sessions_are_all_served_and_do_not_starve_a_new_session(daemon_factory):
    # 127.0.0.1 is in mynetworks, so no per-client connection limit applies (as in Postfix, whose
    # smtpd_client_event_limit_exceptions defaults to $mynetworks); stated here all the same.
    daemon = daemon_factory(smtpd_client_connection_count_limit="0").start()
    opened, new, after = asyncio.run(scenario(daemon.port))

    assert [greeting[:4] for _, _, greeting, _ in opened] == [b"220 "] * IDLE
    assert [ehlo[:4] for _, _, _, ehlo in opened] == [b"250 "] * IDLE
    queue_ids = []
    for replies in new:
        assert [line[:3] for line in replies] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], replies
        queue_ids += re.findall(rb"queued as ([0-9A-F]+)", replies[5])
    assert len(queue_ids) == NEW_TRANSACTIONS
    # every idle session was still being served after the new ones: none dropped, none starved
    assert [(noop[:3], quit_reply[:3]) for noop, quit_reply in after] == [(b"250", b"221")] * IDLE
    for queue_id in queue_ids:
        daemon.wait_for_log(f"{queue_id.decode()}: removed")
    # each of them ended with its QUIT, in smtpd's own words (the start-up probe's connection aside)
    log = daemon.wait_for_log(" quit=1 ", count=IDLE + NEW_TRANSACTIONS)
    assert log.count(" ehlo=1 noop=1 quit=1 commands=3") == IDLE
    assert log.count("status=sent") == NEW_TRANSACTIONS
    assert "timeout after" not in log


def test_the_listen_queue_is_sized_as_postfix_sizes_it_not_at_asyncios_100(daemon_factory):
    """Postfix's master listens with a backlog of max(maxproc, default_process_limit); asyncio's
    create_server would listen again with 100, and a burst of clients overflowing it would wait
    for a greeting that never comes (bench/connections found it). `ss` shows a listening
    socket's backlog as its Send-Q; the kernel caps it at net.core.somaxconn."""
    ss = shutil.which("ss")
    assert ss, "ss (Debian's iproute2) is required: run scripts/setup --test"
    daemon = daemon_factory(default_process_limit="2000").start()
    listening = subprocess.run([ss, "-ltnH", f"sport = :{daemon.port}"], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert listening[0] == "LISTEN"
    assert int(listening[2]) == min(2000, somaxconn)
