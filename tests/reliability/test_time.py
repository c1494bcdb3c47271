"""Time, driven by a clock the test controls: retries, the delay warning, the bounce at the end
of the queue lifetime.

The real scheduler (qmgr/scheduler.py) runs in-process with its real collaborators: the SQLite
queue on disk, the group committer, cleanup, the resolver, the real SMTP client, and real
smtp-sink peers on loopback. Only the scheduler's wall clock is the test's (Scheduler(clock=...)):
the test moves it to one second before each retry is due (nothing happens) and then to the due
time (the retry happens), so a schedule of several hours runs in seconds and nothing here sleeps.

The schedule is Postfix's qmgr rule (qmgr_active.c): after a failed attempt a message waits its
own age, but at least minimal_backoff_time and at most maximal_backoff_time. With 300 s and
4000 s, a message that arrived at 0 is tried at 0, 300, 600, 1200, 2400, 4800, 8800, 12800, ...
Once it is older than maximal_queue_lifetime (bounce_queue_lifetime for mail from <>) after an
attempt, the rest bounces (status=expired); never before. delay_warning_time gives one warning.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from mailferry.cleanup.service import CleanupService
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.qmgr.scheduler import Scheduler
from mailferry.queue import GroupCommitter
from mailferry.queue.sqlite import SqliteQueueStore
from tests.peers import free_port, peer_tempdir
from tests.peers.smtp_sink import SmtpSink
from tests.unit.listlog import ListLog

MINIMAL, MAXIMAL = 300.0, 4000.0
DELAY_WARNING = 3600.0
LIFETIME = 20000.0            # maximal_queue_lifetime
BOUNCE_LIFETIME = 10000.0     # bounce_queue_lifetime (mail from <>)
SENDER = "alice@sender.test"


class TestClock:
    """The scheduler's wall clock; only the test moves it."""

    __test__ = False

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def postfix_schedule(until: float) -> list[float]:
    """Attempt times (seconds after arrival) by qmgr's rule: wait the age, clamped."""
    times, t = [0.0], 0.0
    while t < until:
        t += min(max(t, MINIMAL), MAXIMAL)
        times.append(t)
    return times


def content(subject: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: someone\r\nSubject: {subject}\r\nMessage-ID: <{subject}@sender.test>\r\n"
            "\r\nbody\r\n").encode()


@pytest.fixture
def world(monkeypatch):
    monkeypatch.setenv("MAILFERRY_NAMESERVERS", "none")     # nothing here resolves a name
    directory = peer_tempdir("mailferry-time-")
    notices = SmtpSink(directory / "notices").start()          # the sender's mailbox host
    later = SmtpSink(directory / "later", soft_reject=("RCPT",),   # up, but 450 4.3.0 for now
                     soft_reply="450 4.3.0 try again later").start()
    dead_port = free_port()                                    # nothing listens: connection refused
    routes = directory / "transport"
    routes.write_text(f"sender.test smtp:{notices.nexthop}\n"
                      f"dead.test smtp:[127.0.0.1]:{dead_port}\n"
                      f"later.test smtp:{later.nexthop}\n")
    main_cf = (f"myhostname = mx.example.test\nmydomain = example.test\nmyorigin = example.test\n"
               f"mydestination =\ntransport_maps = texthash:{routes}\n"
               f"minimal_backoff_time = {MINIMAL:g}s\nmaximal_backoff_time = {MAXIMAL:g}s\n"
               f"delay_warning_time = {DELAY_WARNING:g}s\nmaximal_queue_lifetime = {LIFETIME:g}s\n"
               f"bounce_queue_lifetime = {BOUNCE_LIFETIME:g}s\nsmtp_connect_timeout = 5s\n")
    config = Config(str(directory / "main.cf"), parse_main_cf(main_cf, str(directory / "main.cf")))
    master = parse_master_cf("smtp unix - - n - - smtp\n", str(directory / "master.cf"))
    store = SqliteQueueStore(directory / "queue.db")
    world = {"directory": directory, "config": config, "master": master, "store": store,
             "notices": notices, "later": later, "sinks": [notices, later]}
    yield world
    for sink in world["sinks"]:
        sink.stop()
    store.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_retries_follow_qmgr_backoff_then_one_delay_warning_then_the_bounce_at_the_lifetime(world):
    store: SqliteQueueStore = world["store"]
    notices: SmtpSink = world["notices"]
    log = ListLog()
    arrival = time.time() + 60            # ahead of the real clock: everything queued is due at arrival
    clock = TestClock(arrival)

    def queue(sender: str, recipient: str, subject: str) -> str:
        [queue_id] = store.insert_many([NewMessage(sender=sender, recipients=[Recipient(recipient)],
                                                   content=content(subject), client=ClientInfo(),
                                                   origin="smtp", arrival_time=arrival)])
        return queue_id

    dead = queue(SENDER, "bob@dead.test", "to-dead")                 # never comes back: bounces
    null_sender = queue("", "dan@dead.test", "from-null")           # mail from <>: bounce_queue_lifetime
    recovering = queue(SENDER, "carol@later.test", "to-later")       # comes back at 1200 s
    recovery_time = 1200.0

    async def scenario():
        committer = GroupCommitter(store)
        cleanup = CleanupService.from_config(world["config"], committer, log, lambda: None)
        scheduler = Scheduler.from_config(world["config"], world["master"], store, committer, cleanup, log,
                                          clock=clock)
        history: dict[str, list[tuple[float, int, float]]] = {dead: [], null_sender: [], recovering: []}
        try:
            for due in postfix_schedule(LIFETIME):
                # One second early: nothing of ours is taken, whatever else runs (notices).
                # (At 0 the messages are new: they were due when queued.)
                clock.now = arrival + due - 1
                before = {queue_id: store.get(queue_id) for queue_id in history}
                if due > 0:
                    await scheduler.run_once()
                for queue_id, message in before.items():
                    after = store.get(queue_id)
                    if message is not None:
                        assert after is not None and after.attempts == message.attempts, \
                            f"{queue_id} was tried before {due - 1:g} s"
                if due == recovery_time:       # the destination is back, fully
                    world["later"].stop()
                    world["later"] = SmtpSink(world["directory"] / "later-up", port=world["later"].port).start()
                    world["sinks"].append(world["later"])
                clock.now = arrival + due
                await scheduler.run_once()
                for queue_id in history:
                    message = store.get(queue_id)
                    history[queue_id].append((due, -1, 0.0) if message is None
                                             else (due, message.attempts, message.next_attempt - arrival))
            # Whatever the last attempts made (notices) is delivered by one more run.
            await scheduler.run_once()
        finally:
            scheduler.close()
            await committer.close()
        return history

    history = asyncio.run(scenario())
    schedule = postfix_schedule(LIFETIME)

    # The message to the dead destination: tried exactly at each scheduled time, each time
    # deferred until age + clamp(age), until the attempt that finds it past the lifetime.
    expected_dead = [(due, n + 1, due + min(max(due, MINIMAL), MAXIMAL)) for n, due in enumerate(schedule)]
    expired_at = next(due for due in schedule if due >= LIFETIME)
    expected_dead = [entry if entry[0] < expired_at else (entry[0], -1, 0.0) for entry in expected_dead]
    assert history[dead] == expected_dead
    assert store.get(dead) is None

    # Mail from <> expires at bounce_queue_lifetime, and has nobody to be returned to.
    null_expiry = next(due for due in schedule if due >= BOUNCE_LIFETIME)
    assert [due for due, attempts, _ in history[null_sender] if attempts == -1][0] == null_expiry
    assert all(attempts > 0 for due, attempts, _ in history[null_sender] if due < null_expiry)

    # The destination that came back: delivered at the first retry after it did, once.
    assert [attempts for due, attempts, _ in history[recovering] if due < recovery_time] == [1, 2, 3]
    assert all(attempts == -1 for due, attempts, _ in history[recovering] if due >= recovery_time)
    [delivered] = world["later"].wait_for_messages(1)
    assert delivered.recipients == ["carol@later.test"] and b"Subject: to-later" in delivered.message
    assert len(world["later"].messages()) == 1

    # The sender got one delay warning (for the dead message only) and one bounce, nothing more.
    received = notices.wait_for_messages(2, timeout=30)
    assert len(received) == 2, [m.message[:300] for m in received]
    warning, failure = received
    assert warning.sender == "" and warning.recipients == [SENDER]
    text = warning.message.decode()
    assert "Subject: Delayed Mail (still being retried)" in text
    assert "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #" in text
    assert "Your message could not be delivered for more than 1 hour(s)." in text
    assert f"It will be retried until it is {LIFETIME / 86400:g} day(s) old." in text
    assert "Action: delayed" in text and "Final-Recipient: rfc822; bob@dead.test" in text
    assert "carol@later.test" not in text

    bounce = failure.message.decode()
    assert failure.sender == "" and failure.recipients == [SENDER]
    assert "Subject: Undelivered Mail Returned to Sender" in bounce
    assert "Final-Recipient: rfc822; bob@dead.test" in bounce
    assert "Action: failed" in bounce
    # The last temporary failure's detail, made permanent: connection refused (4.4.1) -> 5.4.1.
    assert "Status: 5.4.1" in bounce
    assert "Subject: to-dead" in bounce            # the message is returned

    texts = log.texts()
    # The warning was made once, at the first attempt past delay_warning_time.
    warn_due = next(due for due in schedule if due >= DELAY_WARNING)
    assert len([t for t in texts if "sender delay notification" in t]) == 1
    assert len([t for t in texts if "status=expired, returned to sender" in t]) == 2
    assert f"{dead}: from=<{SENDER}>, status=expired, returned to sender" in texts
    assert f"{null_sender}: from=<>, status=expired, returned to sender" in texts
    assert len([t for t in texts if "sender non-delivery notification" in t]) == 1
    # Nothing was bounced by a delivery attempt: the only bounces are the two expiries.
    assert [t for t in texts if "status=bounced" in t] == []
    assert warn_due == 4800.0 and expired_at == 20800.0 and null_expiry == 12800.0
    assert store.messages() == []
    assert store.check() == []
