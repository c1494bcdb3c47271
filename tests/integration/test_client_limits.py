"""Postfix's client limits (anvil) through the real daemon, with many real connections.

mynetworks = 127.0.0.1/32, so smtpd_client_event_limit_exceptions (default $mynetworks) exempts
127.0.0.1 alone; each test is a different untrusted client (127.0.0.2, 127.0.0.3, ...), since
anvil counts per (service, client address). The daemon runs its smtpd in two processes (the master
and a worker: master/workers.py, one per CPU); the tests check from the log that both served the
client, so a count kept per process would have let it through.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess

import pytest

from tests.integration.conftest import Daemon, base_main_cf, child_pids, free_port, smtpd_master_cf, \
    world_readable_tempdir
from tests.integration.smtp_chat import Chat, wait_until
from tests.peers.processes import socket_inodes

pytestmark = pytest.mark.integration

HOST = "mx.example.test"


def listener(port: int, *overrides: str) -> str:
    return f"127.0.0.1:{port} inet n - n - - smtpd\n" + "".join(f"  -o {item}\n" for item in overrides)


@pytest.fixture(scope="module")
def mx():
    """Postfix's defaults on the first port (50 sessions a client); rate limits on others."""
    directory = world_readable_tempdir("mailferry-anvil-")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={HOST}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    port, rates, tls = free_port(), free_port(), free_port()
    daemon = Daemon(directory,
                    base_main_cf(directory, anvil_status_update_time="2s",
                                 smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key)),
                    smtpd_master_cf(port, listener(rates, "smtpd_client_message_rate_limit=2",
                                                   "smtpd_client_recipient_rate_limit=3",
                                                   "smtpd_client_connection_rate_limit=5")
                                    + listener(tls, "smtpd_tls_security_level=may",
                                               "smtpd_client_new_tls_session_rate_limit=1")),
                    port)
    daemon.ports = {"smtp": port, "rates": rates, "tls": tls}
    daemon.start()
    if len(serving_pids(daemon)) < 2:
        daemon.stop()
        pytest.fail(f"the daemon serves smtpd in {len(serving_pids(daemon))} process(es); these tests need "
                    "two (master/workers.py: one per CPU) to show that the counts are shared")
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


def serving_pids(daemon: Daemon) -> list[int]:
    """The processes that accept on the daemon's smtpd port: start-fg and its workers (the
    spawner, forked from the same program, holds no listening socket)."""
    listening = listening_inodes(daemon.port)
    pids = [daemon.process.pid] + child_pids(daemon.process.pid)
    return [pid for pid in pids if listening & socket_inodes(pid)]


def listening_inodes(port: int) -> set[str]:
    """The daemon's listening sockets on `port`, as socket_inodes names them."""
    inodes = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inodes.add(f"socket:[{fields[9]}]")
    return inodes


@contextlib.contextmanager
def served_by(daemon: Daemon, pid: int):
    """Only `pid` accepts while this lasts: the daemon's other smtpd processes are stopped
    (SIGSTOP), so a test decides which process counts which session."""
    others = [other for other in serving_pids(daemon) if other != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def sessions(port: int, source: str, count: int) -> list[tuple[Chat, str]]:
    opened = []
    for _ in range(count):
        chat = Chat(port, source)
        opened.append((chat, chat.reply()))
    return opened


def close_all(opened) -> None:
    for chat, _ in opened:
        chat.close()


def after_ehlo(port: int, source: str) -> Chat:
    chat = Chat(port, source)
    assert chat.reply().startswith("220 ")
    assert chat.command("EHLO outside.example").startswith("250")
    return chat


def test_the_51st_concurrent_session_gets_421_whichever_process_takes_it(mx):
    port = mx.ports["smtp"]
    master, worker = serving_pids(mx)[:2]
    opened = []
    try:
        with served_by(mx, master):
            opened += sessions(port, "127.0.0.2", 25)
        with served_by(mx, worker):
            opened += sessions(port, "127.0.0.2", 25)
        assert all(greeting.startswith("220 ") for _, greeting in opened), [g for _, g in opened][:3]
        for pid in (master, worker):    # each process has 25 open: only the sum is over 50
            with served_by(mx, pid):
                extra = Chat(port, "127.0.0.2")
                assert extra.reply() == f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.2"
                assert extra.closed_by_server()
            mx.wait_for_log(f"mailferry/smtpd[{pid}]: warning: Connection concurrency limit exceeded: 51 from "
                            f"unknown[127.0.0.2] for service 127.0.0.1:{port}")
        # A session that ends frees its place: the count falls at disconnect.
        quitting = opened.pop()[0]
        assert quitting.command("QUIT").startswith("221 ")
        assert quitting.closed_by_server()
        wait_until(lambda: _greeted(port, "127.0.0.2"), what="a new session of 127.0.0.2 greeted after a QUIT")
    finally:
        close_all(opened)


def _greeted(port: int, source: str) -> bool:
    chat = Chat(port, source)
    try:
        return chat.reply().startswith("220 ")
    finally:
        chat.close()


def test_a_client_in_the_exceptions_is_never_limited(mx):
    opened = sessions(mx.ports["smtp"], "127.0.0.1", 60)
    try:
        assert all(greeting.startswith("220 ") for _, greeting in opened)
    finally:
        close_all(opened)
    chat = after_ehlo(mx.ports["rates"], "127.0.0.1")
    try:
        for _ in range(4):
            assert chat.command("MAIL FROM:<a@inside.example>").startswith("250 ")
            assert chat.command("RSET").startswith("250 ")
    finally:
        chat.close()


def test_connection_rate_limit_counts_across_processes(mx):
    port = mx.ports["rates"]
    master, worker = serving_pids(mx)[:2]
    greetings = []
    for pid, count in ((master, 3), (worker, 2)):
        with served_by(mx, pid):
            for _ in range(count):
                chat = Chat(port, "127.0.0.3")
                greetings.append(chat.reply())
                chat.command("QUIT")
                chat.close()
    assert all(greeting.startswith("220 ") for greeting in greetings)
    with served_by(mx, worker):     # it saw two connections itself, the sixth in all
        sixth = Chat(port, "127.0.0.3")
        assert sixth.reply() == f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.3"
        sixth.close()
    mx.wait_for_log(f"mailferry/smtpd[{worker}]: warning: Connection rate limit exceeded: 6 from "
                    f"unknown[127.0.0.3] for service 127.0.0.1:{port}")


def test_message_rate_limit_answers_450_at_mail_from(mx):
    chat = after_ehlo(mx.ports["rates"], "127.0.0.4")
    try:
        for _ in range(2):
            assert chat.command("MAIL FROM:<a@outside.example>").startswith("250 ")
            assert chat.command("RSET").startswith("250 ")
        assert chat.command("MAIL FROM:<a@outside.example>") == "450 4.7.1 Error: too much mail from 127.0.0.4"
    finally:
        chat.close()
    mx.wait_for_log("warning: Message delivery request rate limit exceeded: 3 from unknown[127.0.0.4] "
                    f"for service 127.0.0.1:{mx.ports['rates']}")


def test_recipient_rate_limit_answers_450_at_rcpt_to(mx):
    chat = after_ehlo(mx.ports["rates"], "127.0.0.5")
    try:
        assert chat.command("MAIL FROM:<a@outside.example>").startswith("250 ")
        for number in range(3):
            assert chat.command(f"RCPT TO:<user{number}@example.test>").startswith("250 ")
        assert chat.command("RCPT TO:<user9@example.test>") == "450 4.7.1 Error: too many recipients from 127.0.0.5"
        # The recipients already accepted still make a message.
        assert chat.command("DATA").startswith("354")
        assert chat.command("Subject: rate\r\n\r\nbody\r\n.").startswith("250 ")
    finally:
        chat.close()
    mx.wait_for_log("warning: Recipient address rate limit exceeded: 4 from unknown[127.0.0.5] "
                    f"for service 127.0.0.1:{mx.ports['rates']}")


def tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_new_tls_session_rate_limit(mx):
    port = mx.ports["tls"]
    first = after_ehlo(port, "127.0.0.6")
    assert first.command("STARTTLS").startswith("220 ")
    first.start_tls(tls_client())
    assert first.command("EHLO outside.example").startswith("250")
    first.close()
    # The second new TLS session is over the limit of 1: the handshake happens, then the session ends.
    second = after_ehlo(port, "127.0.0.6")
    assert second.command("STARTTLS").startswith("220 ")
    second.start_tls(tls_client())
    assert second.reply() == f"421 4.7.0 {HOST} Error: too many new TLS sessions from unknown[127.0.0.6]"
    second.close()
    mx.wait_for_log(f"warning: New TLS session rate limit exceeded: 2 from unknown[127.0.0.6] for service "
                    f"127.0.0.1:{port}")
    # From then on, STARTTLS is refused before any handshake.
    third = after_ehlo(port, "127.0.0.6")
    assert third.command("STARTTLS") == "454 4.7.0 Error: too many new TLS sessions from unknown[127.0.0.6]"
    third.close()
    mx.wait_for_log(f"warning: Refusing STARTTLS request from unknown[127.0.0.6] for service 127.0.0.1:{port}")


def test_anvil_logs_its_statistics(mx):
    opened = sessions(mx.ports["smtp"], "127.0.0.7", 3)
    close_all(opened)
    log = mx.wait_for_log("statistics: max connection count")
    assert re.search(r"mailferry/anvil\[\d+\]: statistics: max connection rate \d+/60s for "
                     r"\(127\.0\.0\.1:\d+:127\.0\.0\.\d+\) at \w{3} [ \d]\d \d\d:\d\d:\d\d\n", log), log[-2000:]


def test_a_killed_worker_does_not_leave_its_sessions_counted(daemon_factory):
    daemon = daemon_factory(smtpd_client_connection_count_limit="10").start()
    master, worker = serving_pids(daemon)[:2]
    opened = []
    try:
        with served_by(daemon, master):
            opened += sessions(daemon.port, "127.0.0.8", 4)
        with served_by(daemon, worker):
            opened += sessions(daemon.port, "127.0.0.8", 6)
        assert all(greeting.startswith("220 ") for _, greeting in opened)
        os.kill(worker, signal.SIGKILL)
        daemon.wait_for_log(f"process smtpd pid {worker} exit status -9")
        # The worker's six sessions died with it; their places are free again (in the master alone now).
        replacements = sessions(daemon.port, "127.0.0.8", 6)
        opened += replacements
        assert [greeting[:4] for _, greeting in replacements] == ["220 "] * 6
        extra = Chat(daemon.port, "127.0.0.8")
        assert extra.reply().startswith("421 4.7.0 ")     # and the limit still holds at ten
        extra.close()
    finally:
        close_all(opened)
