"""Real peers on loopback, for the integration tests and for bench/ alike.

One package, used by both (bench scripts put the repository on sys.path and import `tests.peers`):

    tests.peers              ports, waiting for a listener, stopping a process, directories a
                             peer running as nobody can reach
    tests.peers.smtp_sink    Postfix's smtp-sink (dumps or counters), SMTP or LMTP
    tests.peers.smtp_source  Postfix's smtp-source as the load generator, timed
    tests.peers.postfix      a private Postfix instance (own config, queue, log; no chroot)
    tests.peers.mailferry    the real mailferry daemon (`mailferry -c DIR start-fg`)
    tests.peers.processes    CPU and memory of a process tree from /proc; the benches' Reaper
    tests.peers.logwatch     counting delivery records in a growing maillog
    tests.peers.dovecot, .dns, .tls   Dovecot, dnsmasq, throwaway CAs (tests only so far)

Load the pytest fixtures with `pytest_plugins = ["tests.peers.conftest_plugin"]`. A peer that cannot
start fails the test; these helpers never skip (DESIGN.md "Tests"). Its error, PeerError, is an
AssertionError, so a test reports it as a failure and a bench can catch it by name.
Everything binds to 127.0.0.0/8 only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class PeerError(AssertionError):
    """A peer could not be set up, started or checked."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def require_tool(name: str) -> str:
    tool = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not tool:
        raise PeerError(f"{name} is required: run scripts/setup --test")
    return tool


def check_loopback(host: str) -> str:
    if not host.startswith("127."):
        raise PeerError(f"{host}: only 127.0.0.0/8 addresses may be used here")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((check_loopback(host), 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 20.0, process: subprocess.Popen | None = None,
                  log: Path | None = None, banner: bool = False, what: str = "") -> None:
    """Return once something accepts on host:port (with `banner`, once it also greets with 220);
    raise PeerError if `process` exits first or time runs out, with the tail of `log`.

    Without `banner` nothing is sent: a test that counts sessions in the server's log sees none."""
    check_loopback(host)
    what = what or (process.args[0] if process is not None else "server")
    deadline = time.monotonic() + timeout
    last = "no connection"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise PeerError(f"{what} exited with {process.returncode} before listening on "
                            f"{host}:{port}{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=2 if banner else 0.5) as probe:
                if not banner:
                    return
                probe.settimeout(5)
                greeting = probe.recv(512)
                if greeting.startswith(b"220"):
                    try:
                        probe.sendall(b"QUIT\r\n")
                        probe.recv(512)
                    except OSError:
                        pass
                    return
                last = f"greeting {greeting[:80]!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.05 if banner else 0.02)
    raise PeerError(f"{what}: nothing answers on {host}:{port} after {timeout} s ({last}){_tail(log)}")


def _tail(log: Path | None, size: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return f"\n--- {log} ---\n{log.read_text(errors='replace')[-size:]}"


def tail_file(path: Path, lines: int = 8) -> str:
    """The last `lines` lines of a text file ("" if it cannot be read)."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def peer_tempdir(prefix: str, parent: str | Path | None = "/tmp") -> Path:
    """A directory that unprivileged peer processes (nobody) can traverse.

    pytest's tmp_path is mode 0700, so a peer that drops root to nobody cannot reach it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def make_traversable(path: Path) -> None:
    """chmod o+x (and g+rx) each directory from `path` up to the root that is not already
    world-searchable, so that unprivileged daemons reach it."""
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            os.chmod(directory, mode | 0o055)


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


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, wait `timeout`, then SIGKILL the process (its whole process group when it leads
    one). Returns its exit status (None if there was no process)."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        progress(f"PID {process.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        return process.wait()
