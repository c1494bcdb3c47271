"""Run the real mailferry daemon, and real peers, on loopback ports.

A peer that cannot start fails the test: these tests never skip.
"""

from __future__ import annotations

import pwd
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import seed_file
from tests.peers import free_port, peer_tempdir, wait_for_port
from tests.peers.mailferry import MailferryDaemon, main_cf_text, private_settings
from tests.peers.processes import children_map
from tests.peers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
DAEMON_USER = "nobody"  # mail_owner when the tests run as root

# The names tests import from here; the peers themselves live in tests/peers, shared with bench/.
Daemon = MailferryDaemon
world_readable_tempdir = peer_tempdir  # a directory the daemon can still use after it drops root
__all__ = ["Daemon", "ROOT", "free_port", "wait_for_port", "world_readable_tempdir"]


@dataclass
class SinkRelay:
    """A directory for one daemon, and a started smtp-sink for it to relay to (relay_to_sink)."""

    directory: Path
    sink: SmtpSink
    daemon: MailferryDaemon | None = None

    def start(self, main_cf: str, master_cf: str, port: int) -> MailferryDaemon:
        self.daemon = MailferryDaemon(self.directory, main_cf, master_cf, port)
        return self.daemon.start()


@contextmanager
def relay_to_sink(name: str) -> Iterator[SinkRelay]:
    """`mailferry-NAME-it-` and its sink's directory; on the way out the daemon (if started) stops,
    then the sink, and both directories go, however the block ended."""
    relay = SinkRelay(world_readable_tempdir(f"mailferry-{name}-it-"),
                      SmtpSink(world_readable_tempdir(f"mailferry-{name}-it-sink-")))
    try:
        relay.sink.start()
        yield relay
    finally:
        if relay.daemon is not None:
            relay.daemon.stop()
        relay.sink.stop()
        shutil.rmtree(relay.directory, ignore_errors=True)
        shutil.rmtree(relay.sink.directory, ignore_errors=True)


def base_main_cf(directory: Path, **extra: str) -> str:
    settings = private_settings(
        directory, DAEMON_USER,
        myhostname="mx.example.test",
        mydomain="example.test",
        mydestination="$myhostname, example.test",
        mynetworks="127.0.0.1/32",
        default_transport="discard:delivered to the bit bucket",
        local_transport="discard:local delivery",
        # Every local address is accepted, as with Postfix when nothing local(8) knows is asked:
        # the tests of the RCPT-time check set their own (tests/integration/test_virtual_delivery.py).
        local_recipient_maps="",
        smtpd_forbid_unauth_pipelining="yes",
    )
    settings.update(extra)
    return main_cf_text(settings)


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
    stop_daemons(made)


def stop_daemons(daemons: list[Daemon]) -> None:
    """Stop each (kill it if stopping fails) and remove its directory."""
    for daemon in daemons:
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
    return children_map().get(parent, [])


@pytest.fixture
def seed_ldap_aliases(slapd_pair_restored) -> str:
    """`ldap:PATH` for the seed's ldap-aliases.cf as written, its server_host pointed at the two
    slapd peers (first, then second; tests.peers.conftest_plugin's slapd_pair). The test module
    loads that plugin (`pytest_plugins = ["tests.peers.conftest_plugin"]`)."""
    first, second = slapd_pair_restored
    directory = world_readable_tempdir("mailferry-ldap-aliases-")
    config = directory / "ldap-aliases.cf"
    config.write_text(seed_file("ldap-aliases.cf").replace("ldap://ldap1.internal/ ldap://ldap2.internal/",
                                                            f"{first.url} {second.url}"))
    config.chmod(0o644)
    yield f"ldap:{config}"
    shutil.rmtree(directory, ignore_errors=True)
