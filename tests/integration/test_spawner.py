"""The privileged spawner inside the real daemon: one root child, gone with the master.

What it runs is shown by the pipe, local and virtual tests; here, its life:
it exists once the daemon is up, it keeps nothing of the master's (no
listener), a dead spawner is logged as Postfix's master logs a dead child,
and it never outlives the master, even after kill -9.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import child_pids, process_uid
from tests.peers.processes import socket_inodes

pytestmark = pytest.mark.integration


def the_spawner(daemon) -> int:
    [pid] = [pid for pid in child_pids(daemon.process.pid) if process_uid(pid) == 0]
    return pid


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_the_spawner_holds_no_listener_of_the_masters(daemon):
    """Its one descriptor is the control socket: no smtpd listener, no mail log, no queue."""
    spawner = the_spawner(daemon)
    assert len(socket_inodes(spawner)) == 1
    # Beyond stdin, stdout and stderr (kept in the foreground for a crash's traceback): the socket alone.
    assert [os.readlink(f"/proc/{spawner}/fd/{fd}") for fd in os.listdir(f"/proc/{spawner}/fd")
            if int(fd) > 2] == list(socket_inodes(spawner))


def test_a_dead_spawner_is_logged_and_says_it_cannot_come_back(daemon):
    spawner = the_spawner(daemon)
    os.kill(spawner, signal.SIGKILL)
    log = daemon.wait_for_log(f"process spawner pid {spawner} exit status -9")
    assert "it cannot be restarted without root" in log
    assert daemon.process.poll() is None, "the master keeps serving"


def test_the_spawner_ends_with_the_master_even_after_kill_9(daemon):
    spawner = the_spawner(daemon)
    daemon.kill9()
    assert gone_within(spawner, 20), "the root spawner outlived its master"


def test_the_spawner_ends_at_stop(daemon):
    spawner = the_spawner(daemon)
    assert daemon.stop() == 0
    assert gone_within(spawner, 20)
