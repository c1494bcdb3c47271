"""The dialog scripts of tests/dialogs, played against the real daemon over TCP.

The same scripts run against the sans-IO core in tests/dialogs; here they
go through listeners, sessions, relay control, cleanup and the queue. A
script's `relay: reject` becomes an untrusted client (127.0.0.2, with
mynetworks = 127.0.0.1/32) in front of reject_unauth_destination; `tls:
offered` a certificate. Scripts about AUTH are left to the core: the daemon
does not offer AUTH yet.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dialogs.script import SocketTransport, load_script, run_script
from tests.integration.conftest import Daemon, base_main_cf, free_port, smtpd_master_cf, world_readable_tempdir

pytestmark = pytest.mark.integration

DIALOGS = sorted((Path(__file__).resolve().parents[1] / "dialogs").glob("*.dialog"))
# Parameters the daemon reads from main.cf as the core's tests set them.
DAEMON_PARAMETERS = {
    "myhostname", "smtpd_banner", "message_size_limit", "smtpd_recipient_limit",
    "smtpd_recipient_overshoot_limit", "hopcount_limit", "smtpd_soft_error_limit",
    "smtpd_hard_error_limit", "smtpd_junk_command_limit", "line_length_limit",
    "smtpd_forbid_bare_newline", "smtpd_forbid_bare_newline_reject_code",
    "smtpd_forbid_unauth_pipelining", "smtpd_helo_required", "strict_rfc821_envelopes",
    "disable_vrfy_command", "smtputf8_enable", "smtpd_discard_ehlo_keywords",
}


def playable(path: Path) -> bool:
    script = load_script(path)
    return "auth" not in script.options and set(script.settings()) <= DAEMON_PARAMETERS


PLAYABLE = [path for path in DIALOGS if playable(path)]


class DaemonPool:
    """One daemon per distinct configuration the scripts ask for."""

    def __init__(self):
        self.daemons: dict[tuple, Daemon] = {}

    def daemon_for(self, script) -> Daemon:
        relay_reject = script.options.get("relay") == "reject"
        tls = script.options.get("tls") == "offered"
        key = (tuple(sorted(script.settings().items())), relay_reject, tls)
        if key not in self.daemons:
            self.daemons[key] = self._start(dict(script.settings()), relay_reject, tls)
        return self.daemons[key]

    def _start(self, settings: dict[str, str], relay_reject: bool, tls: bool) -> Daemon:
        directory = world_readable_tempdir("mailferry-dialogs-")
        port = free_port()
        settings.setdefault("myhostname", "mx.example")
        settings["mydestination"] = "mx.example"
        if relay_reject:
            settings["smtpd_relay_restrictions"] = "permit_mynetworks, reject_unauth_destination"
        if tls:
            settings.update(_certificate(directory))
        main_cf = base_main_cf(directory, **settings)
        return Daemon(directory, main_cf, smtpd_master_cf(port), port).start()

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()
            shutil.rmtree(daemon.directory, ignore_errors=True)


def _certificate(directory: Path) -> dict[str, str]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key)}


@pytest.fixture(scope="module")
def pool():
    daemons = DaemonPool()
    yield daemons
    daemons.close()


def test_most_scripts_can_run_against_the_daemon():
    assert len(PLAYABLE) >= len(DIALOGS) - 5, [path.name for path in DIALOGS if path not in PLAYABLE]


@pytest.mark.parametrize("path", PLAYABLE, ids=lambda path: path.stem)
def test_dialog_against_the_daemon(pool, path):
    script = load_script(path)
    daemon = pool.daemon_for(script)
    source = ("127.0.0.2", 0) if script.options.get("relay") == "reject" else None
    transport = SocketTransport("127.0.0.1", daemon.port, source_address=source)
    try:
        run_script(script, transport)
    finally:
        transport.close()
