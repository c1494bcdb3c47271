"""Real peers for integration tests: throwaway CAs, Postfix's smtp-sink, private Dovecot instances.

Load the fixtures with `pytest_plugins = ["tests.peers.conftest_plugin"]`. A peer that cannot
start fails the test; these helpers never skip (DESIGN.md "Tests").
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def require_tool(name: str) -> str:
    tool = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not tool:
        raise AssertionError(f"{name} is required: run scripts/setup --test")
    return tool


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, process: subprocess.Popen | None = None,
                  log: Path | None = None) -> None:
    """Return once something accepts on host:port; fail if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode} before listening on "
                                 f"{host}:{port}{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s{_tail(log)}")


def _tail(log: Path | None, size: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- {log} ---\n{log.read_text(errors='replace')[-size:]}"


def peer_tempdir(prefix: str) -> Path:
    """A directory under /tmp that unprivileged peer processes (nobody) can traverse.

    pytest's tmp_path is mode 0700, so a peer that drops root to nobody cannot reach it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def unprivileged_ids() -> tuple[str, int, int]:
    """(user, uid, gid) that peers run as: nobody when we are root, else ourselves."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
    else:
        entry = pwd.getpwuid(os.geteuid())
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def give_to_peer(path: Path) -> Path:
    """Create `path` as a directory owned by the unprivileged peer user."""
    path.mkdir(parents=True, exist_ok=True)
    _, uid, gid = unprivileged_ids()
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    path.chmod(0o755)
    return path


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
