"""Run the real mailferry daemon, and real peers, on loopback ports.

A peer that cannot start fails the test: these tests never skip.
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

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAEMON_USER = "nobody"  # mail_owner when the tests run as root
NO_DNS = "none"  # MAILFERRY_NAMESERVERS=none: DNS is off, every lookup fails at once (temporarily)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 20.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


def world_readable_tempdir(prefix: str) -> Path:
    """A directory the daemon can still use after it drops root for nobody."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


class Daemon:
    """`mailferry -c DIR start-fg`, with its own config and queue."""

    def __init__(self, directory: Path, main_cf: str, master_cf: str, port: int, nameservers: str = ""):
        self.directory = directory
        # Never the machine's resolver: a DNS server the test runs, or a closed loopback port.
        self.nameservers = nameservers or NO_DNS
        self.config_dir = directory / "etc"
        self.queue_directory = directory / "queue"
        self.log_path = directory / "mailferry.log"
        self.port = port
        self.process: subprocess.Popen | None = None
        self.config_dir.mkdir(mode=0o755)
        self.write_config(main_cf, master_cf)

    def write_config(self, main_cf: str, master_cf: str) -> None:
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(master_cf)

    def command(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mailferry", "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=60, **kwargs)

    def start(self) -> "Daemon":
        stderr = open(self.directory / "stderr.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailferry", "-c", str(self.config_dir), "start-fg"],
            stdout=stderr, stderr=stderr, env={**os.environ, "MAILFERRY_NAMESERVERS": self.nameservers})
        wait_for_port("127.0.0.1", self.port, process=self.process)
        # The port answers as soon as it is bound; the daemon is ready once its pid file is written.
        deadline = time.monotonic() + 20
        while not (self.queue_directory / "pid" / "master.pid").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mailferry did not start:\n{(self.directory / 'stderr.log').read_text()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} not in the log after {timeout} s:\n{self.log()[-3000:]}\n"
                             f"stderr:\n{(self.directory / 'stderr.log').read_text()[-2000:]}")

    def mailq(self) -> str:
        return self.command("mailq").stdout


def base_main_cf(directory: Path, **extra: str) -> str:
    settings = {
        "myhostname": "mx.example.test",
        "mydomain": "example.test",
        "mydestination": "$myhostname, example.test",
        "mynetworks": "127.0.0.1/32",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "queue_directory": str(directory / "queue"),
        "maillog_file": str(directory / "mailferry.log"),
        "mail_owner": DAEMON_USER,
        "default_transport": "discard:delivered to the bit bucket",
        "local_transport": "discard:local delivery",
        "smtpd_forbid_unauth_pipelining": "yes",
    }
    settings.update(extra)
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


def smtpd_master_cf(port: int, extra_listeners: str = "", extra_services: str = "") -> str:
    return (f"127.0.0.1:{port} inet n - n - - smtpd\n"
            f"{extra_listeners}"
            "pickup unix n - n 60 1 pickup\n"
            "smtp unix - - n - - smtp\n"
            "relay unix - - n - - smtp\n"
            "lmtp unix - - n - - lmtp\n"
            "discard unix - - n - - discard\n"
            "error unix - - n - - error\n"
            f"{extra_services}")


@pytest.fixture
def daemon_factory():
    made: list[Daemon] = []

    def make(extra_listeners: str = "", extra_services: str = "", nameservers: str = "", **extra: str) -> Daemon:
        directory = world_readable_tempdir("mailferry-it-")
        port = free_port()
        daemon = Daemon(directory, base_main_cf(directory, **extra),
                        smtpd_master_cf(port, extra_listeners, extra_services), port, nameservers)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        try:
            daemon.stop()
        except Exception:
            if daemon.process is not None:
                daemon.process.kill()
        shutil.rmtree(daemon.directory, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory().start()


def daemon_user_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(DAEMON_USER)
    return entry.pw_uid, entry.pw_gid


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the daemon's smtpd workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry.name))
    return children
