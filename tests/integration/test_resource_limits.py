"""Hostile clients and exhausted resources, through the real daemon: a client that sends nothing
or a byte at a time (smtpd_timeout, smtpd_per_record_deadline), and a flood of connections past
the file-descriptor limit."""

from __future__ import annotations

import selectors
import shutil
import socket
import sys
import threading
import time

import pytest

from tests.integration.conftest import Daemon, base_main_cf, child_pids, free_port, smtpd_master_cf, \
    world_readable_tempdir
from tests.integration.smtp_chat import Chat
from tests.peers.processes import CLOCK_TICKS, read_stat

pytestmark = pytest.mark.integration

HOST = "mx.example.test"
TIMEOUT_REPLY = f"421 4.4.2 {HOST} Error: timeout exceeded"
TIMEOUT = 3         # smtpd_timeout, seconds: ten times the dribbler's pace, slack for a loaded machine


@pytest.fixture(scope="module")
def slow_mx():
    """smtpd_timeout = 3s; the second port also has smtpd_per_record_deadline = yes."""
    directory = world_readable_tempdir("mailferry-timeout-")
    port, deadline = free_port(), free_port()
    daemon = Daemon(directory, base_main_cf(directory, smtpd_timeout=f"{TIMEOUT}s"),
                    smtpd_master_cf(port, f"127.0.0.1:{deadline} inet n - n - - smtpd\n"
                                          "  -o smtpd_per_record_deadline=yes\n"), port)
    daemon.ports = {"smtp": port, "deadline": deadline}
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


class Dribbler(threading.Thread):
    """A slowloris client: one byte of `text` every `interval` seconds, until stopped or refused."""

    def __init__(self, chat: Chat, text: bytes, interval: float = 0.25):
        super().__init__(daemon=True)
        self.chat, self.text, self.interval = chat, text, interval
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        for byte in self.text:
            if self.stopped.wait(self.interval):
                return
            try:
                self.chat.sock.send(bytes([byte]))
            except OSError:
                return
            self.sent += 1


def test_a_client_that_sends_nothing_is_dropped_with_421(slow_mx):
    chat = Chat(slow_mx.ports["smtp"], "127.0.0.2")
    try:
        assert chat.reply().startswith("220 ")
        assert chat.reply() == TIMEOUT_REPLY          # waits for the server: no sleep here
        assert chat.closed_by_server()
    finally:
        chat.close()
    slow_mx.wait_for_log("timeout after CONNECT from unknown[127.0.0.2]")


def test_a_dribbling_client_meets_the_per_record_deadline(slow_mx):
    """Postfix's smtpd_timeout bounds each read; with smtpd_per_record_deadline = yes it bounds
    each whole command line, so a byte every 0.25 s cannot hold a session open past it."""
    bounded = Chat(slow_mx.ports["deadline"], "127.0.0.3")
    per_read = Chat(slow_mx.ports["smtp"], "127.0.0.4")
    line = b"EHLO " + b"x" * 200          # longer than the test lasts, at a byte every 0.25 s
    dribblers = [Dribbler(bounded, line), Dribbler(per_read, line)]
    try:
        assert bounded.reply().startswith("220 ") and per_read.reply().startswith("220 ")
        started = time.monotonic()
        for dribbler in dribblers:
            dribbler.start()
        assert bounded.reply() == TIMEOUT_REPLY
        assert bounded.closed_by_server()
        slow_mx.wait_for_log("timeout after CONNECT from unknown[127.0.0.3]")
        assert dribblers[0].sent >= 2, "the client was dropped before it had dribbled anything"
        # The same client without the deadline is still being served after twice the timeout (as
        # with Postfix's default): each byte restarts smtpd_timeout.
        while time.monotonic() - started < 2 * TIMEOUT + 0.5:
            assert not per_read.closed_by_server(timeout=0.5)
        dribblers[1].stopped.set()
        dribblers[1].join()
        assert per_read.command("").startswith("250")     # ends the EHLO line it dribbled
        assert "unknown[127.0.0.4]" not in "".join(
            line for line in slow_mx.log().splitlines() if "timeout after" in line)
    finally:
        for dribbler in dribblers:
            dribbler.stopped.set()
        bounded.close()
        per_read.close()


# --- the file-descriptor limit

NOFILE = 64     # the daemon's processes start with about 26 descriptors each, and keep 16 free


@pytest.fixture
def fd_limited_mx():
    directory = world_readable_tempdir("mailferry-nofile-")
    port = free_port()
    daemon = Daemon(directory, base_main_cf(directory), smtpd_master_cf(port), port,
                    program=["prlimit", f"--nofile={NOFILE}:{NOFILE}", sys.executable, "-m", "mailferry"])
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (/proc/PID/stat fields 14 and 15)."""
    return sum(int(stat[13]) + int(stat[14]) for stat in map(read_stat, pids)) / CLOCK_TICKS


def collect_greetings(waiting: dict[socket.socket, bytes], want: int, timeout: float) -> list[socket.socket]:
    """Read the sockets in `waiting` until `want` of them have a whole first line (or `timeout`);
    the greeted sockets, removed from `waiting`."""
    greeted = []
    selector = selectors.DefaultSelector()
    for sock in waiting:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while len(greeted) < want and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                data = sock.recv(512)
                waiting[sock] += data
                if b"\r\n" in waiting[sock] or not data:
                    assert waiting[sock].startswith(b"220 "), waiting[sock]
                    selector.unregister(sock)
                    del waiting[sock]
                    greeted.append(sock)
    finally:
        selector.close()
    return greeted


def test_at_the_descriptor_limit_sessions_go_on_new_ones_wait_and_the_loop_does_not_spin(fd_limited_mx):
    daemon = fd_limited_mx
    pids = [daemon.process.pid] + child_pids(daemon.process.pid)
    clients = [socket.create_connection(("127.0.0.1", daemon.port), timeout=10) for _ in range(2 * NOFILE)]
    waiting = {sock: b"" for sock in clients}
    try:
        log = daemon.wait_for_log("warning: accept connection: Too many open files")
        greeted = collect_greetings(waiting, len(clients), timeout=5)
        assert 0 < len(greeted) < len(clients) and waiting, "the limit was never reached"
        # At the limit: nothing spins. Every process together burns well under a tenth of the wait.
        before = cpu_seconds(pids)
        time.sleep(3)
        spent = cpu_seconds(pids) - before
        assert spent < 0.3, f"{spent:.2f} s of CPU in 3 s at the descriptor limit"
        # The sessions it has are served, a whole message included.
        session = Chat.__new__(Chat)
        session.sock, session._buffer = greeted[0], b""
        session.sock.settimeout(20)
        assert session.command("EHLO client.example").startswith("250")
        assert session.command("MAIL FROM:<a@example.test>").startswith("250 ")
        assert session.command("RCPT TO:<b@example.test>").startswith("250 ")
        assert session.command("DATA").startswith("354")
        assert session.command("Subject: at the limit\r\n\r\nbody\r\n.").startswith("250 2.0.0 Ok: queued as ")
        # Recovery: sessions that end make room, and waiting clients get their 220. (Not one for
        # one: the commit above may have left the queue's files open in that process.)
        for sock in greeted[1:]:
            sock.close()
        assert len(collect_greetings(waiting, 10, timeout=20)) >= 10
        log = daemon.log()
        warnings = [line for line in log.splitlines() if "accept connection: Too many open files" in line]
        serving = {line.split("smtpd[", 1)[1].split("]", 1)[0] for line in warnings}
        assert len(warnings) == len(serving), f"more than one warning per process for one episode:\n{warnings}"
    finally:
        for sock in clients:
            sock.close()
