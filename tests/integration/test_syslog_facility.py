"""syslog_facility through the real daemon and the C library's syslog(3).

The daemon runs in a mount namespace of its own where /dev is a directory the test owns, so
/dev/log is the test's unix datagram socket: every line the daemon logs arrives here as syslog(3)
sent it, with its priority `<facility * 8 + severity>`. With maillog_file empty and standard error
being "the journal" (JOURNAL_STREAM, systemd.exec(5)), start-fg logs through syslog, as the
systemd unit does.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import sys
import time

import pytest

from tests.integration.conftest import base_main_cf, smtpd_master_cf, world_readable_tempdir
from tests.peers import free_port, require_tool
from tests.peers.mailferry import MailferryDaemon

pytestmark = pytest.mark.integration

LOCAL3_INFO = (19 << 3) | 6
DEVICES = ("null", "zero", "random", "urandom")


class JournalDaemon(MailferryDaemon):
    @property
    def env(self) -> dict[str, str]:
        status = os.stat(self.stderr_path)
        return {**super().env, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}


def receive_until(sock: socket.socket, pattern: str, timeout: float = 20.0) -> list[bytes]:
    """Datagrams until one matches `pattern` (bounded)."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            break
        if re.search(pattern.encode(), got[-1]):
            return got
    raise AssertionError(f"no datagram matching {pattern!r} in {got[-10:]!r}")


def test_the_daemon_logs_with_syslog_facility():
    unshare = require_tool("unshare")
    directory = world_readable_tempdir("mailferry-syslog-")
    dev = directory / "dev"
    dev.mkdir(mode=0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon = None
    try:
        sock.bind(str(dev / "log"))
        os.chmod(dev / "log", 0o666)       # the smtpd workers log after giving up root
        binds = ""
        for name in DEVICES:
            (dev / name).touch()
            binds += f"mount --bind /dev/{name} {dev}/{name} && "
        script = f'{binds}mount --bind {dev} /dev && exec "$@"'
        port = free_port()
        daemon = JournalDaemon(
            directory, base_main_cf(directory, maillog_file="", syslog_facility="local3"),
            smtpd_master_cf(port), port,
            program=[unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                     sys.executable, "-m", "mailferry"])
        daemon.stderr_path.touch()
        daemon.start()
        receive_until(sock, r"mailferry/master\[\d+\]: daemon started")
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            client.noop()
        datagrams = receive_until(sock, r"mailferry/smtpd\[\d+\]: disconnect from")
        smtpd = [d for d in datagrams if b"mailferry/smtpd[" in d]
        assert smtpd and all(d.startswith(f"<{LOCAL3_INFO}>".encode()) for d in smtpd), smtpd
        assert not daemon.log_path.exists()   # nothing went to a file
    finally:
        if daemon is not None:
            daemon.stop()
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)
