"""The real daemon relaying everything to one destination, and a client that records what was
acknowledged: shared by tests/reliability/test_storage_faults.py and test_peer_faults.py.

    with contextlib.ExitStack() as stack:
        scenario = Scenario(stack)                 # a fresh directory; everything undone at exit
        daemon = scenario.make_daemon(**main_cf).start()
        scenario.send(expect=250)                  # MAIL, RCPT, DATA with a unique X-Test-Id
        scenario.sink_up()                         # smtp-sink on the relay port
        scenario.assert_everything_acknowledged_delivered_once()

The relay destination is `[127.0.0.1]:relay_port`, where nothing listens until the test starts
something there; RETRY_FAST makes the deferred queue come round every 1-2 s.
"""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import sqlite3
import uuid
from pathlib import Path

from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.queue_faults import tmpfs
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
    """One daemon relaying everything to [127.0.0.1]:`relay_port` (nothing there until the test starts it)."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.directory = peer_tempdir("mailferry-storage-")
        stack.callback(shutil.rmtree, self.directory, True)
        self.queue = self.directory / "queue"
        self.relay_port = free_port()
        self.sink: SmtpSink | None = None
        self.daemon: FaultyDaemon | None = None
        self.acknowledged: list[str] = []
        self.refused: list[tuple[str, int, str]] = []

    def mount_tmpfs(self, size: str) -> None:
        """The queue directory on a tmpfs of `size`, unmounted after the daemon stops."""
        self.stack.enter_context(tmpfs(self.queue, size))

    def make_daemon(self, extra_env: dict[str, str] | None = None, **settings: str) -> FaultyDaemon:
        port = free_port()
        main_cf = base_main_cf(self.directory, default_transport="smtp",
                               relayhost=f"[127.0.0.1]:{self.relay_port}", **{**RETRY_FAST, **settings})
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

    def sink_up(self, **options) -> SmtpSink:
        """smtp-sink on the relay port (options: tests/peers/smtp_sink.py SmtpSink's)."""
        self.sink = SmtpSink(peer_tempdir("mailferry-relay-sink-"), port=self.relay_port, **options).start()
        self.stack.callback(shutil.rmtree, self.sink.directory, True)
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

    def assert_everything_acknowledged_delivered_once(self, delivered: list[str] | None = None) -> None:
        """Every acknowledged message arrived exactly once (X-Test-Ids `delivered`, default: the
        sink's), nothing else did, each was removed from the queue, and nothing bounced."""
        delivered = self.delivered_ids() if delivered is None else delivered
        assert sorted(delivered) == sorted(self.acknowledged), (
            f"acknowledged {len(self.acknowledged)}, delivered {len(delivered)}: "
            f"lost {set(self.acknowledged) - set(delivered)}, "
            f"not acknowledged yet delivered {set(delivered) - set(self.acknowledged)}")
        log = self.daemon.wait_for_log("removed", count=len(self.acknowledged), timeout=30)
        assert "status=bounced" not in log and "non-delivery notification" not in log, log[-3000:]

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
