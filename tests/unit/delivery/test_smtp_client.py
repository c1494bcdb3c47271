"""The SMTP client (delivery/smtp.py and the modules it was split into) against a scripted peer.

Timeouts are set tiny where a test needs one to fire and large elsewhere, so the text of
the deferral says which one fired; nothing here measures how long anything took.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.delivery.destinations import SUSPEND_SECONDS, Destinations
from mailferry.delivery.settings import ClientSettings
from mailferry.delivery.smtp import SmtpClient
from mailferry.maillog import MemoryLog
from mailferry.message import BOUNCED, DEFERRED, SENT
from tests.unit.delivery.scripted_peer import (
    HANGUP, STALL, FakeClock, LoopbackResolver, ScriptedPeer, client_settings, make_job,
)

TINY = 0.2      # a timeout meant to fire
LONG = 300.0    # a timeout that must not fire: longer than run() lets any test take


def run(coroutine):
    """On uvloop, as the daemon runs (its OSError texts are the ones Postfix writes: "Connection refused")."""
    return uvloop.run(asyncio.wait_for(coroutine, 60))


def make_client(destinations=None, **settings) -> SmtpClient:
    values = dict(connect_timeout=LONG, helo_timeout=LONG, reply_timeout=LONG, data_timeout=LONG)
    values.update(settings)
    return SmtpClient(client_settings(**values), LoopbackResolver(), MemoryLog(), destinations=destinations)


def statuses(results) -> list[str]:
    return [result.status for result in results]


# --- timeouts: each smtp_*_timeout ends the session at its own step, and the mail waits

def test_connect_timeout_defers_and_suspends_the_destination():
    async def scenario():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):        # fill the accept queue: the kernel then drops further SYNs
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        try:
            client = make_client(connect_timeout=TINY)
            nexthop = f"[127.0.0.1]:{port}"
            first = await client.deliver(make_job(nexthop))
            second = await client.deliver(make_job(nexthop))
        finally:
            for filler in fillers:
                filler.close()
            listener.close()
        return port, first, second

    port, [first], [second] = run(scenario())
    assert (first.status, first.dsn) == (DEFERRED, "4.4.1")
    assert first.reason == f"connect to mx.test[127.0.0.1]:{port}: Connection timed out"
    assert (second.status, second.dsn) == (DEFERRED, "4.4.1")
    assert second.reason == f"delivery temporarily suspended: connect to mx.test[127.0.0.1]:{port}: " \
                            "Connection timed out"


@pytest.mark.parametrize("stalled, doing", [
    ("GREETING", "receiving the initial server greeting"),
    ("EHLO", "performing the EHLO handshake"),
])
def test_helo_timeout_covers_the_greeting_and_ehlo(stalled, doing):
    async def scenario():
        async with ScriptedPeer({stalled: STALL}) as peer:
            client = make_client(helo_timeout=TINY)
            results = await client.deliver(make_job(peer.nexthop))
            await peer.wait_for(lambda: peer.seen("closed") == 1)
            return results, peer

    [result], peer = run(scenario())
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == f"conversation with mx.test[127.0.0.1] timed out while {doing}"
    assert "MAIL" not in peer.sessions[0].verbs()


def test_a_setup_timeout_does_not_suspend_the_destination():
    async def scenario():
        async with ScriptedPeer({"GREETING": STALL}) as peer:
            client = make_client(helo_timeout=TINY)
            await client.deliver(make_job(peer.nexthop))
            [second] = await client.deliver(make_job(peer.nexthop))
            return second, peer

    second, peer = run(scenario())
    assert second.reason == "conversation with mx.test[127.0.0.1] timed out while receiving the initial " \
                            "server greeting"
    assert peer.seen("connect") == 2


@pytest.mark.parametrize("stalled, doing", [
    ("MAIL", "sending MAIL FROM"),
    ("RCPT", "sending RCPT TO"),
    ("DATA", "sending DATA"),
    (".", "sending end of data -- message may be sent more than once"),
])
def test_the_reply_timeout_covers_mail_rcpt_data_and_end_of_data(stalled, doing):
    async def scenario():
        async with ScriptedPeer({stalled: STALL}) as peer:
            client = make_client(reply_timeout=TINY)
            return await client.deliver(make_job(peer.nexthop, "a@example.test", "b@example.test"))

    results = run(scenario())
    assert statuses(results) == [DEFERRED, DEFERRED]
    assert {result.reason for result in results} == {
        f"conversation with mx.test[127.0.0.1] timed out while {doing}"}
    assert {result.dsn for result in results} == {"4.4.2"}


@pytest.mark.parametrize("stalled, deadline, doing", [
    ("MAIL", "mail_timeout", "sending MAIL FROM"),
    ("RCPT", "rcpt_timeout", "sending RCPT TO"),
    ("DATA", "data_init_timeout", "sending DATA"),
    (".", "data_done_timeout", "sending end of data -- message may be sent more than once"),
])
def test_each_reply_has_its_own_deadline(stalled, deadline, doing):
    """smtp_mail_timeout, smtp_rcpt_timeout, smtp_data_init_timeout, smtp_data_done_timeout: the
    stalled step's own deadline ends the session, the others being long (they were all one, the
    longest, so a short smtp_data_done_timeout never fired)."""
    async def scenario():
        async with ScriptedPeer({stalled: STALL}) as peer:
            deadlines = dict(mail_timeout=LONG, rcpt_timeout=LONG, data_init_timeout=LONG, data_done_timeout=LONG)
            client = make_client(**{**deadlines, deadline: TINY})
            return await client.deliver(make_job(peer.nexthop, "a@example.test"))

    [result] = run(scenario())
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == f"conversation with mx.test[127.0.0.1] timed out while {doing}"


def test_the_per_reply_deadlines_come_from_main_cf():
    config = Config("/nonexistent", parse_main_cf("smtp_mail_timeout = 11s\nsmtp_rcpt_timeout = 12s\n"
                                                  "smtp_data_init_timeout = 13s\nsmtp_data_done_timeout = 14s\n",
                                                  "/nonexistent/main.cf"))
    settings = ClientSettings.from_config(config, "smtp", lmtp=False)
    assert [settings.reply_timeout_at(stage) for stage in ("MAIL FROM", "RCPT TO", "DATA", "end of DATA")] == \
        [11, 12, 13, 14]


def test_a_recipient_refused_before_the_stall_keeps_its_bounce():
    async def scenario():
        replies = {"RCPT": lambda session, command: "550 5.1.1 no such user" if "a@" in command
                   else "250 2.1.5 Ok", ".": STALL}
        async with ScriptedPeer(replies) as peer:
            client = make_client(reply_timeout=TINY)
            return await client.deliver(make_job(peer.nexthop, "a@example.test", "b@example.test"))

    first, second = run(scenario())
    assert (first.status, first.dsn) == (BOUNCED, "5.1.1")
    assert (second.status, second.dsn) == (DEFERRED, "4.4.2")
    assert second.reason.endswith("timed out while sending end of data -- message may be sent more than once")


def test_the_data_timeout_covers_sending_the_content():
    async def scenario():
        # The peer says 354 and then reads nothing: the content backs up until the client gives up.
        async with ScriptedPeer({"EHLO": "250-peer.test\r\n250 PIPELINING", "CONTENT": STALL}) as peer:
            client = make_client(data_timeout=TINY)
            content = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 200_000    # 16 MB
            return await client.deliver(make_job(peer.nexthop, content=content))

    [result] = run(scenario())
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == "conversation with mx.test[127.0.0.1] timed out while sending message content"


# --- connection reuse: smtp_connection_cache_*, smtp_connection_reuse_*

def deliver_in_turn(peer, client, count, **job):
    async def all_jobs():
        results = []
        for _ in range(count):
            results += await client.deliver(make_job(peer.nexthop, **job))
        return results
    return all_jobs()


def test_the_next_message_to_the_same_next_hop_reuses_the_session():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client()
            results = await deliver_in_turn(peer, client, 3)
            client.close()
            await peer.wait_for(lambda: peer.seen("closed") == 1)
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT] * 3
    assert len(peer.sessions) == 1
    assert peer.sessions[0].verbs() == ["EHLO"] + ["MAIL", "RCPT", "DATA", "."] * 3 + ["QUIT"]


def test_the_reuse_count_limit_ends_a_session_after_that_many_transactions():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client(reuse_count_limit=2)
            results = await deliver_in_turn(peer, client, 3)
            client.close()
            await peer.wait_for(lambda: peer.seen("closed") == 2)
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT] * 3
    assert [session.verbs().count("MAIL") for session in peer.sessions] == [2, 1]
    assert peer.sessions[0].verbs()[-1] == "QUIT"
    assert peer.events.index(("QUIT", 1)) < peer.events.index(("connect", 2))


def test_a_session_older_than_the_reuse_time_limit_is_not_reused():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client(reuse_time_limit=0.0)
            results = await deliver_in_turn(peer, client, 2)
            await peer.wait_for(lambda: peer.seen("closed") == 2)
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT, SENT]
    assert [session.verbs() for session in peer.sessions] == [["EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]] * 2


def test_an_idle_session_is_closed_after_the_cache_time_limit():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client(cache_time_limit=TINY)
            await client.deliver(make_job(peer.nexthop))
            await peer.wait_for(lambda: peer.seen("QUIT", 1) == 1)     # the cache let it go
            [second] = await client.deliver(make_job(peer.nexthop))
            client.close()
            return second, peer

    second, peer = run(scenario())
    assert second.status == SENT
    assert len(peer.sessions) == 2
    assert peer.events.index(("QUIT", 1)) < peer.events.index(("connect", 2))


def test_without_the_cache_every_message_has_its_own_session():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client(cache_connections=False)
            results = await deliver_in_turn(peer, client, 2)
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT, SENT]
    assert len(peer.sessions) == 2
    assert peer.sessions[0].verbs()[-1] == "QUIT"


def test_a_cached_session_that_died_before_its_first_reply_gets_one_fresh_try():
    async def scenario():
        def mail(session, command):
            return HANGUP if session.number == 1 and session.verbs().count("MAIL") == 2 else "250 2.1.0 Ok"
        async with ScriptedPeer({"MAIL": mail}) as peer:
            client = make_client()
            results = await deliver_in_turn(peer, client, 2)
            client.close()
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT, SENT]
    assert [session.verbs().count("MAIL") for session in peer.sessions] == [2, 1]


def test_a_fresh_session_that_dies_before_its_first_reply_defers():
    async def scenario():
        async with ScriptedPeer({"MAIL": HANGUP}) as peer:
            client = make_client()
            return await client.deliver(make_job(peer.nexthop)), peer

    [result], peer = run(scenario())
    assert (result.status, result.dsn) == (DEFERRED, "4.4.2")
    assert result.reason == "lost connection with mx.test[127.0.0.1] while sending MAIL FROM"
    assert len(peer.sessions) == 1       # no second try: the session was not a reused one


def test_a_transaction_after_a_refusal_starts_with_rset():
    async def scenario():
        def rcpt(session, command):
            return "550 5.1.1 no such user" if "nobody@" in command else "250 2.1.5 Ok"
        async with ScriptedPeer({"RCPT": rcpt}) as peer:
            client = make_client()
            first = await client.deliver(make_job(peer.nexthop, "nobody@example.test"))
            second = await client.deliver(make_job(peer.nexthop, "a@example.test"))
            client.close()
            return first + second, peer

    results, peer = run(scenario())
    assert statuses(results) == [BOUNCED, SENT]
    assert len(peer.sessions) == 1
    verbs = peer.sessions[0].verbs()
    assert verbs[verbs.index("RSET") + 1] == "MAIL"
    assert verbs.count("MAIL") == 2


# --- recipients: at most <transport>_destination_recipient_limit per transaction

def test_recipients_are_split_into_transactions_by_the_recipient_limit():
    addresses = [f"r{index}@example.test" for index in range(5)]

    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client(recipient_limit=2)
            results = await client.deliver(make_job(peer.nexthop, *addresses))
            client.close()
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT] * 5
    commands = peer.sessions[0].commands
    transactions, current = [], None
    for command in commands:
        if command.startswith("MAIL"):
            current = []
            transactions.append(current)
        elif command.startswith("RCPT"):
            current.append(command.split("<", 1)[1].split(">", 1)[0])
    assert transactions == [addresses[0:2], addresses[2:4], addresses[4:5]]
    assert len(peer.sessions[0].messages) == 3


def test_each_result_stays_with_its_recipient_across_transactions():
    addresses = [f"r{index}@example.test" for index in range(5)]

    async def scenario():
        def rcpt(session, command):
            return "550 5.1.1 no such user" if "<r2@" in command else "250 2.1.5 Ok"
        async with ScriptedPeer({"RCPT": rcpt}) as peer:
            client = make_client(recipient_limit=2)
            return await client.deliver(make_job(peer.nexthop, *addresses))

    results = run(scenario())
    assert statuses(results) == [SENT, SENT, BOUNCED, SENT, SENT]
    assert "<r2@example.test>" not in results[3].reason


# --- dead destinations: a failed connect holds back the rest of the destination's mail

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_connection_suspends_the_destination_until_the_memory_expires():
    clock = FakeClock()

    async def scenario():
        port = closed_port()
        nexthop = f"[127.0.0.1]:{port}"
        client = make_client(destinations=Destinations(20, clock=clock))
        [refused] = await client.deliver(make_job(nexthop))
        async with ScriptedPeer(port=port) as peer:
            [suspended] = await client.deliver(make_job(nexthop))
            connections_while_suspended = peer.seen("connect")
            clock.now += SUSPEND_SECONDS
            [sent] = await client.deliver(make_job(nexthop))
            client.close()
        return port, refused, suspended, connections_while_suspended, sent

    port, refused, suspended, connections_while_suspended, sent = run(scenario())
    assert (refused.status, refused.dsn) == (DEFERRED, "4.4.1")
    assert refused.reason == f"connect to mx.test[127.0.0.1]:{port}: Connection refused"
    assert (suspended.status, suspended.dsn) == (DEFERRED, "4.4.1")
    assert suspended.reason == f"delivery temporarily suspended: {refused.reason}"
    assert connections_while_suspended == 0
    assert sent.status == SENT


def test_flush_makes_the_client_try_a_suspended_destination_at_once():
    async def scenario():
        port = closed_port()
        nexthop = f"[127.0.0.1]:{port}"
        client = make_client()
        await client.deliver(make_job(nexthop))
        async with ScriptedPeer(port=port) as peer:
            client.forget_dead_destinations()
            [result] = await client.deliver(make_job(nexthop))
            client.close()
        return result

    assert run(scenario()).status == SENT


def test_a_suspended_destination_does_not_hold_back_another():
    async def scenario():
        client = make_client()
        await client.deliver(make_job(f"[127.0.0.1]:{closed_port()}"))
        async with ScriptedPeer() as peer:
            [result] = await client.deliver(make_job(peer.nexthop))
            client.close()
        return result

    assert run(scenario()).status == SENT


@pytest.mark.parametrize("skip_5xx, status, dsn", [(True, DEFERRED, "4.7.1"), (False, BOUNCED, "5.7.1")])
def test_a_refusing_greeting_is_decided_by_skip_5xx_greeting_and_suspends_nothing(skip_5xx, status, dsn):
    async def scenario():
        async with ScriptedPeer({"GREETING": "554 5.7.1 go away"}) as peer:
            client = make_client(skip_5xx_greeting=skip_5xx)
            first = await client.deliver(make_job(peer.nexthop))
            second = await client.deliver(make_job(peer.nexthop))
            return first + second, peer

    (first, second), peer = run(scenario())
    assert (first.status, first.dsn) == (status, dsn)
    assert first.reason == "host mx.test[127.0.0.1] refused to talk to me: 554 5.7.1 go away"
    assert second.reason == first.reason      # not "delivery temporarily suspended"
    assert peer.seen("connect") == 2


# --- destination concurrency: at most <transport>_destination_concurrency_limit sessions per next hop

def test_no_more_sessions_to_one_next_hop_than_the_concurrency_limit():
    async def scenario():
        gates: dict[int, asyncio.Event] = {}

        async def mail(session, command):
            gate = gates.setdefault(session.number, asyncio.Event())
            await gate.wait()
            return "250 2.1.0 Ok"

        async with ScriptedPeer({"MAIL": mail}) as peer:
            client = make_client(concurrency_limit=2, cache_connections=False)
            jobs = [asyncio.ensure_future(client.deliver(make_job(peer.nexthop, f"r{n}@example.test")))
                    for n in range(3)]
            # Two sessions wait in MAIL; the third job must be waiting for a slot, not connecting.
            await peer.wait_for(lambda: peer.seen("MAIL") == 2 and client.destinations.waiting(peer.nexthop) == 1)
            sessions_while_full = len(peer.sessions)
            for number in (1, 2, 3):
                await peer.wait_for(lambda: number in gates)
                gates[number].set()
            results = [result for job in jobs for result in await job]
            return results, peer, sessions_while_full, client

    results, peer, sessions_while_full, client = run(scenario())
    assert statuses(results) == [SENT] * 3
    assert sessions_while_full == 2
    first_done = min(peer.events.index(("answered .", 1)), peer.events.index(("answered .", 2)))
    assert peer.events.index(("connect", 3)) > first_done
    open_transactions, most = 0, 0
    for event, _ in peer.events:
        open_transactions += {"MAIL": 1, "answered .": -1}.get(event, 0)
        most = max(most, open_transactions)
    assert most == 2
    assert client.destinations.tracked() == 0      # no job left: the slots are forgotten


def test_the_concurrency_limit_is_per_next_hop():
    async def scenario():
        release = asyncio.Event()

        async def mail(session, command):
            await release.wait()
            return "250 2.1.0 Ok"

        async with ScriptedPeer({"MAIL": mail}) as one, ScriptedPeer({"MAIL": mail}) as other:
            client = make_client(concurrency_limit=1)
            jobs = [asyncio.ensure_future(client.deliver(make_job(peer.nexthop))) for peer in (one, other)]
            # Both next hops have a session in MAIL at once, though the limit is 1.
            await one.wait_for(lambda: one.seen("MAIL") == 1 and other.seen("MAIL") == 1)
            release.set()
            results = [result for job in jobs for result in await job]
            client.close()
            return results

    assert statuses(run(scenario())) == [SENT, SENT]


# --- smtp_tls_note_starttls_offer: at level none, say which hosts could have done TLS

@pytest.mark.parametrize("note", [True, False])
def test_a_starttls_offer_is_noted_only_when_asked(note):
    ehlo = "250-peer.test\r\n250-PIPELINING\r\n250 STARTTLS"

    async def scenario():
        async with ScriptedPeer({"EHLO": ehlo}) as peer:
            client = make_client(note_starttls_offer=note)
            results = await client.deliver(make_job(peer.nexthop))
            client.close()
            return results, client.log.texts(), peer

    results, lines, peer = run(scenario())
    assert statuses(results) == [SENT]
    assert "STARTTLS" not in peer.sessions[0].verbs()   # level none: offered, not used
    assert ("Host offered STARTTLS: [mx.test]" in lines) is note


# --- addresses that cannot be put on the wire

def test_a_recipient_with_a_line_end_waits_and_the_others_are_delivered():
    addresses = ["r0@example.test", "r1@example.test\r\nRCPT TO:<injected@example.test>", "r2@example.test"]

    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client()
            results = await client.deliver(make_job(peer.nexthop, *addresses))
            client.close()
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [SENT, DEFERRED, SENT]
    assert results[1].dsn == "4.1.3" and "line end or NUL inside an SMTP command" in results[1].reason
    commands = [command for session in peer.sessions for command in session.commands]
    assert not any("injected" in command for command in commands), commands


def test_a_sender_with_a_line_end_is_never_sent():
    async def scenario():
        async with ScriptedPeer() as peer:
            client = make_client()
            results = await client.deliver(make_job(peer.nexthop, "r0@example.test", "r1@example.test",
                                                    sender="s@example.test\nRSET"))
            client.close()
            return results, peer

    results, peer = run(scenario())
    assert statuses(results) == [DEFERRED, DEFERRED] and results[0].dsn == "4.1.7"
    assert not peer.sessions, "no session was even opened"
