"""Storage faults under the REAL daemon: a full queue file system, a failing fsync, a read-only queue.

The promise (RFC 5321 §6.1, DESIGN.md): a client gets 250 only for mail that is durably queued;
when the queue cannot take a message the client gets a 4xx (452 4.3.1 when full, 451 4.3.0 when the
queue cannot write), nothing acknowledged is lost, the queue database stays sound (SQLite's
integrity_check, every row readable by `mailferry mailq`), and once the fault goes, mail flows
again and everything queued is delivered, once.

Each test keeps the relay destination (a real smtp-sink) down while the fault is on, so that what
was acknowledged is still in the queue during the fault, and brings it up at the end: a short retry
schedule (1-2 s backoff) then delivers everything. Mounts (tmpfs, ro bind) and processes are undone
in the fixtures' teardown, whatever the test did. Faults the kernel cannot make on demand (a failing
fsync; a queue that turns read-only while open) come from tests/peers/queue_faults.c, LD_PRELOADed.
"""

from __future__ import annotations

import contextlib
import errno
import re

import pytest

from tests.peers.fault_scenarios import Scenario, integrity
from tests.peers.queue_faults import FaultShim, fill, free_bytes, read_only, tmpfs

@pytest.fixture
def scenario():
    with contextlib.ExitStack() as stack:
        yield Scenario(stack)


# --- (a) a full queue file system


def test_a_full_queue_file_system_gets_452_loses_nothing_and_recovers(scenario):
    """A 16 MB tmpfs queue. With space for small mail but not for a 1 MB message, that message
    gets 452 4.3.1 at the end of DATA (SQLite's SQLITE_FULL: the queue's own answer); with no
    space at all MAIL FROM gets 452 4.3.1 (queue_minfree's rule, message_size_limit = 0 here so
    that only a full disk counts). What was acknowledged stays queued and readable; freed, the
    queue takes mail again and delivers everything, once."""
    scenario.mount_tmpfs("16m")
    # notify_classes off: this test counts the queue, which the postmaster's resource transcript of
    # each 452 session (Postfix's default class, tests/integration/test_notify.py) would join.
    daemon = scenario.make_daemon(message_size_limit="0", notify_classes="").start()
    for _ in range(5):
        scenario.send(expect=250)
    daemon.wait_for_log("status=deferred", count=5)          # the destination is down: all queued

    filler = fill(scenario.queue, leave=64 * 1024)
    code, text = scenario.send(body_bytes=1 << 20)
    assert (code, text) == (452, "4.3.1 Insufficient system storage"), daemon.log_tail(10)
    daemon.wait_for_log("warning: ", timeout=10)
    assert re.search(r"cleanup\[\d+\]: warning: [0-9A-F]+: queue is full: mail refused with 452 4\.3\.1",
                     daemon.log()), daemon.log_tail(10)
    fill(scenario.queue, leave=0)
    assert free_bytes(scenario.queue) < 4096
    code, text = scenario.send()
    assert (code, text) == (452, "4.3.1 Insufficient system storage"), daemon.log_tail(10)
    log = daemon.wait_for_log("warning: not enough free space in mail queue")
    assert "NOQUEUE: reject: MAIL from" in log and "452 4.3.1 Insufficient system storage" in log
    # Still full: every acknowledged message is there and readable.
    assert scenario.queued_count() == len(scenario.acknowledged)

    filler.unlink()
    for _ in range(3):
        scenario.send(expect=250)
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()
    assert len(scenario.refused) == 2
    daemon.stop()
    assert integrity(scenario.queue / "queue.db") == []


@pytest.mark.parametrize("settings, refused_free, accepted_free", [
    # queue_minfree alone (message_size_limit = 0: no size rule)
    ({"queue_minfree": str(4 << 20), "message_size_limit": "0"}, 3 << 20, 5 << 20),
    # 1.5 x message_size_limit alone (queue_minfree = 0, Postfix's default)
    ({"queue_minfree": "0", "message_size_limit": str(1 << 20)}, 1 << 20, 2 << 20),
], ids=["queue_minfree", "one_and_a_half_message_size_limit"])
def test_queue_minfree_and_the_message_size_rule_refuse_mail_from_with_452(scenario, settings, refused_free,
                                                                          accepted_free):
    scenario.mount_tmpfs("8m")
    daemon = scenario.make_daemon(**settings).start()
    scenario.send(expect=250)
    filler = fill(scenario.queue, leave=refused_free)
    code, text = scenario.send()
    assert (code, text) == (452, "4.3.1 Insufficient system storage"), daemon.log_tail(10)
    daemon.wait_for_log("warning: not enough free space in mail queue")
    filler.unlink()
    fill(scenario.queue, leave=accepted_free)
    scenario.send(expect=250)
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()


# --- (b) a failing fsync


def test_a_failing_fsync_gets_451_is_not_acknowledged_and_the_next_message_goes_through(scenario):
    shim = FaultShim(scenario.directory / "faults")
    daemon = scenario.make_daemon(extra_env=shim.env).start()
    for _ in range(3):
        scenario.send(expect=250)
    daemon.wait_for_log("status=deferred", count=3)
    daemon.wait_for_log("(queue active)", count=6)          # queued, tried once, now waiting

    shim.inject("fsync", 1, errno.EIO, "/queue.db-wal")   # a commit's sync, not a background checkpoint's
    code, text = scenario.send()
    assert code == 451 and text.startswith("4.3.0"), (code, text, daemon.log_tail(10))
    assert shim.remaining() == 0
    [hit] = shim.hits()
    assert hit.startswith("fsync ") and "/queue.db" in hit      # the queue's own sync failed
    assert re.search(r"cleanup\[\d+\]: warning: [0-9A-F]+: queue file write error: \S+/queue\.db: disk I/O error",
                     daemon.log()), daemon.log_tail(10)
    shim.clear()

    for _ in range(3):
        scenario.send(expect=250)
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()
    assert scenario.refused[0][0] not in scenario.delivered_ids()
    daemon.stop()
    assert integrity(scenario.queue / "queue.db") == []


# --- (c) a read-only queue


def test_a_queue_that_turns_read_only_gets_451_and_recovers(scenario):
    """The kernel's errors=remount-ro, as the daemon sees it: every write to the open queue files
    fails with EROFS (the shim; a live ro remount is refused while files are open for writing)."""
    shim = FaultShim(scenario.directory / "faults")
    daemon = scenario.make_daemon(extra_env=shim.env).start()
    for _ in range(3):
        scenario.send(expect=250)
    daemon.wait_for_log("status=deferred", count=3)

    shim.inject("write", 1_000_000, errno.EROFS)
    for _ in range(3):
        code, text = scenario.send()
        assert code == 451 and text.startswith("4.3.0"), (code, text, daemon.log_tail(10))
    assert shim.hits() and all("/queue.db" in hit for hit in shim.hits())
    assert scenario.queued_count() == 3                      # still readable, nothing lost
    shim.clear()

    for _ in range(2):
        scenario.send(expect=250)
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()
    daemon.stop()
    assert integrity(scenario.queue / "queue.db") == []


def test_a_queue_read_only_at_start_is_refused_clearly_and_its_mail_is_delivered_once_writable(scenario):
    """A real read-only bind mount over the queue directory while the daemon is stopped: start
    fails with one clear fatal line naming the queue directory and the cause (it was a traceback);
    made writable again, the daemon starts and delivers what was queued before."""
    daemon = scenario.make_daemon().start()
    for _ in range(3):
        scenario.send(expect=250)
    daemon.wait_for_log("status=deferred", count=3)
    daemon.stop()

    with read_only(scenario.queue):
        with pytest.raises(AssertionError) as refused:
            daemon.start(timeout=15)
    assert (f"mailferry/master: fatal: queue_directory {scenario.queue}: cannot prepare"
            in str(refused.value)), refused.value
    assert "Read-only file system" in str(refused.value) and "Traceback" not in str(refused.value)
    daemon.start()
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()
    daemon.stop()
    assert integrity(scenario.queue / "queue.db") == []
