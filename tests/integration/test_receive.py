"""The receiving half against the real daemon: swaks, smtplib, mailq, kill -9, limits."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailferry import control
from mailferry.cli import queue_listing
from mailferry.cli.output import Reporter
from mailferry.queue.showq import decode_messages
from tests.integration.conftest import child_pids, daemon_user_ids, process_uid

pytestmark = pytest.mark.integration

QUEUED = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9A-F]+)")


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("swaks")
    assert tool, "swaks is required: run scripts/setup --test"
    return subprocess.run([tool, "--server", f"127.0.0.1:{port}", *args],
                          capture_output=True, text=True, timeout=60)


def held_daemon(daemon_factory):
    """Mail for elsewhere waits in the queue: the smtp delivery agent does not exist yet."""
    return daemon_factory(default_transport="smtp").start()


def test_swaks_and_smtplib_are_queued_and_listed(daemon_factory):
    daemon = held_daemon(daemon_factory)
    result = swaks(daemon.port, "--from", "alice@example.test", "--to", "bob@example.org")
    [swaks_id] = QUEUED.findall(result.stdout)
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        refused = client.sendmail("carol@example.test", ["dave@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
        assert refused == {}
        code, text = client.noop()
    log = daemon.wait_for_log("(queue active)", count=2)
    smtplib_id = re.findall(r"([0-9A-F]+): client=", log)[-1]
    listing = daemon.mailq()
    assert swaks_id in listing and smtplib_id in listing
    assert "alice@example.test" in listing and "bob@example.org" in listing
    assert "dave@example.org" in listing
    assert listing.rstrip().endswith("in 2 Requests.")


def test_daemon_and_its_smtpd_workers_run_as_mail_owner(daemon):
    uid, _ = daemon_user_ids()
    assert process_uid(daemon.process.pid) == uid
    children = child_pids(daemon.process.pid)
    # One child keeps root: the privileged spawner (master/spawner.py, docs/privileges.md).
    spawners = [pid for pid in children if process_uid(pid) == 0]
    assert len(spawners) == 1
    workers = [pid for pid in children if pid not in spawners]
    expected = min(os.cpu_count() or 1, 100) - 1  # smtpd maxproc "-" = default_process_limit, capped at CPUs
    assert len(workers) == expected
    assert all(process_uid(pid) == uid for pid in workers)
    assert "daemon started" in daemon.wait_for_log("daemon started")



def test_log_lines_follow_postfix_formats(daemon):
    queue_id = QUEUED.search(swaks(daemon.port, "--from", "a@example.test", "--to", "b@example.test").stdout).group(1)
    # smtpd may run in a worker process that flushes its own log lines: wait for the
    # last line of each process (qmgr's removal, smtpd's disconnect) before reading.
    # Not any "disconnect from localhost": the start-up probe (wait_for_port) has one of its own,
    # logged before this session's lines are flushed by its worker. Wait for this session's.
    daemon.wait_for_log(f"{queue_id}: removed")
    log = daemon.wait_for_log("disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1")
    assert re.search(r"mailferry/smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]", log)
    assert re.search(rf"mailferry/smtpd\[\d+\]: {queue_id}: client=localhost\[127\.0\.0\.1\]", log)
    assert re.search(rf"{queue_id}: message-id=<.+>", log)
    assert re.search(rf"{queue_id}: from=<a@example\.test>, size=\d+, nrcpt=1 \(queue active\)", log)
    assert re.search(rf"{queue_id}: to=<b@example\.test>, relay=none, delay=[\d.]+, "
                     rf"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent", log)
    assert re.search(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5", log)


def test_kill_9_loses_nothing_that_got_250(daemon_factory):
    daemon = held_daemon(daemon_factory)
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as smtp:
                    while not stop.is_set():
                        smtp.mail(f"sender{number}@example.test")
                        smtp.rcpt("rcpt@example.org")
                        code, reply = smtp.data(b"Subject: durability\r\n\r\n" + b"x" * 512 + b"\r\n")
                        if code == 250:
                            with lock:
                                accepted.append(reply.decode().rsplit(" ", 1)[-1])
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    daemon.wait_for_log("(queue active)", count=200, timeout=60)
    daemon.kill9()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(accepted) >= 200
    daemon.start()
    listing = daemon.mailq()
    missing = [queue_id for queue_id in accepted if queue_id not in listing]
    assert missing == []


def test_sendmail_with_daemon_down_is_picked_up_at_start(daemon_factory):
    daemon = daemon_factory(default_transport="smtp")
    (daemon.queue_directory / "maildrop").mkdir(parents=True)
    (daemon.queue_directory / "maildrop").chmod(0o1733)
    message = b"To: bob@example.org\nSubject: offline\n\nwritten while the daemon was down\n"
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"  # the installed entry point
    result = subprocess.run([str(sendmail), "-C",
                             str(daemon.config_dir), "-t", "-f", "alice@example.test"],
                            input=message, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(list((daemon.queue_directory / "maildrop").iterdir())) == 1
    daemon.start()
    log = daemon.wait_for_log("(queue active)")
    assert re.search(r"mailferry/pickup\[\d+\]: ([0-9A-F]+): uid=0 from=<alice@example\.test>", log), log
    listing = daemon.mailq()
    assert "alice@example.test" in listing and "bob@example.org" in listing
    assert list((daemon.queue_directory / "maildrop").iterdir()) == []


def test_size_line_and_recipient_limits(daemon_factory):
    daemon = daemon_factory(message_size_limit="2000", smtpd_recipient_limit="3").start()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.ehlo("client.example")
        assert "size" in client.esmtp_features and client.esmtp_features["size"] == "2000"
        code, text = client.mail("a@example.test", ["SIZE=5000"])
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed limit")
        client.rset()
        assert client.mail("a@example.test")[0] == 250
        for number in range(3):
            assert client.rcpt(f"r{number}@example.test")[0] == 250
        assert client.rcpt("r4@example.test") == (452, b"4.5.3 Error: too many recipients")
        code, text = client.data(b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n")
        assert (code, text) == (552, b"5.3.4 Error: message file too big")
        code, text = client.docmd("NOOP " + "z" * 3000)
        assert code == 500 and b"5.5.2" in text
        assert client.noop()[0] == 250


def test_stop_is_graceful_and_status_follows(daemon):
    assert daemon.command("status").returncode == 0
    client = smtplib.SMTP("127.0.0.1", daemon.port)
    client.ehlo("client.example")
    assert daemon.command("stop").returncode == 0
    code, text = client.mail("a@example.test")
    assert (code, text) == (421, b"4.3.2 Service shutting down, closing transmission channel")
    assert daemon.process.wait(10) == 0
    assert daemon.command("status").returncode == 1
    assert "terminating on signal 15" in daemon.log()


def test_reload_rereads_main_cf_without_dropping_connections(daemon):
    client = smtplib.SMTP("127.0.0.1", daemon.port)
    client.ehlo("client.example")
    main_cf = (daemon.config_dir / "main.cf").read_text() + "message_size_limit = 1234\n"
    (daemon.config_dir / "main.cf").write_text(main_cf)
    assert daemon.command("reload").returncode == 0
    daemon.wait_for_log("reload -- version")
    assert client.noop()[0] == 250  # the old session is still there
    client.quit()
    with smtplib.SMTP("127.0.0.1", daemon.port) as fresh:
        fresh.ehlo("client.example")
        assert fresh.esmtp_features["size"] == "1234"


def test_full_disk_gives_452_and_keeps_what_was_queued(daemon_factory):
    # message_size_limit = 0: queue_minfree's 1.5 x message_size_limit rule would refuse every
    # MAIL FROM on a 3 MB queue; this test fills the disk (tests/reliability/test_storage_faults.py
    # has the rule).
    daemon = daemon_factory(default_transport="smtp", message_size_limit="0")
    daemon.queue_directory.mkdir(mode=0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs",
                              str(daemon.queue_directory)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs (the test needs root): {mounted.stderr}"
    try:
        daemon.start()
        body = b"Subject: filler\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100  # about 100 KB
        accepted, refusal = [], None
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            for _ in range(200):
                code, text = client.mail("a@example.test")
                if code != 250:      # no free block left at all: queue_minfree's check
                    refusal = (code, text)
                    break
                client.rcpt("b@example.org")
                code, text = client.data(body)
                if code != 250:
                    refusal = (code, text)
                    break
                accepted.append(text.decode().rsplit(" ", 1)[-1])
        assert refusal == (452, b"4.3.1 Insufficient system storage"), refusal
        assert len(accepted) >= 5
        listing = daemon.mailq()
        assert [queue_id for queue_id in accepted if queue_id not in listing] == []
        assert "queue is full" in daemon.log()
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(daemon.queue_directory)], capture_output=True)


def test_error_sleep_then_421_at_the_hard_limit(daemon_factory):
    daemon = daemon_factory(smtpd_soft_error_limit="1", smtpd_hard_error_limit="3",
                            smtpd_error_sleep_time="1s").start()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        started = time.monotonic()
        raw.sendall(b"BOGUS\r\n")
        first = reader.readline()
        raw.sendall(b"BOGUS\r\n")
        second = reader.readline()
        raw.sendall(b"BOGUS\r\n")
        rest = reader.read()
        elapsed = time.monotonic() - started
    assert first.startswith(b"500") and second.startswith(b"500")
    assert rest.startswith(b"500 ") and b"421 4.7.0 mx.example.test Error: too many errors" in rest
    assert elapsed >= 2  # the second and third replies waited smtpd_error_sleep_time


def test_mailq_for_users_who_may_not_read_the_queue_goes_through_the_daemon(daemon_factory, monkeypatch, capsys):
    daemon = held_daemon(daemon_factory)
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        client.sendmail("alice@example.test", ["bob@example.org"], b"Subject: one\r\n\r\nx\r\n")
        client.sendmail("carol@example.test", ["dave@example.org"], b"Subject: two\r\n\r\nx\r\n")
    daemon.wait_for_log("status=deferred", count=2)
    direct = daemon.mailq()
    served = decode_messages(control.request(str(daemon.queue_directory), "showq"))
    assert sorted(message.sender for message in served) == ["alice@example.test", "carol@example.test"]
    # As root we may read queue.db; an ordinary user may not (0600, mail_owner's): be that user.

    def permission_denied(queue_directory):
        raise queue_listing.QueueUnavailable("queue.db: permission denied")

    monkeypatch.setattr(queue_listing, "open_existing_queue", permission_denied)
    assert queue_listing.print_queue(str(daemon.config_dir), Reporter("mailferry/mailq"), False, 75) == 0
    assert capsys.readouterr().out == direct


def test_reload_changes_which_clients_get_missing_headers(daemon):
    def queued_message_id_line(sender: str) -> str:
        with smtplib.SMTP("127.0.0.1", daemon.port) as client:
            client.sendmail(sender, ["user@example.test"], b"Subject: no id\r\n\r\nx\r\n")
        log = daemon.wait_for_log(f"from=<{sender}>")
        queue_id = re.findall(rf"([0-9A-F]+): from=<{re.escape(sender)}>", log)[-1]
        # cleanup's line may come from an smtpd worker, whose log buffer is its own
        log = daemon.wait_for_log(f"{queue_id}: message-id=")
        return re.search(rf"{queue_id}: message-id=(\S*)", log).group(1)

    # A loopback client is on our own interfaces: Postfix (and we) add Message-ID for it.
    assert queued_message_id_line("before@example.test").startswith("<")
    main_cf = (daemon.config_dir / "main.cf").read_text() + "local_header_rewrite_clients =\n"
    (daemon.config_dir / "main.cf").write_text(main_cf)
    assert daemon.command("reload").returncode == 0
    daemon.wait_for_log("reload -- version")
    # smtpd workers, where there are any, reload on their own SIGHUP and log nothing:
    # until the process that takes the next session has reloaded, it adds a Message-ID.
    deadline = time.monotonic() + 20
    attempt = 0
    while (message_id := queued_message_id_line(f"after{attempt}x@example.test")) != "<>":
        assert message_id.startswith("<") and time.monotonic() < deadline, "smtpd never applied the reload"
        attempt += 1
    assert message_id == "<>"
