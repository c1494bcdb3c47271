"""packaging/systemd/mailferry.service (issue 16, Done when 6) and the sd_notify protocol of the
REAL daemon (master/sdnotify.py).

1. `systemd-analyze verify` passes on the unit as shipped, with nothing to say. Its ExecStart
   (/opt/mailferry/.venv/bin/mailferry) must exist for verify: the test runs it in a private mount
   namespace (`unshare -m`) where a tmpfs over /opt holds a link to this checkout's program, so
   this machine's /opt is never touched.
2. start-fg with NOTIFY_SOCKET pointing at a datagram socket the test owns: READY=1 (with
   MAINPID and a STATUS) comes when the SMTP port already accepts connections, RELOADING=1 then
   READY=1 around `mailferry reload`, STOPPING=1 on `mailferry stop`; every datagram is sent by
   the master itself (SO_PASSCRED), never by a worker or the spawner.
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon

pytestmark = pytest.mark.integration

UNIT = ROOT / "packaging" / "systemd" / "mailferry.service"
SHIPPED_PROGRAM = "/opt/mailferry/.venv/bin/mailferry"


def test_systemd_analyze_verify_passes_on_the_unit():
    assert f"ExecStart={SHIPPED_PROGRAM} " in UNIT.read_text()
    program = Path(sys.executable).parent / "mailferry"
    script = (f"mount -t tmpfs tmpfs /opt && mkdir -p {Path(SHIPPED_PROGRAM).parent} && "
              f"ln -s {program} {SHIPPED_PROGRAM} && exec systemd-analyze verify {UNIT}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_is_type_notify_with_reload_and_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict", "PrivateTmp=yes",
                 "ReadWritePaths=/var/spool/mailferry"):
        assert f"\n{line}" in text, line
    assert "\nNoNewPrivileges=yes" not in text     # set-group-ID delivery programs: docs/systemd.md


class NotifyReceiver:
    """The service manager's side: a datagram socket that records (sender pid, assignments)."""

    def __init__(self, path: Path):
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        os.chmod(path, 0o777)      # the master sends after giving up root, as to /run/systemd/notify
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 30) -> tuple[int, dict[str, str]]:
        self.socket.settimeout(timeout)
        data, ancillary, _, _ = self.socket.recvmsg(4096, socket.CMSG_SPACE(3 * 4))
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:12])[0]
        return pid, dict(line.split("=", 1) for line in data.decode().split("\n") if line)

    def close(self) -> None:
        self.socket.close()


class NotifiedDaemon(MailferryDaemon):
    notify_socket = ""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "NOTIFY_SOCKET": self.notify_socket}


def _port_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def test_the_daemon_speaks_sd_notify():
    directory = peer_tempdir("mailferry-notify-")
    receiver = NotifyReceiver(directory / "notify")
    port = free_port()
    daemon = NotifiedDaemon(directory, base_main_cf(directory), smtpd_master_cf(port), port)
    daemon.notify_socket = str(receiver.path)
    try:
        daemon.start()
        pid, ready = receiver.receive()
        assert ready["READY"] == "1" and int(ready["MAINPID"]) == daemon.process.pid == pid
        assert "accepting mail" in ready["STATUS"]
        assert _port_accepts(port)     # READY=1 was sent with the listener already open

        assert daemon.command("reload").returncode == 0
        pid, reloading = receiver.receive()
        assert (pid, reloading["RELOADING"]) == (daemon.process.pid, "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        pid, ready_again = receiver.receive()
        assert (pid, ready_again["READY"]) == (daemon.process.pid, "1")
        daemon.wait_for_log("reload -- version")

        assert daemon.command("stop").returncode == 0
        pid, stopping = receiver.receive()
        assert (pid, stopping["STOPPING"]) == (daemon.process.pid, "1")
        daemon.process.wait(60)
        receiver.socket.settimeout(0.5)
        with pytest.raises(TimeoutError):
            receiver.socket.recv(4096)     # nothing more, from anyone
    finally:
        daemon.stop()
        receiver.close()
        shutil.rmtree(directory, ignore_errors=True)

