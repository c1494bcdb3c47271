"""The examples work as they stand: each runs in the real daemon with only what its README says
to edit changed (the directory servers, the listener's port) and the files its NEEDS lists
created. examples/gmail-relay is run in tests/integration/test_relay_check.py (relay-check,
then a relayed message); `check` on every example is tests/unit/cli/test_examples.py.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import DAEMON_USER, ROOT, free_port, world_readable_tempdir
from tests.peers.mailferry import MailferryDaemon, private_settings
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


@pytest.fixture
def example_daemon():
    made: list[MailferryDaemon] = []

    def make(name: str, listener: str, **overrides: str) -> MailferryDaemon:
        """examples/NAME in a daemon: its files as they stand, its listener on a free port, the
        queue and log where MailferryDaemon keeps them, then `overrides` (main.cf's last word)."""
        example = ROOT / "examples" / name
        directory = world_readable_tempdir(f"mailferry-example-{name}-")
        port = free_port()
        settings = {**private_settings(directory, DAEMON_USER), **overrides}
        main_cf = (example / "main.cf").read_text() + "".join(f"{key} = {value}\n" for key, value in settings.items())
        master_cf = (example / "master.cf").read_text().replace(f"{listener} ", f"127.0.0.1:{port} ")
        daemon = MailferryDaemon(directory, main_cf, master_cf, port)
        for path in example.iterdir():
            if path.is_file() and path.name not in ("main.cf", "master.cf"):
                shutil.copy(path, daemon.config_dir / path.name)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
        shutil.rmtree(daemon.directory, ignore_errors=True)


def test_ldap_routing_delivers_each_seed_address_to_its_routing_address(example_daemon, slapd_pair_restored,
                                                                         smtp_sink):
    """Edited as its README says: server_host names the directory servers; the mailbox host
    mail1.internal is the sink (transport_maps, as main.cf's comment shows)."""
    first, second = slapd_pair_restored
    daemon = example_daemon("ldap-routing", "127.0.0.1:2525",
                            transport_maps=f"inline:{{ mail1.internal=smtp:{smtp_sink.nexthop} }}")
    aliases = daemon.config_dir / "ldap-aliases.cf"
    aliases.write_text(aliases.read_text().replace("ldap://ldap1.internal/ ldap://ldap2.internal/",
                                                   f"{first.url} {second.url}"))
    assert daemon.command("check").returncode == 0
    daemon.start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        assert client.ehlo("client.test")[0] == 250
        assert client.mail("someone@elsewhere.test")[0] == 250
        for address in SEED_ADDRESSES:
            assert client.rcpt(address)[0] == 250, address
        code, text = client.rcpt("nobody-known@example.com")
        assert code == 550, text                     # the directory does not know it: refused at RCPT
        assert client.data(b"Subject: to John\r\n\r\nhello\r\n")[0] == 250
    [sunk] = smtp_sink.wait_for_messages(1, timeout=30)
    # Every alias reaches the one routing address (one RCPT per original recipient, as Postfix's
    # cleanup keeps recipients whose original recipient differs).
    assert set(sunk.recipients) == {SEED_ROUTING_ADDRESS} and len(sunk.recipients) == len(SEED_ADDRESSES)


def make_submission_files(daemon: MailferryDaemon, password: str) -> None:
    """What NEEDS lists: tls/cert.pem, tls/key.pem, sasl_users (user1, user3, user4)."""
    tls = daemon.config_dir / "tls"
    tls.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=mail.example.com", "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem")],
                   check=True, capture_output=True)
    lines = [daemon.command("pw", "-s", "BLF-CRYPT", "-p", password, "-u", user).stdout
             for user in ("user1", "user3", "user4")]
    (daemon.config_dir / "sasl_users").write_text("".join(lines))


def test_submission_lets_each_login_send_only_as_its_own_addresses(example_daemon):
    daemon = example_daemon("submission", "127.0.0.1:5870")
    make_submission_files(daemon, "a good password")
    checked = daemon.command("check")
    assert checked.returncode == 0, checked.stderr
    daemon.start()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE    # the test's self-signed pair

    def login(user: str) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=30)
        client.ehlo("client.test")
        assert not client.has_extn("auth"), "AUTH before STARTTLS"    # smtpd_tls_auth_only
        client.starttls(context=context)
        client.ehlo("client.test")
        client.login(user, "a good password")
        return client

    with login("user1") as client:
        for own in ("user1@example.com", "user2@example.com"):       # the seed's table: user1 owns both
            assert client.mail(own)[0] == 250, own
            assert client.rcpt("friend@example.net")[0] == 250
            client.rset()
        assert client.mail("user3@example.com")[0] == 250
        code, text = client.rcpt("friend@example.net")
        assert code == 553 and b"not owned by user user1" in text, text
    with login("user4") as client:                                    # @example.com user4: any other address
        assert client.mail("anyone@example.com")[0] == 250
        assert client.rcpt("friend@example.net")[0] == 250
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.mail("user1@example.com")[0] == 250
        code, _ = client.rcpt("friend@example.net")
        assert code == 554, "no login, no relaying (smtpd_client_restrictions=permit_sasl_authenticated,reject)"
