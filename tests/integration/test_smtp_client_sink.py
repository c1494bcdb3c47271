"""The SMTP client (delivery/smtp.py) against a real Postfix smtp-sink that stalls.

smtp-sink delays chosen replies (`-W command:seconds`), the first read after DATA (`-H`),
or stops altogether (SIGSTOP). The client's timeout for that step is set tiny and the
others longer than the test may run, so the deferral's text names the timeout that fired.
No assertion measures time.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import uvloop

from mailferry.delivery.smtp import SmtpClient
from mailferry.maillog import MemoryLog
from mailferry.message import DEFERRED, SENT
from tests.unit.delivery.scripted_peer import LoopbackResolver, client_settings, make_job

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

TINY = 0.3
LONG = 300.0
STALL = "30"     # seconds smtp-sink waits: far beyond TINY (the fixture stops the sink at the end)


def run(coroutine):
    return uvloop.run(asyncio.wait_for(coroutine, 60))


def make_client(**settings) -> SmtpClient:
    values = dict(connect_timeout=LONG, helo_timeout=LONG, reply_timeout=LONG, data_timeout=LONG,
                  helo_name="client.test")
    values.update(settings)
    return SmtpClient(client_settings(**values), LoopbackResolver(), MemoryLog())


async def deliver(client: SmtpClient, sink, addresses=(), **job):
    results = await client.deliver(make_job(sink.nexthop, *addresses, **job))
    client.close()
    return results


@pytest.mark.parametrize("command, doing", [
    ("mail", "sending MAIL FROM"),
    ("rcpt", "sending RCPT TO"),
    (".", "sending end of data -- message may be sent more than once"),
])
def test_a_reply_that_does_not_come_within_the_reply_timeout_defers(smtp_sink_factory, command, doing):
    # -p: smtp-sink answers pipelined commands out of order while it delays one; without
    # PIPELINING the client waits for each reply, as it must from a server that does not offer it.
    sink = smtp_sink_factory(extra_args=("-p", "-W", f"{command}:{STALL}"))
    [result] = run(deliver(make_client(reply_timeout=TINY), sink))
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == f"conversation with mx.test[127.0.0.1] timed out while {doing}"


def test_a_slow_ehlo_reply_is_the_helo_timeout(smtp_sink_factory):
    sink = smtp_sink_factory(extra_args=("-W", f"ehlo:{STALL}"))
    [result] = run(deliver(make_client(helo_timeout=TINY), sink))
    assert result.reason == "conversation with mx.test[127.0.0.1] timed out while performing the EHLO handshake"


def test_a_sink_that_stops_reading_the_content_is_the_data_timeout(smtp_sink_factory):
    sink = smtp_sink_factory(extra_args=("-H", STALL))
    content = b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 120_000      # 9.6 MB: more than the socket buffers hold
    [result] = run(deliver(make_client(data_timeout=TINY), sink, content=content))
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == "conversation with mx.test[127.0.0.1] timed out while sending message content"


def test_a_stopped_sink_fails_the_cached_session_then_the_fresh_greeting(smtp_sink):
    """SIGSTOP after one delivery: the cached session gets no reply to MAIL, so the client tries
    one fresh session, which the kernel accepts but nobody greets."""
    async def scenario():
        client = make_client(helo_timeout=TINY, reply_timeout=TINY)
        [first] = await client.deliver(make_job(smtp_sink.nexthop, "a@example.test"))
        cached = client.cache.idle_count()
        os.kill(smtp_sink.process.pid, signal.SIGSTOP)
        try:
            [stalled] = await client.deliver(make_job(smtp_sink.nexthop, "b@example.test"))
        finally:
            os.kill(smtp_sink.process.pid, signal.SIGCONT)
        [after] = await client.deliver(make_job(smtp_sink.nexthop, "c@example.test"))
        client.close()
        return first, cached, stalled, after

    first, cached, stalled, after = run(scenario())
    assert (first.status, cached) == (SENT, 1)
    assert (stalled.status, stalled.dsn) == (DEFERRED, "4.4.2")
    # Not "timed out while sending MAIL FROM": that was the cached session, and it earned one fresh try.
    assert stalled.reason == "conversation with mx.test[127.0.0.1] timed out while receiving the initial " \
                             "server greeting"
    assert after.status == SENT
    delivered = [message.recipients for message in smtp_sink.wait_for_messages(2)]
    assert ["a@example.test"] in delivered and ["c@example.test"] in delivered


def test_recipients_are_split_by_the_recipient_limit(smtp_sink):
    addresses = [f"r{index}@example.test" for index in range(5)]
    results = run(deliver(make_client(recipient_limit=2), smtp_sink, addresses=addresses))
    assert [result.status for result in results] == [SENT] * 5
    messages = smtp_sink.wait_for_messages(3)
    # (dump files of one instant have no order: the unit tests check the order of transactions)
    assert sorted(message.recipients for message in messages) == [addresses[0:2], addresses[2:4], addresses[4:5]]
