"""XOAUTH2 and OAUTHBEARER relaying through the real daemon (issue 16, done-when 2).

The smarthost is Dovecot's submission service (STARTTLS required) whose oauth2 passdb asks a
token endpoint the test runs on loopback (tests/peers/oauth2_endpoint.py) whether each bearer
token is still active. The daemon's smtp_sasl_password_maps holds the seed's key with an
`oauth2:/path` password naming an OAuth2 settings file; mailferry gets access tokens from the
same endpoint with the refresh_token grant.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import daemon_user_ids, world_readable_tempdir
from tests.integration.test_delivery import require_tool_mailferry, send, wait_until_deferred
from tests.peers.dovecot import GMAIL_USER, SUBMISSION_HOST, SUBMISSION_HOSTNAME, OAuth2SubmissionRelay
from tests.peers.oauth2_endpoint import CLIENT_ID, CLIENT_SECRET, TokenEndpoint

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


@pytest.fixture
def token_endpoint():
    endpoint = TokenEndpoint(GMAIL_USER).start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def oauth2_relay(_peers, smtp_sink_factory, peer_ca, submission_certificate, token_endpoint):
    relay = OAuth2SubmissionRelay(_peers.directory("mailferry-oauth2-submission-"), peer_ca, smtp_sink_factory(),
                                  introspection_url=token_endpoint.url + "/introspect",
                                  certificate=submission_certificate)
    return _peers.start(relay)


@pytest.fixture
def gmail_dns(dns_server_factory):
    return dns_server_factory(a={SUBMISSION_HOSTNAME: SUBMISSION_HOST})


@pytest.fixture
def oauth2_daemon(daemon_factory, gmail_dns, oauth2_relay, token_endpoint, peer_ca):
    directories = []

    def make(refresh_token: str | None = None, **extra: str):
        directory = world_readable_tempdir("mailferry-oauth2-config-")
        directories.append(directory)
        settings = write_settings(directory / "gmail-oauth2.json", token_endpoint,
                                  refresh_token or token_endpoint.new_refresh_token())
        passwords = directory / "sasl_passwd"
        passwords.write_text(f"[{SUBMISSION_HOSTNAME}]:{oauth2_relay.port} {GMAIL_USER}:oauth2:{settings}\n")
        passwords.chmod(0o600)
        subprocess.run([require_tool_mailferry(), "postmap", f"hash:{passwords}"], check=True)
        options = {
            "relayhost": f"[{SUBMISSION_HOSTNAME}]:{oauth2_relay.port}",
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"hash:{passwords}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_mechanism_filter": "xoauth2",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": str(peer_ca.cert_path),
            "smtp_tls_eccert_file": "",
            "smtp_tls_eckey_file": "",
            "default_transport": "smtp",
            # A session, and an AUTH, per message: the case where token lifetimes matter.
            "smtp_connection_cache_on_demand": "no",
            "minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s",
            **extra,
        }
        daemon = daemon_factory(nameservers=gmail_dns.nameserver, **options)
        daemon.settings_file = settings
        daemon.passwords = passwords
        return daemon.start()

    yield make
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def write_settings(path: Path, endpoint: TokenEndpoint, refresh_token: str) -> Path:
    """As `mailferry oauth2` writes it: mode 0600, owned by mail_owner."""
    path.write_text(json.dumps({"user": GMAIL_USER, "token_endpoint": endpoint.token_url, "client_id": CLIENT_ID,
                                "client_secret": CLIENT_SECRET, "refresh_token": refresh_token}))
    path.chmod(0o600)
    os.chown(path, *daemon_user_ids())
    return path


def assert_no_tokens_logged(daemon, endpoint: TokenEndpoint) -> None:
    text = daemon.log() + (daemon.directory / "stderr.log").read_text()
    secrets = [*endpoint.access_tokens, *endpoint.refresh_tokens, CLIENT_SECRET]
    assert secrets and not [secret for secret in secrets if secret in text]


def first_delivery(daemon, relay, endpoint) -> None:
    """One message relayed with the first access token the endpoint handed out."""
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    relay.sink.wait_for_messages(1, timeout=20)
    assert endpoint.refreshes == 1


def test_an_xoauth2_relay_keeps_delivering_while_tokens_expire_and_are_refreshed(oauth2_daemon, oauth2_relay,
                                                                                 token_endpoint):
    token_endpoint.lifetime = 3.0        # refreshed 0.6 s before it runs out
    daemon = oauth2_daemon()
    count = 10
    for number in range(count):
        send(daemon, "alice@example.test", ["friend@elsewhere.example"], subject=f"oauth2 {number}")
        oauth2_relay.sink.wait_for_messages(number + 1, timeout=20)
        time.sleep(0.6)                  # paces the run over several token lifetimes; not a proof
    daemon.wait_for_log("status=sent", count=count)
    log = daemon.wait_for_log(": removed", count=count)
    assert "status=deferred" not in log and "status=bounced" not in log
    assert token_endpoint.refreshes >= 3, token_endpoint.refreshes   # ~6 s of mail, 3 s tokens
    assert len(re.findall(r"OAuth2 access token for \S+ refreshed from http://127\.0\.0\.1:\d+/token, "
                          r"valid for 3s", log)) == token_endpoint.refreshes
    assert oauth2_relay.log().count(f"Login: user=<{GMAIL_USER}>, method=XOAUTH2") >= count
    assert_no_tokens_logged(daemon, token_endpoint)


def test_a_token_the_server_refuses_is_refreshed_once_and_the_mail_goes(oauth2_daemon, oauth2_relay,
                                                                          token_endpoint):
    daemon = oauth2_daemon()
    first_delivery(daemon, oauth2_relay, token_endpoint)
    token_endpoint.expire_access_tokens()    # cut short before mailferry's own expiry time
    send(daemon, "alice@example.test", ["friend@elsewhere.example"], subject="second")
    oauth2_relay.sink.wait_for_messages(2, timeout=20)
    log = daemon.wait_for_log("status=sent", count=2)
    assert token_endpoint.refreshes == 2
    assert re.search(rf"server {SUBMISSION_HOSTNAME}\[{SUBMISSION_HOST}\] refused the OAuth2 access token for "
                     rf"{GMAIL_USER} \(schemes=bearer, scope=mail, status=401\): 535 5\.7\.8 .*; refreshing it",
                     log), log[-3000:]
    assert "status=deferred" not in log
    assert_no_tokens_logged(daemon, token_endpoint)


def test_a_revoked_refresh_token_defers_the_mail_and_says_what_to_do(oauth2_daemon, oauth2_relay, token_endpoint):
    refresh_token = token_endpoint.new_refresh_token()
    token_endpoint.revoke(refresh_token)
    daemon = oauth2_daemon(refresh_token)
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    [message] = wait_until_deferred(daemon)
    log = daemon.wait_for_log("status=deferred")
    assert re.search(rf"warning: SASL authentication failure: cannot authenticate to server "
                     rf"{SUBMISSION_HOSTNAME}\[{SUBMISSION_HOST}\]:\d+: OAuth2 refresh token for {GMAIL_USER} in "
                     rf"{re.escape(str(daemon.settings_file))} was refused by http://127\.0\.0\.1:\d+/token: "
                     r"invalid_grant \(Token has been expired or revoked\.\); mail stays queued: get a new refresh "
                     rf"token with `mailferry oauth2 --settings {re.escape(str(daemon.settings_file))} \.\.\.`", log)
    assert re.search(r"dsn=4\.7\.0, status=deferred \(SASL authentication failed; cannot authenticate", log)
    assert "status=bounced" not in log and not oauth2_relay.sink.messages()
    assert message["recipients"][0]["delay_reason"].startswith("SASL authentication failed")
    assert_no_tokens_logged(daemon, token_endpoint)


def test_a_restart_reuses_the_cached_token_and_the_cache_is_mail_owners_alone(oauth2_daemon, oauth2_relay,
                                                                            token_endpoint):
    daemon = oauth2_daemon()
    first_delivery(daemon, oauth2_relay, token_endpoint)
    [cached] = list_cache(daemon)
    info = cached.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == daemon_user_ids()
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    daemon.stop()
    daemon.start()
    send(daemon, "alice@example.test", ["friend@elsewhere.example"], subject="after the restart")
    oauth2_relay.sink.wait_for_messages(2, timeout=20)
    daemon.wait_for_log("status=sent", count=2)
    assert token_endpoint.refreshes == 1     # the cached token was still good: no new refresh


def list_cache(daemon) -> list[Path]:
    queue_directory = daemon.queue_directory
    return [path for path in (queue_directory / "oauth2").iterdir() if path.suffix == ".json"]


def test_oauthbearer_through_the_mechanism_filter(oauth2_daemon, oauth2_relay, token_endpoint):
    daemon = oauth2_daemon(smtp_sasl_mechanism_filter="oauthbearer")
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    oauth2_relay.sink.wait_for_messages(1, timeout=20)
    daemon.wait_for_log("status=sent")
    oauth2_relay.wait_for_log(f"Login: user=<{GMAIL_USER}>, method=OAUTHBEARER")


def test_an_unreachable_token_endpoint_defers(oauth2_daemon, oauth2_relay, token_endpoint):
    daemon = oauth2_daemon()
    token_endpoint.stop()
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    wait_until_deferred(daemon)
    log = daemon.wait_for_log("status=deferred")
    assert re.search(r"OAuth2 token endpoint|token endpoint http://127\.0\.0\.1:\d+/token unreachable", log)
    assert "status=bounced" not in log


# --- `mailferry oauth2`: the first refresh token ------------------------------------------------------

class Cli:
    """`mailferry -c DIR oauth2 ...` as an administrator runs it; its output read line by line."""

    def __init__(self, config_dir: Path, *args: str):
        self.process = subprocess.Popen([require_tool_mailferry(), "-c", str(config_dir), "oauth2", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.output: list[str] = []

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        self.process.kill()
        raise AssertionError(f"/{pattern}/ not printed:\n{''.join(self.output)}\n{self.process.stderr.read()}")

    def finish(self, timeout: float = 30.0) -> str:
        out, err = self.process.communicate(timeout=timeout)
        self.output.append(out)
        assert self.process.returncode == 0, f"exit {self.process.returncode}: {err}\n{''.join(self.output)}"
        return "".join(self.output)


def test_the_device_flow_writes_a_settings_file_and_the_map_entry(tmp_path, token_endpoint):
    config_dir = world_readable_tempdir("mailferry-oauth2-cli-")
    try:
        (config_dir / "main.cf").write_text("mail_owner = nobody\n")
        passwords = config_dir / "sasl_passwd"
        passwords.write_text("# the seed's file\n[smtp.gmail.test]:587 old@gmail.com:old password\n"
                             "other.example.com someone:secret\n")
        settings = config_dir / "oauth2" / "user.json"
        settings.parent.mkdir()
        cli = Cli(config_dir, "--token-endpoint", token_endpoint.token_url,
                  "--device-endpoint", token_endpoint.url + "/device", "--client-id", CLIENT_ID,
                  "--client-secret", CLIENT_SECRET, "--user", GMAIL_USER, "--scope", "https://mail.test/",
                  "--settings", str(settings), "--map", f"hash:{passwords}", "--key", "[smtp.gmail.test]:587")
        found = cli.wait_for_line(r"open (\S+) in a browser and enter the code (\w+)")
        assert found.group(1) == token_endpoint.url + "/device"
        token_endpoint.approve_device(found.group(2))       # the administrator, in a browser elsewhere
        output = cli.finish()
        assert CLIENT_SECRET not in output and not [token for token in token_endpoint.refresh_tokens if token in output]
        data = json.loads(settings.read_text())
        assert data["refresh_token"] in token_endpoint.refresh_tokens and data["user"] == GMAIL_USER
        assert data["token_endpoint"] == token_endpoint.token_url and data["client_id"] == CLIENT_ID
        info = settings.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == daemon_user_ids()
        assert token_endpoint.grants == ["urn:ietf:params:oauth:grant-type:device_code"] * len(token_endpoint.grants)
        # the map: the key's line replaced, the others kept, the indexed file rebuilt
        lines = passwords.read_text().splitlines()
        assert lines == ["# the seed's file", f"[smtp.gmail.test]:587 {GMAIL_USER}:oauth2:{settings}",
                         "other.example.com someone:secret"]
        assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        query = subprocess.run([require_tool_mailferry(), "postmap", "-q", "[smtp.gmail.test]:587",
                                f"hash:{passwords}"], capture_output=True, text=True, check=True)
        assert query.stdout.strip() == f"{GMAIL_USER}:oauth2:{settings}"
        # and the refresh token it wrote works
        from mailferry.delivery import oauth2
        import asyncio
        token = asyncio.run(oauth2.TokenManager(str(tmp_path / "cache")).access_token(
            oauth2.load_settings(str(settings))))
        assert token in token_endpoint.access_tokens
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def test_the_loopback_flow_with_pkce_writes_an_entry_the_daemon_relays_with(oauth2_daemon, oauth2_relay,
                                                                           token_endpoint):
    daemon = oauth2_daemon()
    old = json.loads(daemon.settings_file.read_text())["refresh_token"]
    key = f"[{SUBMISSION_HOSTNAME}]:{oauth2_relay.port}"
    cli = Cli(daemon.config_dir, "--token-endpoint", token_endpoint.token_url,
              "--authorize-endpoint", token_endpoint.url + "/authorize", "--client-id", CLIENT_ID,
              "--client-secret", CLIENT_SECRET, "--user", GMAIL_USER, "--scope", "https://mail.test/",
              "--settings", str(daemon.settings_file), "--map", f"hash:{daemon.passwords}", "--key", key)
    cli.wait_for_line(r"open this URL in a browser")
    url = cli.wait_for_line(r"^(http://127\.0\.0\.1:\d+/authorize\?\S+)$").group(1)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256" and query["redirect_uri"].startswith("http://127.0.0.1:")
    # the browser: the provider redirects it to the loopback listener, which takes the code
    with urllib.request.urlopen(url, timeout=10) as page:
        assert b"authorization received" in page.read()
    cli.finish()
    assert "authorization_code" in token_endpoint.grants
    token_endpoint.revoke(old)            # only the new entry can work now
    assert daemon.command("reload").returncode == 0
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    oauth2_relay.sink.wait_for_messages(1, timeout=20)
    log = daemon.wait_for_log("status=sent")
    assert "status=deferred" not in log
