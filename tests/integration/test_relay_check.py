"""`mailferry relay-check` against the real peers of the relay tests (tests/integration/test_delivery.py).

The smarthost is Dovecot's submission service standing in for smtp.gmail.com (STARTTLS
required, AUTH PLAIN/LOGIN after it, a certificate for smtp.gmail.test from peer_ca), found
through a dnsmasq the test runs. Each failure case of the relay tests gets its diagnosis and
the one line to change: an untrusted issuer, no allowed mechanism, a wrong password, no
STARTTLS; a working setup says so and exits 0. One Dovecot serves the whole module: the
cases differ only in mailferry's configuration.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import DAEMON_USER, ROOT, base_main_cf, daemon_user_ids, free_port, smtpd_master_cf
from tests.integration.test_delivery import seed_relay_config
from tests.peers import peer_tempdir
from tests.peers.dns import DnsServer
from tests.peers.dovecot import (
    GMAIL_USER, SUBMISSION_HOST, SUBMISSION_HOSTNAME, OAuth2SubmissionRelay, SubmissionRelay,
)
from tests.peers.mailferry import MailferryDaemon, private_settings
from tests.peers.oauth2_endpoint import CLIENT_ID, CLIENT_SECRET, TokenEndpoint
from tests.peers.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

MAILFERRY = str(Path(sys.executable).with_name("mailferry"))
ALIAS = "relay-alias.test"          # another name for the stand-in, which its certificate does not carry
PASSWORD = "S3cret-app-pw"       # distinctive, so that the output can be searched for it
WRONG_PASSWORD = "Wr0ng-s3cret!"


@pytest.fixture(scope="module")
def peers(peer_ca, submission_certificate):
    started, directories = [], []

    def start(peer):
        started.append(peer)
        return peer.start()

    def directory(prefix: str) -> Path:
        directories.append(peer_tempdir(prefix))
        return directories[-1]
    try:
        dns = start(DnsServer(directory("mailferry-dns-"), a={SUBMISSION_HOSTNAME: SUBMISSION_HOST, ALIAS: SUBMISSION_HOST},
                              mx={"gmail.test": [(10, SUBMISSION_HOSTNAME)]}))
        sink = start(SmtpSink(directory("mailferry-sink-")))
        relay = start(SubmissionRelay(directory("mailferry-submission-"), peer_ca, sink,
                                      users={GMAIL_USER: PASSWORD}, certificate=submission_certificate))
        plain = start(SmtpSink(directory("mailferry-plain-sink-")))   # no STARTTLS
        yield {"dns": dns, "relay": relay, "plain": plain, "sink": sink}
    finally:
        for peer in reversed(started):
            peer.stop()
        for path in directories:
            shutil.rmtree(path, ignore_errors=True)


def relay_check(peers, tmp_path: Path, *args: str, ca_file: Path, level: str = "encrypt",
                password: str = PASSWORD, **extra: str) -> subprocess.CompletedProcess:
    """relay-check on the seed's relay configuration, pointed at the stand-in."""
    tmp_path.chmod(0o755)
    settings = seed_relay_config(tmp_path, peers["relay"], ca_file, level, **extra)
    passwords = tmp_path / "sasl_passwd"
    passwords.write_text(f"{SUBMISSION_HOSTNAME} {GMAIL_USER}:{password}\n")
    subprocess.run([MAILFERRY, "postmap", f"hash:{passwords}"], check=True)
    (tmp_path / "main.cf").write_text(base_main_cf(tmp_path, **settings))
    (tmp_path / "master.cf").write_text(smtpd_master_cf(free_port()))
    environment = {**os.environ, "MAILFERRY_NAMESERVERS": peers["dns"].nameserver}
    completed = subprocess.run([MAILFERRY, "-c", str(tmp_path), "relay-check", *args], capture_output=True,
                               text=True, timeout=60, env=environment)
    print(completed.stdout, completed.stderr)     # shown when a test fails
    assert_no_password(completed, password)
    return completed


def assert_no_password(completed: subprocess.CompletedProcess, password: str) -> None:
    """Neither the password nor any encoding of it that AUTH would send is in the output."""
    output = completed.stdout + completed.stderr
    assert password not in output
    user, secret = GMAIL_USER.encode(), password.encode()
    for raw in (b"\0" + user + b"\0" + secret, secret):
        assert base64.b64encode(raw).decode() not in output


def fixes(completed: subprocess.CompletedProcess) -> list[str]:
    return [line.split("fix: ", 1)[1] for line in completed.stdout.splitlines() if line.startswith("  fix: ")]


def test_a_working_relay_says_so_and_exits_0(peers, tmp_path, peer_ca):
    before = len(peers["sink"].messages())
    completed = relay_check(peers, tmp_path, ca_file=peer_ca.cert_path, level="secure")
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "result: OK" in out and "(authenticated)" in out
    assert f"certificate: verified against CAfile {peer_ca.cert_path}" in out
    assert f"subject CN={SUBMISSION_HOSTNAME}" in out and "issuer CN=mailferry test peer CA" in out
    assert f"DNS:{SUBMISSION_HOSTNAME}" in out
    assert "PLAIN: allowed" in out and "LOGIN: allowed" in out
    assert f"entry '{SUBMISSION_HOSTNAME}' in hash:{tmp_path}/sasl_passwd matched" in out
    assert f"keys tried: {SUBMISSION_HOSTNAME}" in out
    assert f"authentication succeeded as {GMAIL_USER}" in out
    assert fixes(completed) == []
    # AUTH, then QUIT: the smarthost's sink never saw a transaction.
    assert len(peers["sink"].messages()) == before


def test_an_untrusted_issuer_names_the_ca_file_to_set(peers, tmp_path, untrusted_ca):
    completed = relay_check(peers, tmp_path, ca_file=untrusted_ca.cert_path, level="verify")
    assert completed.returncode == 1
    assert "NOT verified against" in completed.stdout and "untrusted issuer" in completed.stdout
    assert "issuer CN=mailferry test peer CA" in completed.stdout   # shown although it did not verify
    assert fixes(completed)[0].startswith("smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt")


def test_a_name_the_certificate_does_not_carry_names_the_one_it_does(peers, tmp_path, peer_ca):
    port = peers["relay"].port
    completed = relay_check(peers, tmp_path, f"[{ALIAS}]:{port}", ca_file=peer_ca.cert_path, level="verify")
    assert completed.returncode == 1
    assert f"certificate names {SUBMISSION_HOSTNAME} do not match {ALIAS}" in completed.stdout
    assert fixes(completed)[0].startswith(f"relayhost = [{SUBMISSION_HOSTNAME}]:{port}")


def test_an_untrusted_issuer_at_may_is_a_warning_and_secure_is_advised_only_when_it_verifies(
        peers, tmp_path, untrusted_ca):
    completed = relay_check(peers, tmp_path, ca_file=untrusted_ca.cert_path, level="may")
    assert completed.returncode == 0, completed.stdout
    assert "untrusted issuer" in completed.stdout
    assert "does not require a verified certificate" in completed.stdout
    assert fixes(completed) == ["smtp_tls_security_level = encrypt"]


def test_no_allowed_mechanism_says_which_option_to_change(peers, tmp_path, peer_ca):
    completed = relay_check(peers, tmp_path, ca_file=peer_ca.cert_path,
                            smtp_sasl_security_options="noplaintext",
                            smtp_sasl_tls_security_options="$smtp_sasl_security_options")
    out = completed.stdout
    assert completed.returncode == 1
    assert "PLAIN: excluded, forbidden by smtp_sasl_tls_security_options = noplaintext" in out
    assert "No worthy mechs found" in out
    assert fixes(completed) == ["smtp_sasl_security_options = noanonymous"]


def test_a_mechanism_filter_that_removes_plain_and_login(peers, tmp_path, peer_ca):
    completed = relay_check(peers, tmp_path, ca_file=peer_ca.cert_path, smtp_sasl_mechanism_filter="cram-md5")
    assert completed.returncode == 1
    assert "PLAIN: excluded, removed by smtp_sasl_mechanism_filter = cram-md5" in completed.stdout
    assert fixes(completed) == ["smtp_sasl_mechanism_filter = plain, login"]


def test_a_wrong_password_names_the_entry_to_fix_and_never_shows_it(peers, tmp_path, peer_ca):
    completed = relay_check(peers, tmp_path, ca_file=peer_ca.cert_path, password=WRONG_PASSWORD)
    assert completed.returncode == 1
    assert f"the server refused the login of {GMAIL_USER}: 535 5.7.8" in completed.stdout
    [fix] = fixes(completed)
    assert f"entry '{SUBMISSION_HOSTNAME}' in {tmp_path}/sasl_passwd" in fix
    assert f"mailferry postmap hash:{tmp_path}/sasl_passwd" in fix


def test_no_starttls_with_encrypt_says_the_server_does_not_offer_it(peers, tmp_path, peer_ca):
    completed = relay_check(peers, tmp_path, peers["plain"].nexthop, ca_file=peer_ca.cert_path)
    assert completed.returncode == 1
    assert "the server does not offer STARTTLS" in completed.stdout
    assert "relayhost = [127.0.0.1]:587" in fixes(completed)[0]   # the cause first


def test_no_password_entry_lists_the_keys_tried(peers, tmp_path, peer_ca):
    nexthop = f"[{SUBMISSION_HOST}]:{peers['relay'].port}"
    completed = relay_check(peers, tmp_path, nexthop, ca_file=peer_ca.cert_path)
    assert completed.returncode == 1
    assert f"keys tried: {SUBMISSION_HOST}, {nexthop}" in completed.stdout
    assert fixes(completed)[0] == (f"add the line \"{nexthop} USERNAME:PASSWORD\" to {tmp_path}/sasl_passwd, "
                                   f"then run `mailferry postmap hash:{tmp_path}/sasl_passwd`")


def test_an_unbracketed_next_hop_is_looked_up_in_mx(peers, tmp_path, peer_ca):
    completed = relay_check(peers, tmp_path, f"gmail.test:{peers['relay'].port}", ca_file=peer_ca.cert_path,
                            level="verify")
    assert completed.returncode == 0, completed.stdout
    assert "(MX lookup)" in completed.stdout
    assert f"connected to {SUBMISSION_HOSTNAME}[{SUBMISSION_HOST}]:{peers['relay'].port}" in completed.stdout


def check_online(peers, tmp_path: Path, ca_file: Path, level: str) -> subprocess.CompletedProcess:
    relay_check(peers, tmp_path, ca_file=ca_file, level=level)      # writes the configuration
    environment = {**os.environ, "MAILFERRY_NAMESERVERS": peers["dns"].nameserver}
    completed = subprocess.run([MAILFERRY, "-c", str(tmp_path), "check", "--online"], capture_output=True,
                               text=True, timeout=60, env=environment)
    print(completed.stdout, completed.stderr)
    assert_no_password(completed, PASSWORD)
    return completed


@pytest.mark.parametrize("level, severity, code", [("verify", "error", 1), ("encrypt", "warning", 0)])
def test_check_online_reports_a_relay_certificate_the_ca_file_cannot_verify(peers, tmp_path, untrusted_ca,
                                                                            level, severity, code):
    completed = check_online(peers, tmp_path, untrusted_ca.cert_path, level)
    assert completed.returncode == code
    assert (f"mailferry/check: {severity}: {tmp_path}/main.cf, line " in completed.stderr
            and f"relay [{SUBMISSION_HOSTNAME}]:{peers['relay'].port}: the server certificate does not verify "
                f"against CAfile {untrusted_ca.cert_path}: untrusted issuer" in completed.stderr), completed.stderr
    assert "set smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt" in completed.stderr


def test_check_online_is_quiet_about_a_certificate_that_verifies(peers, tmp_path, peer_ca):
    completed = check_online(peers, tmp_path, peer_ca.cert_path, "secure")
    assert completed.returncode == 0, completed.stderr
    assert "relay [" not in completed.stderr
    assert "0 error(s), 0 warning(s)" in completed.stderr


def test_the_gmail_relay_example_proved_by_relay_check_relays_through_the_real_daemon(peers, peer_ca):
    """The README's quick start: examples/gmail-relay with its sasl_passwd created, relayhost and
    CAfile pointed at the stand-in; relay-check says OK, then the daemon relays a message."""
    example = ROOT / "examples" / "gmail-relay"
    directory = peer_tempdir("mailferry-gmail-example-")
    port = free_port()
    relayhost = f"[{SUBMISSION_HOSTNAME}]:{peers['relay'].port}"
    main_cf = (example / "main.cf").read_text() + "".join(f"{name} = {value}\n" for name, value in {
        "relayhost": relayhost, "smtp_tls_CAfile": peer_ca.cert_path,     # the stand-in, not Gmail
        **private_settings(directory, DAEMON_USER)}.items())
    master_cf = (example / "master.cf").read_text().replace("127.0.0.1:2526 ", f"127.0.0.1:{port} ")
    daemon = MailferryDaemon(directory, main_cf, master_cf, port, peers["dns"].nameserver)
    try:
        passwords = daemon.config_dir / "sasl_passwd"
        passwords.write_text(f"{relayhost} {GMAIL_USER}:{PASSWORD}\n")
        passwords.chmod(0o600)
        assert daemon.command("postmap", f"hash:{passwords}").returncode == 0
        proof = daemon.command("relay-check")
        print(proof.stdout, proof.stderr)
        assert_no_password(proof, PASSWORD)
        assert proof.returncode == 0 and "result: OK" in proof.stdout
        assert daemon.command("check").returncode == 0
        before = len(peers["sink"].messages())
        daemon.start()
        submitted = daemon.command("sendmail", "-f", "root@relay.example.test", "friend@elsewhere.example",
                                   input="Subject: hello\n\nfrom mailferry\n")    # as the README's last step
        assert submitted.returncode == 0, submitted.stderr
        daemon.wait_for_log("status=sent")
        messages = peers["sink"].wait_for_messages(before + 1, timeout=20)
        assert messages[-1].recipients == ["friend@elsewhere.example"]
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- XOAUTH2 entries (oauth2:/settings.json passwords, delivery/oauth2.py) ---------------------------

@pytest.fixture(scope="module")
def oauth2_peers(peers, peer_ca, submission_certificate):
    endpoint = TokenEndpoint(GMAIL_USER).start()
    directory = peer_tempdir("mailferry-oauth2-submission-")
    relay = OAuth2SubmissionRelay(directory, peer_ca, peers["sink"], introspection_url=endpoint.url + "/introspect",
                                  certificate=submission_certificate)
    try:
        relay.start()
        yield endpoint, relay
    finally:
        relay.stop()
        endpoint.stop()
        shutil.rmtree(directory, ignore_errors=True)


def oauth2_relay_check(peers, oauth2_peers, tmp_path: Path, refresh_token: str, peer_ca) -> subprocess.CompletedProcess:
    endpoint, relay = oauth2_peers
    tmp_path.chmod(0o755)
    settings = tmp_path / "gmail-oauth2.json"
    settings.write_text(json.dumps({"user": GMAIL_USER, "token_endpoint": endpoint.token_url, "client_id": CLIENT_ID,
                                    "client_secret": CLIENT_SECRET, "refresh_token": refresh_token}))
    settings.chmod(0o600)
    relayhost = f"[{SUBMISSION_HOSTNAME}]:{relay.port}"
    passwords = tmp_path / "sasl_passwd"
    passwords.write_text(f"{relayhost} {GMAIL_USER}:oauth2:{settings}\n")
    passwords.chmod(0o600)
    subprocess.run([MAILFERRY, "postmap", f"hash:{passwords}"], check=True)
    (tmp_path / "main.cf").write_text(base_main_cf(
        tmp_path, relayhost=relayhost, smtp_sasl_auth_enable="yes", smtp_sasl_password_maps=f"hash:{passwords}",
        smtp_sasl_security_options="noanonymous", smtp_sasl_mechanism_filter="xoauth2",
        smtp_tls_security_level="secure", smtp_tls_CAfile=str(peer_ca.cert_path), default_transport="smtp"))
    (tmp_path / "master.cf").write_text(smtpd_master_cf(free_port()))
    environment = {**os.environ, "MAILFERRY_NAMESERVERS": peers["dns"].nameserver}
    completed = subprocess.run([MAILFERRY, "-c", str(tmp_path), "relay-check"], capture_output=True, text=True,
                               timeout=60, env=environment)
    print(completed.stdout, completed.stderr)
    output = completed.stdout + completed.stderr
    secrets = [*endpoint.access_tokens, *endpoint.refresh_tokens, CLIENT_SECRET]
    assert secrets and not [secret for secret in secrets if secret in output]
    return completed


def test_an_xoauth2_entry_reports_its_token_status_never_the_token(peers, oauth2_peers, tmp_path, peer_ca):
    endpoint, _ = oauth2_peers
    completed = oauth2_relay_check(peers, oauth2_peers, tmp_path, endpoint.new_refresh_token(), peer_ca)
    out = completed.stdout
    assert completed.returncode == 0, out
    assert "XOAUTH2: allowed" in out and "OAUTHBEARER: excluded, removed by smtp_sasl_mechanism_filter" in out
    assert f"OAuth2 settings {tmp_path}/gmail-oauth2.json" in out
    assert "OAuth2 token: cached access token valid until" in out
    assert f"authentication succeeded as {GMAIL_USER}" in out
    # The token relay-check fetched is the daemon's to use: in its cache, owned by mail_owner.
    cached = list((tmp_path / "queue" / "oauth2").glob("*.json"))
    assert cached and all(path.stat().st_uid == daemon_user_ids()[0] for path in cached)


def test_a_revoked_refresh_token_says_to_run_mailferry_oauth2(peers, oauth2_peers, tmp_path, peer_ca):
    endpoint, _ = oauth2_peers
    refresh_token = endpoint.new_refresh_token()
    endpoint.revoke(refresh_token)
    completed = oauth2_relay_check(peers, oauth2_peers, tmp_path, refresh_token, peer_ca)
    assert completed.returncode == 1
    assert "invalid_grant" in completed.stdout
    assert fixes(completed) == [f"get a new refresh token: mailferry oauth2 --settings {tmp_path}/gmail-oauth2.json "
                                "(docs/oauth2.md)"]


def test_an_inline_password_table_is_named_without_its_text(peers, tmp_path, peer_ca):
    relayhost = f"[{SUBMISSION_HOSTNAME}]:{peers['relay'].port}"
    completed = relay_check(peers, tmp_path, ca_file=peer_ca.cert_path, password=WRONG_PASSWORD,
                            smtp_sasl_password_maps=f"inline:{{ {relayhost}={GMAIL_USER}:{WRONG_PASSWORD} }}")
    assert completed.returncode == 1
    assert f"entry '{relayhost}' in inline:{{...}} matched" in completed.stdout
    assert "535 5.7.8" in completed.stdout


def test_check_online_with_an_unreachable_relay_says_it_could_not_look(peers, tmp_path, peer_ca):
    relay_check(peers, tmp_path, ca_file=peer_ca.cert_path, level="encrypt",
                relayhost=f"[127.0.0.1]:{free_port()}")
    environment = {**os.environ, "MAILFERRY_NAMESERVERS": peers["dns"].nameserver}
    completed = subprocess.run([MAILFERRY, "-c", str(tmp_path), "check", "--online"], capture_output=True,
                               text=True, timeout=60, env=environment)
    assert completed.returncode == 0, completed.stderr
    assert "--online could not check the certificate: cannot reach" in completed.stderr
