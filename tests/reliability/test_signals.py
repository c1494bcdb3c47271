"""Signals under load (issue 14, item 5): `mailferry reload` and `mailferry stop` while 20 sessions
send, against the real daemon relaying to smtp-sink.

- reload: no greeted session is cut off (every transaction started gets its 250, or a reply of some
  kind, never a dropped connection), and nothing acknowledged is lost.
- stop: sessions the daemon had greeted hear `421 4.3.2 Service shutting down, closing
  transmission channel` (smtpd/service.py SHUTDOWN_REPLY; a busy one after its commit), never a
  silent close (a client still sending may see a reset instead); nothing acknowledged is lost;
  after start, everything queued is delivered.
  (Postfix's smtpd just exits on `postfix stop`, so its clients see the connection drop; RFC 5321
  3.8 asks for the 421 we send.)
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.smtp_sink import SmtpSink
from tests.reliability.crashload import SmtpLoader, queue_snapshot, stop_quietly
from tests.reliability.test_crash import FAST_RETRIES, sink_ids

SESSIONS = 20
SHUTDOWN = "421 4.3.2 Service shutting down"  # then ", closing transmission channel"


@pytest.fixture
def relay():
    """(daemon, sink): the daemon relays everything to smtp-sink; both go away however the test ends."""
    sink = SmtpSink(peer_tempdir("signals-sink-")).start()
    directory = peer_tempdir("mailferry-signals-")
    port = free_port()
    daemon = MailferryDaemon(directory, base_main_cf(directory, default_transport="smtp", relayhost=sink.nexthop,
                                                     **FAST_RETRIES),
                             smtpd_master_cf(port), port)
    try:
        daemon.start()
        daemon.wait_for_log("daemon started -- version")
        yield daemon, sink
    finally:
        stop_quietly(daemon)
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(sink.directory, ignore_errors=True)


def drain_and_check(daemon: MailferryDaemon, sink: SmtpSink, acknowledged: set[str]) -> dict:
    """Wait until every acknowledged message reached the sink and the queue is empty; then stop the
    daemon and check the queue file."""
    deadline = time.monotonic() + 120
    while True:
        arrived = sink_ids(sink)()
        missing = acknowledged - set(arrived)
        if not missing and daemon.queue_summary()[0] == 0:
            break
        assert time.monotonic() < deadline, (f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}; "
                                             f"{daemon.queue_summary()[1]}\n{daemon.log_tail(20)}")
        time.sleep(0.2)
    daemon.stop()
    final = queue_snapshot(daemon.queue_directory)
    assert final.ok and not final.waiting and not final.done, final
    return arrived


def duplicates_explained(daemon: MailferryDaemon, sink: SmtpSink, arrived) -> str:
    """For a failure message: each duplicated id's copies, by the queue ID mailferry's Received:
    header names (two IDs: intake queued it twice; one: it was delivered twice), with the log lines."""
    log = daemon.log()
    lines = []
    for found in [i for i, count in arrived.items() if count > 1][:5]:
        queue_ids = []
        for path in sink.dump_directory.iterdir():
            data = path.read_bytes()
            if f"end {found}\n".encode() in data:
                match = re.search(rb"\(mailferry\) with \w+ id (\w+)", data)
                queue_ids.append(match.group(1).decode() if match else "?")
        lines.append(f"{found}: queue IDs {queue_ids}")
        lines += [line for line in log.splitlines() if any(q in line for q in queue_ids if q != "?")]
    return "\n".join(lines)


def under_load(daemon: MailferryDaemon, sink: SmtpSink, prefix: str, step):
    """SESSIONS sessions send; after 100 messages got their 250, `step(loader)` runs; then the load
    ends and the queue drains. Returns (loader figures, ids that arrived, what step returned)."""
    loader = SmtpLoader(daemon.port, "someone@elsewhere.example", sessions=SESSIONS, prefix=prefix).start()
    try:
        loader.wait_acknowledged(100)
        result = step(loader)
    except BaseException:
        loader.abandon()
        raise
    figures = loader.stop()
    return figures, drain_and_check(daemon, sink, set(figures.acknowledged)), result


def test_reload_under_20_sessions_drops_none_and_loses_nothing(relay):
    daemon, sink = relay

    def reload(loader: SmtpLoader) -> None:
        reloaded = daemon.command("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        daemon.wait_for_log("reload -- version")
        loader.wait_acknowledged(len(loader.figures.acknowledged) + 100)   # the sessions go on after it

    figures, arrived, _ = under_load(daemon, sink, "r", reload)
    print(f"signals figures: reload, {SESSIONS} sessions, {len(figures.acknowledged)} acknowledged, "
          f"{sum(arrived.values()) - len(arrived)} duplicated, failures {dict(figures.failures)}")
    assert not figures.failures, f"sessions cut short by the reload: {dict(figures.failures)}"
    assert sum(arrived.values()) == len(arrived), (
        f"a reload duplicated mail:\n{duplicates_explained(daemon, sink, arrived)}")


def test_stop_under_20_sessions_says_421_loses_nothing_and_start_delivers_the_rest(relay):
    daemon, sink = relay

    def stop_and_start(loader: SmtpLoader) -> dict:
        stopped = daemon.command("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert daemon.process.wait(60) is not None
        during_stop = dict(loader.figures.failures)
        acknowledged_by_then = len(loader.figures.acknowledged)
        daemon.start()
        daemon.wait_for_log("daemon started -- version", count=2)
        loader.wait_acknowledged(acknowledged_by_then + 50)
        return during_stop

    figures, arrived, during_stop = under_load(daemon, sink, "s", stop_and_start)
    print(f"signals figures: stop, {SESSIONS} sessions, {len(figures.acknowledged)} acknowledged, "
          f"{sum(arrived.values()) - len(arrived)} duplicated, while stopping: {during_stop}")
    if sum(arrived.values()) > len(arrived):
        # Not a failure: a delivery still running STOP_DELIVERY_GRACE after the stop is cut off and
        # made again after the start (at least once, never lost). Shown so that it can be judged.
        print(duplicates_explained(daemon, sink, arrived))
    told = sum(count for what, count in during_stop.items() if SHUTDOWN in what)
    assert told > 0, f"no session heard the 421: {during_stop}"
    # A greeted session gets the 421, then the daemon closes. A connection the daemon never greeted
    # (still in the closed listener's backlog) or made after it was gone is refused or reset. A client
    # still sending when the 421 came may see its next write fail (EPIPE) or a reset, which the kernel
    # reports in place of the 421 it had received. What must never happen: a greeted session closed
    # with no reply at all (EOFError), or left hanging (timeout).
    reset_while_sending = ("BrokenPipeError", "ConnectionResetError")
    dropped = {what: count for what, count in during_stop.items()
               if not what.startswith(("connect:", "greeting:")) and SHUTDOWN not in what
               and not what.endswith(reset_while_sending)}
    assert not dropped, f"greeted sessions closed without the 421: {dropped}"
