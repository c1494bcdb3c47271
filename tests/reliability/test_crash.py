"""Crash under load (issue 14, item 1): kill -9 at random moments, 10 times a run, loses nothing.

A loader sends small messages, each with a unique X-Reliability-Id, and records every one that
got its 250 after DATA (sendmail: exit status 0); a transaction cut short is tried again with the
same id, as a real client would. Meanwhile the REAL daemon's whole process tree (start-fg, which
leads the process group, the smtpd workers, the spawner and any delivery command it runs) is killed
with SIGKILL at a seeded random moment, and restarted, 10 times. Then the loader finishes, the
queue drains into a recording peer, and each variant asserts:

- every acknowledged message arrived (lost = 0);
- duplicates <= the messages in flight at the kills, counted at each kill: intake (end of data
  sent, reply not yet read; for sendmail, the maildrop files not yet picked up) plus delivery (a
  copy already at the peer while the queue, read after the kill, still holds it to deliver);
- SQLite's integrity_check of the queue is "ok" after every kill, and the queue is empty at the end.

Variants: SMTP intake relayed to smtp-sink, sendmail/pickup, and delivery by local(8) into a
Maildir, by pipe(8) to a command that appends the id to a file, and by LMTP to Dovecot.
MAILFERRY_RELIABILITY_SEED=N replays a run's kill moments.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mailferry.queue.sqlite import CONTENT_FILE_MIN_BYTES
from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.integration.test_local_delivery import LOCAL_SERVICE, local_accounts  # noqa: F401 (a fixture)
from tests.peers import free_port, peer_tempdir
from tests.peers.dovecot import LmtpServer
from tests.peers.mailferry import MailferryDaemon
from tests.peers.smtp_sink import SmtpSink
from tests.reliability.crashload import (QueueSnapshot, SendmailLoader, SmtpLoader, ids_in, kill_tree,
                                         queue_snapshot, restart, spool_maildir_settings, stop_quietly,
                                         whole_ids_in)

KILLS = 10
KILL_AFTER = (0.4, 1.6)   # seconds after the daemon is up again: the seeded random kill moment
FAST_RETRIES = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}
PIPE_USER = "daemon"


@pytest.fixture
def crash_daemon():
    """make(extra_services, **main_cf) -> a started MailferryDaemon; every one is stopped, and its
    process tree killed, however the test ends."""
    made: list[MailferryDaemon] = []

    def make(extra_services: str = "", **settings: str) -> MailferryDaemon:
        directory = peer_tempdir("mailferry-crash-")
        port = free_port()
        daemon = MailferryDaemon(directory, base_main_cf(directory, **FAST_RETRIES, **settings),
                                 smtpd_master_cf(port, extra_services=extra_services), port)
        made.append(daemon)
        return daemon.start()

    yield make
    for daemon in made:
        stop_quietly(daemon)
        shutil.rmtree(daemon.directory, ignore_errors=True)


@pytest.fixture
def sink():
    peer = SmtpSink(peer_tempdir("crash-sink-"))
    peer.start()
    yield peer
    peer.stop()
    shutil.rmtree(peer.directory, ignore_errors=True)


def sink_ids(peer: SmtpSink) -> Callable[[], Counter]:
    """Each whole transaction smtp-sink dumped (its file ends with the message's last line)."""
    def delivered() -> Counter:
        found: Counter[str] = Counter()
        if peer.dump_directory.is_dir():
            for path in peer.dump_directory.iterdir():
                data = path.read_bytes()
                found.update(i for i in whole_ids_in(data) if data.endswith(f"end {i}\n\n".encode()))
        return found
    return delivered


def maildir_ids(maildir: Path) -> Callable[[], Counter]:
    """Each message in Maildir/new and cur: a file there was renamed in whole, never written in place."""
    def delivered() -> Counter:
        found: Counter[str] = Counter()
        for sub in ("new", "cur"):
            if (maildir / sub).is_dir():
                for path in (maildir / sub).iterdir():
                    found.update(whole_ids_in(path.read_bytes()))
        return found
    return delivered


def run_kills(name: str, daemon: MailferryDaemon, loader, delivered: Callable[[], Counter], rng,
              intake_in_flight: Callable[..., int], expect_delivery_during_kills: bool,
              counted_after_the_kill: bool = False, delivery_exactly_once: bool = False) -> dict:
    """Start `loader`, kill -9 the daemon KILLS times at random moments (restarting it), let the
    queue drain, and assert that nothing acknowledged is lost and duplicates stay within what was
    in flight. Returns the figures (printed too).

    `intake_in_flight()` is called under the loader's lock just before the kill; or, with
    `counted_after_the_kill`, as intake_in_flight(snapshot, arrived) once the daemon is down.
    `delivery_exactly_once`: the agent promises that a delivery repeated after a crash is not
    repeated at the peer, so only intake may make duplicates."""
    seed_note = f"(replay: MAILFERRY_RELIABILITY_SEED as printed above) [{name}]"
    starts = 1
    in_flight = Counter(intake=0, delivery=0)
    queued_at_kills = 0
    loader.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(*KILL_AFTER))       # the random moment itself, not a proof of anything
            with loader.lock:                          # no end of data goes out while the kill falls
                if not counted_after_the_kill:
                    in_flight["intake"] += intake_in_flight()
                kill_tree(daemon)
            snapshot = queue_snapshot(daemon.queue_directory)
            assert snapshot.ok, f"queue corrupted after a kill -9: {snapshot.integrity} {seed_note}"
            arrived = delivered()
            if counted_after_the_kill:
                in_flight["intake"] += intake_in_flight(snapshot, arrived)
            in_flight["delivery"] += sum(min(count, arrived[i]) for i, count in snapshot.waiting.items())
            queued_at_kills += sum(snapshot.waiting.values())
            starts += 1
            restart(daemon, starts)
        figures = loader.stop()
    except BaseException:
        loader.abandon()
        raise
    # Everything acknowledged is in the queue: it drains into the peer.
    daemon.command("flush")
    acknowledged = set(figures.acknowledged)
    deadline = time.monotonic() + 180
    while True:
        arrived = delivered()
        missing = acknowledged - set(arrived)
        if not missing and daemon.queue_summary()[0] == 0:
            break
        assert time.monotonic() < deadline, (
            f"{len(missing)} acknowledged messages never arrived, e.g. {sorted(missing)[:5]}; queue: "
            f"{daemon.queue_summary()[1]} {seed_note}\n{daemon.log_tail(30)}")
        time.sleep(0.2)
    daemon.stop()
    final = queue_snapshot(daemon.queue_directory)
    assert final.ok, f"queue corrupted at the end: {final.integrity}"
    assert not final.waiting and not final.done, f"the queue is not empty at the end: {final}"

    duplicated = sum(count - 1 for count in arrived.values() if count > 1)
    unknown = set(arrived) - acknowledged
    result = {"variant": name, "kills": KILLS, "acknowledged": len(acknowledged), "lost": len(missing),
              "duplicated": duplicated, "in_flight_intake": in_flight["intake"],
              "in_flight_delivery": in_flight["delivery"], "queued_at_kills": queued_at_kills,
              "transactions_tried": figures.attempts}
    print(f"crash figures: {result}")
    assert not unknown, f"delivered but never sent: {sorted(unknown)[:5]}"
    allowed = in_flight["intake"] + (0 if delivery_exactly_once else in_flight["delivery"])
    assert duplicated <= allowed, (
        f"{duplicated} duplicates, more than the {allowed} messages in flight at the kills: "
        f"{[i for i, c in arrived.items() if c > 1][:10]} {seed_note}")
    assert len(acknowledged) >= 3 * KILLS, f"too little load to prove anything: {result}"
    if expect_delivery_during_kills:
        # The kills fell while mail waited in the queue for this delivery agent, or they proved nothing.
        assert queued_at_kills > 0, f"no kill found mail waiting for delivery: {result}"
    return result


def test_kill9_during_smtp_intake_and_relay_loses_nothing(crash_daemon, sink, rng):
    daemon = crash_daemon(default_transport="smtp", relayhost=sink.nexthop)
    loader = SmtpLoader(daemon.port, "someone@elsewhere.example", sessions=4)
    run_kills("smtp intake, relayed", daemon, loader, sink_ids(sink), rng, loader.in_flight_count,
              expect_delivery_during_kills=False)


def test_kill9_during_large_message_intake_and_relay_loses_nothing(crash_daemon, sink, rng):
    """Content over the threshold goes to a file of its own before its row (queue/sqlite.py): the
    kills land between the two, and between a row's removal and its file's."""
    daemon = crash_daemon(default_transport="smtp", relayhost=sink.nexthop)
    loader = SmtpLoader(daemon.port, "someone@elsewhere.example", sessions=4, size=CONTENT_FILE_MIN_BYTES + 1000)
    run_kills("smtp intake of large messages, relayed", daemon, loader, sink_ids(sink), rng,
              loader.in_flight_count, expect_delivery_during_kills=False)
    content = daemon.queue_directory / "content"
    deadline = time.monotonic() + 30
    while any(content.iterdir()):     # the last removals' files go on the unlinker's thread
        assert time.monotonic() < deadline, f"content files left behind: {sorted(content.iterdir())[:5]}"
        time.sleep(0.1)


def test_kill9_during_sendmail_pickup_loses_nothing(crash_daemon, sink, rng):
    daemon = crash_daemon(default_transport="smtp", relayhost=sink.nexthop)
    loader = SendmailLoader(daemon, "someone@elsewhere.example", sessions=3)
    maildrop = daemon.queue_directory / "maildrop"

    def committed_but_still_in_maildrop(snapshot: QueueSnapshot, arrived: Counter) -> int:
        # pickup removes a maildrop file only after the queue committed its message (local/pickup.py):
        # a kill in between leaves both, and the restart queues the file again.
        files = list(maildrop.iterdir()) if maildrop.is_dir() else []
        queued = snapshot.waiting + snapshot.done + arrived
        return sum(1 for path in files for found in ids_in(path.read_bytes()) if queued[found])

    run_kills("sendmail/pickup", daemon, loader, sink_ids(sink), rng, committed_but_still_in_maildrop,
              expect_delivery_during_kills=False, counted_after_the_kill=True)


def test_kill9_during_local_maildir_delivery_loses_nothing(crash_daemon, local_accounts, rng):  # noqa: F811
    assert "mfuser1" in local_accounts
    spool = peer_tempdir("mailferry-crash-spool-")
    maildir = spool / "mfuser1"
    try:
        daemon = crash_daemon(extra_services=LOCAL_SERVICE, local_transport="local:$myhostname",
                              **spool_maildir_settings(spool))
        loader = SmtpLoader(daemon.port, "mfuser1@example.test", sessions=4)
        run_kills("local(8) Maildir", daemon, loader, maildir_ids(maildir), rng, loader.in_flight_count,
                  expect_delivery_during_kills=True, delivery_exactly_once=True)
        # local(8) names a Maildir file after its queue ID (delivery/local.py maildir_name): a delivery
        # repeated after a kill finds its file already there, so no queue ID is in new/ twice.
        names = Counter(path.name.split(".Q", 1)[1].split("R", 1)[0] for path in (maildir / "new").iterdir())
        assert names and max(names.values()) == 1, [name for name, count in names.items() if count > 1]
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def test_kill9_during_pipe_delivery_loses_nothing(crash_daemon, rng):
    records = peer_tempdir("crash-pipe-")
    ids_file = records / "ids"
    ids_file.touch()
    shutil.chown(ids_file, PIPE_USER)
    script = records / "record-id"
    # sed reads the whole message, then writes its one line at exit: one small O_APPEND write.
    script.write_text(f"#!/bin/sh\nexec sed -n 's/^{'X-Reliability-Id'}: //p' >> {ids_file}\n")
    script.chmod(0o755)
    service = f"recorder unix - n n - - pipe\n  user={PIPE_USER} argv={script}\n"
    daemon = crash_daemon(extra_services=service, default_transport="recorder")
    loader = SmtpLoader(daemon.port, "someone@elsewhere.example", sessions=4)

    def delivered() -> Counter:
        return Counter(line for line in ids_file.read_text().splitlines() if line)

    try:
        run_kills("pipe(8)", daemon, loader, delivered, rng, loader.in_flight_count,
                  expect_delivery_during_kills=True)
    finally:
        shutil.rmtree(records, ignore_errors=True)


@pytest.fixture
def dovecot_lmtp():
    server = LmtpServer(peer_tempdir("crash-lmtp-"), users=("alice@example.test",))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def test_kill9_during_lmtp_delivery_to_dovecot_loses_nothing(crash_daemon, dovecot_lmtp, rng):
    daemon = crash_daemon(local_transport=f"lmtp:inet:{dovecot_lmtp.nexthop}")
    loader = SmtpLoader(daemon.port, "alice@example.test", sessions=4)
    run_kills("LMTP to Dovecot", daemon, loader, maildir_ids(dovecot_lmtp.maildir("alice@example.test")), rng,
              loader.in_flight_count, expect_delivery_during_kills=True)
