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
import shutil
import smtplib
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import DAEMON_USER, base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.queue_faults import FaultShim, fill, free_bytes, read_only, tmpfs
from tests.peers.smtp_sink import SmtpSink

RETRY_FAST = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}


class FaultyDaemon(MailferryDaemon):
    """The real daemon, with extra environment (the fault shim's LD_PRELOAD)."""

    def __init__(self, *args, extra_env: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_env = extra_env or {}

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}


class Scenario:
    """One daemon relaying everything to a sink on `sink_port` (down until `sink_up()`)."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.directory = peer_tempdir("mailferry-storage-")
        stack.callback(shutil.rmtree, self.directory, True)
        self.queue = self.directory / "queue"
        self.sink_port = free_port()
        self.sink: SmtpSink | None = None
        self.daemon: FaultyDaemon | None = None
        self.acknowledged: list[str] = []
        self.refused: list[tuple[str, int, str]] = []

    def mount_tmpfs(self, size: str) -> None:
        self.stack.enter_context(tmpfs(self.queue, size))

    def make_daemon(self, extra_env: dict[str, str] | None = None, **settings: str) -> FaultyDaemon:
        port = free_port()
        main_cf = base_main_cf(self.directory, default_transport="smtp",
                               relayhost=f"[127.0.0.1]:{self.sink_port}", **{**RETRY_FAST, **settings})
        self.daemon = FaultyDaemon(self.directory, main_cf, smtpd_master_cf(port), port, extra_env=extra_env)
        self.stack.callback(self._stop_daemon, self.daemon)
        return self.daemon

    @staticmethod
    def _stop_daemon(daemon: FaultyDaemon) -> None:
        try:
            daemon.stop()
        except Exception:
            if daemon.process is not None:
                daemon.process.kill()

    def sink_up(self) -> SmtpSink:
        self.sink = SmtpSink(self.directory / "sink", port=self.sink_port).start()
        self.stack.callback(self.sink.stop)
        return self.sink

    def send(self, body_bytes: int = 0, expect: int | None = None) -> tuple[int, str]:
        """One message with a unique X-Test-Id; recorded as acknowledged (250) or refused."""
        test_id = uuid.uuid4().hex
        code, text = send_message(self.daemon.port, test_id, body_bytes)
        if code == 250:
            self.acknowledged.append(test_id)
        else:
            self.refused.append((test_id, code, text))
        if expect is not None:
            assert code == expect, f"expected {expect}, got {code} {text}\n{self.daemon.log_tail(10)}"
        return code, text

    def delivered_ids(self, timeout: float = 60) -> list[str]:
        """Wait until every acknowledged message is at the sink; return every X-Test-Id it got."""
        messages = self.sink.wait_for_messages(len(self.acknowledged), timeout=timeout)
        return [m.email["X-Test-Id"] for m in messages]

    def assert_everything_acknowledged_delivered_once(self) -> None:
        delivered = self.delivered_ids()
        assert sorted(delivered) == sorted(self.acknowledged), (
            f"acknowledged {len(self.acknowledged)}, delivered {len(delivered)}: "
            f"lost {set(self.acknowledged) - set(delivered)}, "
            f"not acknowledged yet delivered {set(delivered) - set(self.acknowledged)}")
        self.daemon.wait_for_log("removed", count=len(self.acknowledged), timeout=30)

    def queued_count(self) -> int:
        count, _ = self.daemon.queue_summary()
        return count


def send_message(port: int, test_id: str, body_bytes: int = 0) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the first reply that is not a success, or DATA's final one."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example.test")
        for command in (lambda: client.mail("sender@example.test"), lambda: client.rcpt("rcpt@remote.test")):
            code, text = command()
            if code >= 400:
                return code, text.decode(errors="replace")
        body = "x" * 76 + "\r\n"
        content = (f"From: sender@example.test\r\nTo: rcpt@remote.test\r\nSubject: storage fault {test_id}\r\n"
                   f"X-Test-Id: {test_id}\r\n\r\n" + body * (body_bytes // len(body)) + "end\r\n")
        try:
            code, text = client.data(content)
        except smtplib.SMTPDataError as error:
            return error.smtp_code, error.smtp_error.decode(errors="replace")
        return code, text.decode(errors="replace")


def integrity(database: Path) -> list[str]:
    """SQLite's integrity_check and a read of every row and its content (the daemon stopped)."""
    connection = sqlite3.connect(database)
    try:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        for table, in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in connection.execute(f"SELECT * FROM {table}"):
                assert row is not None
    finally:
        connection.close()
    return [] if problems == ["ok"] else problems


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
    daemon = scenario.make_daemon(message_size_limit="0").start()
    for _ in range(5):
        scenario.send(expect=250)
    daemon.wait_for_log("status=deferred", count=5)          # the destination is down: all queued

    filler = fill(scenario.queue, leave=64 * 1024)
    code, text = scenario.send(body_bytes=1 << 20)
    assert (code, text) == (452, "4.3.1 Insufficient system storage"), daemon.log_tail(10)
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

    shim.inject("fsync", 1, errno.EIO)
    code, text = scenario.send()
    assert code == 451 and text.startswith("4.3.0"), (code, text, daemon.log_tail(10))
    assert shim.remaining() == 0
    [hit] = shim.hits()
    assert hit.startswith("fsync ") and "/queue.db" in hit      # the queue's own sync failed
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
