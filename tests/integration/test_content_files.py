"""Large messages through the real daemon: their content goes to queue_directory/content/ before
the 250 (queue/sqlite.py), is relayed byte for byte, and its file goes once the message is removed;
at start the master sweeps what a crash left behind and warns of a file that is missing."""

from __future__ import annotations

import smtplib
import sqlite3
import time

import pytest

from mailferry.queue.sqlite import CONTENT_FILE_MIN_BYTES
from tests.integration.conftest import base_main_cf, free_port, relay_to_sink, smtpd_master_cf


@pytest.fixture
def relay():
    with relay_to_sink("content") as relaying:
        port = free_port()
        daemon = relaying.start(base_main_cf(relaying.directory, default_transport="smtp",
                                             relayhost=relaying.sink.nexthop), smtpd_master_cf(port), port)
        yield daemon, relaying.sink


def large_body(marker: str) -> str:
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/\r\n"
    # A line that starts with a dot, to be stuffed and unstuffed on both hops.
    return "." + marker + "\r\n" + line * (CONTENT_FILE_MIN_BYTES // len(line) + 200) + f"end {marker}\r\n"


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_large_message_is_queued_in_its_own_file_relayed_whole_and_its_file_removed(relay):
    daemon, sink = relay
    body = large_body("large-1")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail("sender@client.example", ["rcpt@elsewhere.example"],
                        f"Subject: large\r\n\r\n{body}".encode())
    [arrived] = sink.wait_for_messages(1, timeout=30)
    assert arrived.message.endswith(body.replace("\r\n", "\n").encode()), "the content changed on the way"
    daemon.wait_for_log("status=sent")
    daemon.wait_for_log(": removed")
    content = daemon.queue_directory / "content"
    wait_until(lambda: not any(content.iterdir()), f"content files left: {list(content.iterdir())}")


def test_the_start_sweeps_files_no_message_names_and_warns_of_a_missing_one(relay):
    daemon, sink = relay
    daemon.stop()
    content = daemon.queue_directory / "content"
    orphan = content / "4ZZZZZZZZZZZ"
    orphan.write_bytes(b"left by a crash between the file and its row")
    # A message whose row names a file that is gone (deleted by hand): queued while the daemon is down.
    with sqlite3.connect(daemon.queue_directory / "queue.db") as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(messages)")]
        values = {name: "" for name in columns}
        values.update(queue_id="4YYYYYYYYYYY", queue="hold", arrival_time=time.time(), next_attempt=time.time(),
                      attempts=0, size=200000, client_port=0, smtputf8=0, delay_warned=0, content=b"",
                      content_file="4YYYYYYYYYYY", dsn_ret=None, dsn_envid=None, body_type=None, client_uid=None)
        connection.execute(f"INSERT INTO messages ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                           list(values.values()))
    daemon.start()
    daemon.wait_for_log("removed 1 content file(s)")
    assert not orphan.exists()
    warning = daemon.wait_for_log("4YYYYYYYYYYY: its content file")
    assert "is missing" in warning and "postsuper -d 4YYYYYYYYYYY" in warning
    # ... and the rest of the queue still flows.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail("sender@client.example", ["rcpt@elsewhere.example"], b"Subject: small\r\n\r\nhello\r\n")
    sink.wait_for_messages(1, timeout=30)
