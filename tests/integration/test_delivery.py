"""Delivery end to end: the real daemon sends to real peers.

The smarthost is Dovecot's submission service on 127.0.0.2 standing in for
smtp.gmail.com (STARTTLS required, AUTH PLAIN/LOGIN, a certificate for
smtp.gmail.test from a CA the test makes), relaying to smtp-sink. Names are
resolved by a dnsmasq the test runs on loopback, so the seed's relayhost
form `[name]:port` and its `sasl_passwd` keyed by host name work as written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import smtplib
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailferry.queue import SqliteQueueStore
from tests.integration.conftest import Daemon, free_port, world_readable_tempdir
from tests.peers import require_tool
from tests.peers.dovecot import GMAIL_PASSWORD, GMAIL_USER, SUBMISSION_HOST, SUBMISSION_HOSTNAME

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

FAST_RETRY = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}


def send(daemon, sender: str, recipients: list[str], subject: str = "relay test", body: str = "Hello.\n") -> None:
    message = f"From: <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        refused = client.sendmail(sender, recipients, message)
    assert refused == {}


def seed_relay_config(directory: Path, relay, ca_file: Path, level: str = "may", **extra: str) -> dict[str, str]:
    """The seed's relay section with its inline comments removed, pointed at the stand-in."""
    passwords = directory / "sasl_passwd"
    passwords.write_text(f"gmail-smtp.l.google.com {GMAIL_USER}:{GMAIL_PASSWORD}\n"
                         f"{SUBMISSION_HOSTNAME} {GMAIL_USER}:{GMAIL_PASSWORD}\n")
    passwords.chmod(0o600)
    subprocess.run([require_tool_mailferry(), "postmap", f"hash:{passwords}"], check=True)
    return {
        "relayhost": f"[{SUBMISSION_HOSTNAME}]:{relay.port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"hash:{passwords}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_eccert_file": "",
        "smtp_tls_eckey_file": "",
        "smtp_tls_security_level": level,
        "smtp_tls_CAfile": str(ca_file),
        "smtp_tls_loglevel": "1",  # "... TLS connection established to ...", as Postfix logs it at 1
        "smtpd_tls_received_header": "yes",
        "tls_random_source": "dev:/dev/urandom",
        "default_transport": "smtp",
        **extra,
    }


def require_tool_mailferry() -> str:
    return str(Path(sys.executable).with_name("mailferry"))


@pytest.fixture
def gmail_dns(dns_server_factory):
    """smtp.gmail.test resolves to the submission stand-in's address."""
    return dns_server_factory(a={SUBMISSION_HOSTNAME: SUBMISSION_HOST})


@pytest.fixture
def relay_daemon(daemon_factory, gmail_dns):
    directories = []

    def make(relay, ca_file, level="may", **extra):
        # Like /etc/postfix: a directory anyone may pass through, holding a root-only sasl_passwd.
        directory = world_readable_tempdir("mailferry-relay-config-")
        directories.append(directory)
        daemon = daemon_factory(nameservers=gmail_dns.nameserver,
                                **seed_relay_config(directory, relay, ca_file, level, **extra))
        return daemon.start()
    yield make
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def relay_one_message(daemon, relay) -> str:
    """Send one message and wait until the smarthost's sink has it; return the daemon's log."""
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    relay.sink.wait_for_messages(1, timeout=20)
    return daemon.wait_for_log("status=sent")


def wait_for_line(daemon, pattern: str, timeout: float = 20.0) -> re.Match:
    deadline = time.monotonic() + timeout
    compiled = re.compile(pattern, re.MULTILINE)
    while time.monotonic() < deadline:
        found = compiled.search(daemon.log())
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"/{pattern}/ not in the log after {timeout} s:\n{daemon.log()[-4000:]}\n"
                         f"stderr:\n{(daemon.directory / 'stderr.log').read_text()[-2000:]}")


def queue_listing(daemon: Daemon) -> list[dict]:
    """`postqueue -j`: one dict per queued message."""
    result = daemon.command("postqueue", "-j")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_until_deferred(daemon: Daemon, timeout: float = 20.0) -> list[dict]:
    """Until every queued message sits in the deferred queue with a reason for each
    recipient still to do: the delivery attempt is over and its outcome stored."""
    deadline = time.monotonic() + timeout
    while True:
        listing = queue_listing(daemon)
        if listing and all(message["queue_name"] == "deferred"
                           and all(r.get("delay_reason") for r in message["recipients"])
                           for message in listing):
            return listing
        assert time.monotonic() < deadline, f"not deferred after {timeout} s: {listing}"
        time.sleep(0.1)


def auth_encodings(username: str, password: str) -> list[str]:
    """What a SASL client puts on the wire: PLAIN's "\\0user\\0password" (with and
    without an authorization identity) and LOGIN's two answers, each in base64."""
    user, secret = username.encode(), password.encode()
    return [base64.b64encode(raw).decode("ascii")
            for raw in (b"\0" + user + b"\0" + secret, user + b"\0" + user + b"\0" + secret, user, secret)]


def assert_no_credentials_in_logs(daemon: Daemon, username: str, password: str) -> None:
    logs = {"mail log": daemon.log(), "stderr": (daemon.directory / "stderr.log").read_text()}
    for name, text in logs.items():
        assert password not in text.replace(username, ""), name
        for encoded in auth_encodings(username, password):
            assert encoded not in text, f"{name} holds {encoded!r}, an encoding of the credentials"


# --- 1. the seed's relay configuration ---------------------------------------------------------------

def test_the_seed_relay_config_relays_through_the_smarthost(relay_daemon, submission_relay, peer_ca):
    daemon = relay_daemon(submission_relay, peer_ca.cert_path)
    send(daemon, "alice@example.test", ["friend@elsewhere.example", "other@elsewhere.example"])
    [sunk] = submission_relay.sink.wait_for_messages(1, timeout=20)
    assert sunk.sender == "alice@example.test"
    assert sunk.recipients == ["friend@elsewhere.example", "other@elsewhere.example"]
    assert sunk.email["Subject"] == "relay test"
    log = daemon.wait_for_log("status=sent", count=2)
    assert re.search(rf"Untrusted TLS connection established to {SUBMISSION_HOSTNAME}\[{SUBMISSION_HOST}\]:"
                     rf"{submission_relay.port}: TLSv1\.[23] with cipher \S+", log)
    relay = rf"relay={SUBMISSION_HOSTNAME}\[{re.escape(SUBMISSION_HOST)}\]:{submission_relay.port}"
    assert len(re.findall(rf"smtp\[\d+\]: [0-9A-F]+: to=<[^>]+>, {relay}, delay=[\d.]+, "
                          rf"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(250 ", log)) == 2
    log = daemon.wait_for_log(": removed")     # qmgr's line follows the deliveries'
    assert re.search(r": [0-9A-F]+: removed$", log, re.MULTILINE)
    assert GMAIL_PASSWORD not in log.replace(f"{GMAIL_USER}", "")
    assert_no_credentials_in_logs(daemon, GMAIL_USER, GMAIL_PASSWORD)


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_no_log_holds_the_credentials_in_any_encoding(relay_daemon, submission_relay, peer_ca, mechanism):
    daemon = relay_daemon(submission_relay, peer_ca.cert_path, smtp_sasl_mechanism_filter=mechanism)
    relay_one_message(daemon, submission_relay)
    # The smarthost logged the login with this mechanism: the credentials went over it.
    submission_relay.wait_for_log(f"Login: user=<{GMAIL_USER}>, method={mechanism.upper()}")
    assert_no_credentials_in_logs(daemon, GMAIL_USER, GMAIL_PASSWORD)


def test_mailferry_sendmail_relays_through_the_smarthost(relay_daemon, submission_relay, peer_ca):
    daemon = relay_daemon(submission_relay, peer_ca.cert_path, level="verify")
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"  # the installed /usr/sbin/sendmail
    message = b"To: friend@elsewhere.example\nSubject: from cron\n\nnightly report\n"
    result = subprocess.run([str(sendmail), "-C", str(daemon.config_dir), "-t", "-f", "root@example.test"],
                            input=message, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [sunk] = submission_relay.sink.wait_for_messages(1, timeout=20)
    assert (sunk.sender, sunk.recipients) == ("root@example.test", ["friend@elsewhere.example"])
    assert sunk.email["Subject"] == "from cron"
    assert b"nightly report" in sunk.body
    daemon.wait_for_log(": removed")


def test_each_sender_relays_through_their_own_account(daemon_factory, gmail_dns, submission_relay_factory,
                                                      peer_ca):
    alice_relay = submission_relay_factory(users={"alice@gmail.com": "alice secret"})
    bob_relay = submission_relay_factory(users={"bob@gmail.com": "bob secret"})
    directory = world_readable_tempdir("mailferry-sender-relay-")
    try:
        relays = directory / "sender_relay"
        relays.write_text(f"alice@example.test [{SUBMISSION_HOSTNAME}]:{alice_relay.port}\n"
                          f"@example.org [{SUBMISSION_HOSTNAME}]:{bob_relay.port}\n")
        passwords = directory / "sasl_passwd"
        passwords.write_text("alice@example.test alice@gmail.com:alice secret\n"
                             "@example.org bob@gmail.com:bob secret\n")
        passwords.chmod(0o600)
        for table in (relays, passwords):
            subprocess.run([require_tool_mailferry(), "postmap", f"hash:{table}"], check=True)
        daemon = daemon_factory(
            nameservers=gmail_dns.nameserver, default_transport="smtp", relayhost="[127.0.0.1]:9",
            sender_dependent_relayhost_maps=f"hash:{relays}", smtp_sender_dependent_authentication="yes",
            smtp_sasl_auth_enable="yes", smtp_sasl_password_maps=f"hash:{passwords}",
            smtp_sasl_security_options="noanonymous", smtp_tls_security_level="verify",
            smtp_tls_CAfile=str(peer_ca.cert_path)).start()
        send(daemon, "alice@example.test", ["one@elsewhere.example"], subject="from alice")
        send(daemon, "bob@example.org", ["two@elsewhere.example"], subject="from bob")
        [from_alice] = alice_relay.sink.wait_for_messages(1, timeout=20)
        [from_bob] = bob_relay.sink.wait_for_messages(1, timeout=20)
        assert (from_alice.sender, from_alice.email["Subject"]) == ("alice@example.test", "from alice")
        assert (from_bob.sender, from_bob.email["Subject"]) == ("bob@example.org", "from bob")
        daemon.wait_for_log("status=sent", count=2)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_verify_level_with_the_right_ca_is_verified(relay_daemon, submission_relay, peer_ca):
    log = relay_one_message(relay_daemon(submission_relay, peer_ca.cert_path, level="verify"), submission_relay)
    assert f"Verified TLS connection established to {SUBMISSION_HOSTNAME}[{SUBMISSION_HOST}]" in log


# --- 2. authentication and TLS failures ---------------------------------------------------------------

def assert_deferred_not_bounced(daemon) -> None:
    listing = daemon.mailq()
    assert "Mail queue is empty" not in listing, listing
    wait_until_deferred(daemon)   # the attempt is over: a bounce would have been decided by now
    log = daemon.log()
    assert "status=bounced" not in log
    assert "non-delivery notification" not in log


def test_a_wrong_password_defers_with_the_servers_reply(relay_daemon, submission_relay_factory, peer_ca):
    relay = submission_relay_factory(users={GMAIL_USER: "another password"})
    daemon = relay_daemon(relay, peer_ca.cert_path)
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    found = wait_for_line(daemon, r"status=deferred \(SASL authentication failed; server "
                                  rf"{SUBMISSION_HOSTNAME}\[{re.escape(SUBMISSION_HOST)}\] said: 535 (.*)\)$")
    assert "5.7.8" in found.group(1)
    assert_deferred_not_bounced(daemon)
    assert relay.sink.messages() == []


def test_reload_rereads_a_rebuilt_root_only_password_table(relay_daemon, submission_relay_factory, peer_ca):
    """The seed's chmod 600 sasl_passwd, rebuilt with the right password: `reload` uses it with no
    restart, because the privileged spawner reads it again with root's rights (docs/privileges.md)."""
    relay = submission_relay_factory(users={GMAIL_USER: "the new password"})
    daemon = relay_daemon(relay, peer_ca.cert_path, **FAST_RETRY)
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    wait_for_line(daemon, r"status=deferred \(SASL authentication failed; server .* said: 535")
    passwords = next(Path(line.split("hash:", 1)[1].strip()) for line in (daemon.config_dir / "main.cf")
                     .read_text().splitlines() if line.startswith("smtp_sasl_password_maps"))
    passwords.write_text(f"{SUBMISSION_HOSTNAME} {GMAIL_USER}:the new password\n")
    subprocess.run([require_tool_mailferry(), "postmap", f"hash:{passwords}"], check=True)
    for path in (passwords, passwords.with_name(passwords.name + ".db")):
        info = path.stat()
        assert (info.st_uid, info.st_mode & 0o077) == (0, 0), f"{path} is not root's alone"
    assert relay.sink.messages() == []
    assert daemon.command("reload").returncode == 0
    daemon.wait_for_log("reload -- version")
    assert daemon.command("postqueue", "-f").returncode == 0
    [sunk] = relay.sink.wait_for_messages(1, timeout=20)
    assert sunk.recipients == ["friend@elsewhere.example"]
    assert "cannot re-read" not in daemon.log()


def test_an_untrusted_issuer_at_verify_defers(relay_daemon, submission_relay, untrusted_ca):
    daemon = relay_daemon(submission_relay, untrusted_ca.cert_path, level="verify")
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    wait_for_line(daemon, rf"certificate verification failed for {SUBMISSION_HOSTNAME}\["
                          rf"{re.escape(SUBMISSION_HOST)}\]:{submission_relay.port}: untrusted issuer")
    wait_for_line(daemon, r"dsn=4\.7\.5, status=deferred \(Server certificate not verified\)")
    assert_deferred_not_bounced(daemon)
    assert submission_relay.sink.messages() == []


@pytest.mark.parametrize("trusted", [True, False])
def test_a_tls_policy_table_makes_the_smarthost_secure(relay_daemon, submission_relay, peer_ca, untrusted_ca,
                                                       trusted):
    """The seed's `may`, with smtp_tls_policy_maps demanding `secure` for the smarthost."""
    policies = f"inline:{{ [{SUBMISSION_HOSTNAME}]:{submission_relay.port}=secure }}"
    ca = peer_ca if trusted else untrusted_ca
    daemon = relay_daemon(submission_relay, ca.cert_path, level="may", smtp_tls_policy_maps=policies)
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    if trusted:
        log = daemon.wait_for_log("status=sent")
        submission_relay.sink.wait_for_messages(1, timeout=20)
        assert f"Verified TLS connection established to {SUBMISSION_HOSTNAME}[{SUBMISSION_HOST}]" in log
    else:
        wait_for_line(daemon, r"certificate verification failed for .*: untrusted issuer")
        wait_for_line(daemon, r"dsn=4\.7\.5, status=deferred \(Server certificate not verified\)")
        assert submission_relay.sink.messages() == []


def test_an_untrusted_issuer_at_may_is_delivered_as_untrusted(relay_daemon, submission_relay, untrusted_ca):
    log = relay_one_message(relay_daemon(submission_relay, untrusted_ca.cert_path, level="may"), submission_relay)
    assert f"Untrusted TLS connection established to {SUBMISSION_HOSTNAME}" in log


def test_encrypt_against_a_server_without_starttls_defers(daemon_factory, smtp_sink):
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            smtp_tls_security_level="encrypt").start()
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    wait_for_line(daemon, r"dsn=4\.7\.4, status=deferred \(TLS is required, but was not offered by host "
                          r"127\.0\.0\.1\[127\.0\.0\.1\]\)")
    assert_deferred_not_bounced(daemon)
    assert smtp_sink.messages() == []


def test_noplaintext_explains_why_no_mechanism_is_allowed(relay_daemon, submission_relay, peer_ca):
    daemon = relay_daemon(submission_relay, peer_ca.cert_path, smtp_sasl_security_options="noplaintext",
                          smtp_sasl_tls_security_options="$smtp_sasl_security_options")
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    found = wait_for_line(daemon, r"warning: SASL authentication failure: cannot authenticate to server "
                                  r"\S+: (.*)$")
    explanation = found.group(1)
    assert "PLAIN" in explanation and "LOGIN" in explanation
    assert "smtp_sasl_tls_security_options" in explanation
    assert "noplaintext" in explanation
    wait_for_line(daemon, r"status=deferred \(SASL authentication failed; cannot authenticate to server")
    assert "No worthy mechs" not in daemon.log()
    assert_deferred_not_bounced(daemon)


# --- 3. outage and rejection -------------------------------------------------------------------------

def test_a_destination_that_was_down_gets_the_mail_when_it_is_back(daemon_factory, smtp_sink_factory):
    port = free_port()
    daemon = daemon_factory(relayhost=f"[127.0.0.1]:{port}", default_transport="smtp", **FAST_RETRY).start()
    for number in range(3):
        send(daemon, "alice@example.test", [f"friend{number}@elsewhere.example"], subject=f"outage {number}")
    wait_for_line(daemon, rf"status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{port}: Connection refused\)")
    sink = smtp_sink_factory(port=port)
    sunk = sink.wait_for_messages(3, timeout=30)
    assert sorted(message.email["Subject"] for message in sunk) == ["outage 0", "outage 1", "outage 2"]
    daemon.wait_for_log(": removed", count=3, timeout=20)
    assert "Mail queue is empty" in daemon.mailq()


def test_postqueue_f_retries_now(daemon_factory, smtp_sink_factory):
    port = free_port()
    daemon = daemon_factory(relayhost=f"[127.0.0.1]:{port}", default_transport="smtp",
                            minimal_backoff_time="1h", maximal_backoff_time="2h").start()
    send(daemon, "alice@example.test", ["friend@elsewhere.example"])
    wait_for_line(daemon, r"Connection refused\)$")
    [queued] = wait_until_deferred(daemon)
    sink = smtp_sink_factory(port=port)
    # The backoff is an hour: nothing happens by itself, the next attempt is an hour away.
    store = SqliteQueueStore(daemon.queue_directory / "queue.db")
    try:
        assert store.get(queued["queue_id"]).next_attempt > time.time() + 3000
    finally:
        store.close()
    # A scheduler pass for new mail (local, so discarded) does not take it along either.
    send(daemon, "alice@example.test", ["user@example.test"])
    wait_for_line(daemon, r"to=<user@example\.test>, .*status=sent")
    assert sink.messages() == []
    result = daemon.command("postqueue", "-f")
    assert result.returncode == 0, result.stderr
    sink.wait_for_messages(1, timeout=20)
    daemon.wait_for_log("status=sent")


def test_a_550_bounces_to_the_senders_mailbox(daemon_factory, smtp_sink_factory, dovecot_lmtp):
    sink = smtp_sink_factory(hard_reject=("RCPT",))
    daemon = daemon_factory(relayhost=sink.nexthop, default_transport="smtp",
                            local_transport=f"lmtp:inet:{dovecot_lmtp.nexthop}").start()
    send(daemon, "alice@example.test", ["nobody@elsewhere.example"], subject="will bounce")
    wait_for_line(daemon, r"to=<nobody@elsewhere\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                          r"dsn=5\.\d\.\d+, status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 5\d\d .*"
                          r"\(in reply to RCPT TO command\)\)")
    wait_for_line(daemon, r": sender non-delivery notification: [0-9A-F]+$")
    [notice] = dovecot_lmtp.wait_for_messages("alice@example.test", 1, timeout=20)
    assert notice.return_path == ""
    assert notice.email.get_content_type() == "multipart/report"
    assert notice.email.get_param("report-type") == "delivery-status"
    text = notice.raw.replace(b"\r\n", b"\n")
    assert b"Final-Recipient: rfc822; nobody@elsewhere.example" in text
    assert b"Action: failed" in text
    assert b"Subject: will bounce" in text
    wait_for_line(daemon, r"to=<alice@example\.test>, relay=.*status=sent")


def test_a_session_lost_midway_defers_only_the_recipients_it_carried(daemon_factory, smtp_sink_factory):
    good = smtp_sink_factory()
    hanging_up = smtp_sink_factory(disconnect=("RCPT",))
    transports = f"inline:{{ good.example=smtp:{good.nexthop}, flaky.example=smtp:{hanging_up.nexthop} }}"
    daemon = daemon_factory(default_transport="smtp", transport_maps=transports,
                            minimal_backoff_time="1h", maximal_backoff_time="2h").start()
    send(daemon, "alice@example.test", ["one@good.example", "two@flaky.example"])
    [sunk] = good.wait_for_messages(1, timeout=20)
    assert sunk.recipients == ["one@good.example"]
    wait_for_line(daemon, r"to=<two@flaky\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                          r"status=deferred \(lost connection with 127\.0\.0\.1\[127\.0\.0\.1\] while ")
    wait_until_deferred(daemon)
    listing = daemon.mailq()
    assert "two@flaky.example" in listing and "one@good.example" not in listing, listing
    assert "status=bounced" not in daemon.log()


def test_sessions_are_reused_and_kept_within_the_destination_limit(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory(extra_args=("-c",))
    daemon = daemon_factory(relayhost=sink.nexthop, default_transport="smtp",
                            smtp_destination_concurrency_limit="2").start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        for number in range(30):
            client.sendmail("alice@example.test", [f"friend{number}@elsewhere.example"],
                            f"Subject: burst {number}\r\n\r\nx\r\n")
    sink.wait_for_messages(30, timeout=30)
    daemon.wait_for_log("status=sent", count=30)
    counters = sink.counters()
    assert counters["mesg"] == 30
    # few sessions, each carrying many messages (smtp_connection_cache_on_demand); the limit itself
    # is checked by test_the_destination_concurrency_limit_is_reached_and_never_exceeded
    assert 1 <= counters["sess"] <= 10, counters


class _CountedSession(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.serve_session(self.request)


class SessionCountingPeer(socketserver.ThreadingTCPServer):
    """An SMTP server on loopback that counts the sessions open to it at once.

    It holds every session at its greeting until `hold_until` sessions are
    open together and the test has said `release()` (or `patience` seconds
    went by), so a client allowed that many sessions must open them all
    while its mail waits, and one allowed more has every chance to."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, hold_until: int, patience: float = 20.0):
        super().__init__(("127.0.0.1", 0), _CountedSession)
        self.hold_until = hold_until
        self.patience = patience
        self.port = self.server_address[1]
        self.changed = threading.Condition()
        self.open = 0
        self.most_open = 0
        self.sessions = 0
        self.messages = 0
        self.reached = threading.Event()
        self.released = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def nexthop(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def release(self) -> None:
        self.released.set()

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.messages >= count, timeout), \
                f"{self.messages} of {count} messages after {timeout} s"

    def close(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()

    def serve_session(self, connection: socket.socket) -> None:
        with self.changed:
            self.open += 1
            self.sessions += 1
            self.most_open = max(self.most_open, self.open)
            if self.open >= self.hold_until:
                self.reached.set()
        try:
            self.reached.wait(self.patience)
            self.released.wait(self.patience)
            self._converse(connection)
        except OSError:
            pass
        finally:
            with self.changed:
                self.open -= 1
                self.changed.notify_all()

    def _converse(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        connection.sendall(b"220 peer.test ESMTP\r\n")
        while line := reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                connection.sendall(b"250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                connection.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                while reader.readline() not in (b".\r\n", b""):
                    pass
                with self.changed:
                    self.messages += 1
                    self.changed.notify_all()
                connection.sendall(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                connection.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:   # HELO, MAIL, RCPT, RSET, NOOP
                connection.sendall(b"250 2.0.0 Ok\r\n")


@pytest.mark.parametrize("parameter, limit", [("smtp_destination_concurrency_limit", 2),
                                              ("default_destination_concurrency_limit", 3)])
def test_the_destination_concurrency_limit_is_reached_and_never_exceeded(daemon_factory, parameter, limit):
    peer = SessionCountingPeer(hold_until=limit)
    try:
        daemon = daemon_factory(relayhost=peer.nexthop, default_transport="smtp",
                                **{parameter: str(limit)}).start()
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
            for number in range(20):
                client.sendmail("alice@example.test", [f"friend{number}@elsewhere.example"],
                                f"Subject: held {number}\r\n\r\nx\r\n")
        # All 20 are queued, and the sessions that are open are held at their greeting.
        assert peer.reached.wait(peer.patience), f"only {peer.most_open} of {limit} sessions were opened"
        peer.release()
        peer.wait_for_messages(20)
        daemon.wait_for_log("status=sent", count=20)
        assert peer.most_open == limit, f"{peer.most_open} sessions at once, the limit is {limit}"
    finally:
        peer.close()


def test_mail_from_the_null_sender_is_never_bounced(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory(hard_reject=("RCPT",))
    daemon = daemon_factory(relayhost=sink.nexthop, default_transport="smtp").start()
    send(daemon, "", ["nobody@elsewhere.example"])
    wait_for_line(daemon, r"status=bounced")
    # qmgr logs a message's notices before its "removed" (one process, its lines in order).
    daemon.wait_for_log(": removed")
    assert "notification" not in daemon.log()
    assert "Mail queue is empty" in daemon.mailq()


# --- 4. MX routing through a DNS server on loopback ---------------------------------------------------

def test_mx_routing_tries_hosts_in_preference_order(daemon_factory, dns_server_factory, smtp_sink_factory):
    port = free_port("127.0.0.4")
    backup = smtp_sink_factory(host="127.0.0.4", port=port)
    dns = dns_server_factory(mx={"remote.test": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
                             a={"mx1.remote.test": "127.0.0.3", "mx2.remote.test": "127.0.0.4"})
    daemon = daemon_factory(nameservers=dns.nameserver, default_transport=f"smtp:remote.test:{port}").start()
    send(daemon, "alice@example.test", ["someone@remote.test"])
    [sunk] = backup.wait_for_messages(1, timeout=20)
    assert sunk.recipients == ["someone@remote.test"]
    log = daemon.wait_for_log("status=sent")
    assert f"relay=mx2.remote.test[127.0.0.4]:{port}" in log


def test_a_null_mx_bounces(daemon_factory, dns_server_factory):
    dns = dns_server_factory(null_mx=("nullmx.test",))
    daemon = daemon_factory(nameservers=dns.nameserver, default_transport="smtp").start()
    send(daemon, "", ["someone@nullmx.test"])
    wait_for_line(daemon, r"dsn=5\.1\.10, status=bounced \(.*nullmx\.test.*\)")


# --- 5. LMTP ------------------------------------------------------------------------------------------

def test_lmtp_to_smtp_sink_reports_per_recipient(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory(lmtp=True)
    daemon = daemon_factory(local_transport=f"lmtp:inet:{sink.nexthop}").start()
    send(daemon, "carol@elsewhere.example", ["alice@example.test", "bob@example.test"])
    [sunk] = sink.wait_for_messages(1, timeout=20)
    assert sunk.recipients == ["alice@example.test", "bob@example.test"]
    log = daemon.wait_for_log("status=sent", count=2)
    assert len(re.findall(r"lmtp\[\d+\]: [0-9A-F]+: to=<(alice|bob)@example\.test>, relay=127\.0\.0\.1"
                          r"\[127\.0\.0\.1\]:\d+, .*status=sent", log)) == 2


def test_lmtp_over_a_unix_socket(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory(lmtp=True, unix_socket=True)
    daemon = daemon_factory(local_transport="local", mailbox_transport=f"lmtp:unix:{sink.socket_path}").start()
    send(daemon, "carol@elsewhere.example", ["alice@example.test"])
    [sunk] = sink.wait_for_messages(1, timeout=20)
    assert sunk.recipients == ["alice@example.test"]
    log = daemon.wait_for_log("status=sent")
    assert f"relay=localhost[{sink.socket_path}], " in log


def test_lmtp_to_dovecot_delivers_and_bounces_per_recipient(daemon_factory, dovecot_lmtp, smtp_sink):
    daemon = daemon_factory(local_transport=f"lmtp:inet:{dovecot_lmtp.nexthop}",
                            relayhost=smtp_sink.nexthop, default_transport="smtp").start()
    send(daemon, "carol@elsewhere.example", ["alice@example.test", "ghost@example.test", "bob@example.test"],
         subject="to dovecot")
    for user in ("alice@example.test", "bob@example.test"):
        [delivered] = dovecot_lmtp.wait_for_messages(user, 1, timeout=20)
    wait_for_line(daemon, r"to=<ghost@example\.test>, .*status=bounced \(host \S+ said: 550 .*"
                          r"\(in reply to (RCPT TO|end of DATA) command\)\)")
    # The bounce for the ghost goes back to carol, through the smtp relay.
    [notice] = smtp_sink.wait_for_messages(1, timeout=20)
    assert notice.sender == ""
    assert notice.recipients == ["carol@elsewhere.example"]


# --- 6. pflogsumm -------------------------------------------------------------------------------------

def test_pflogsumm_counts_sent_deferred_and_bounced(daemon_factory, smtp_sink_factory):
    rejecting = smtp_sink_factory(hard_reject=("RCPT",))
    down = free_port()
    good = smtp_sink_factory()
    transports = (f"inline:{{ good.example=smtp:{good.nexthop}, bad.example=smtp:{rejecting.nexthop}, "
                  f"down.example=smtp:[127.0.0.1]:{down} }}")
    daemon = daemon_factory(default_transport="smtp", transport_maps=transports).start()
    send(daemon, "", ["a@good.example"])
    send(daemon, "", ["b@bad.example"])
    send(daemon, "", ["c@down.example"])
    wait_for_line(daemon, r"to=<a@good\.example>.*status=sent")
    wait_for_line(daemon, r"to=<b@bad\.example>.*status=bounced")
    wait_for_line(daemon, r"to=<c@down\.example>.*status=deferred")
    report = subprocess.run([require_tool("pflogsumm"), "--syslog-name=mailferry", str(daemon.log_path)],
                            capture_output=True, text=True, timeout=60).stdout
    totals = dict((name, int(count)) for count, name in
                  re.findall(r"^\s+(\d+)\s+(delivered|deferred|bounced)\b", report, re.MULTILINE))
    assert totals == {"delivered": 1, "deferred": 1, "bounced": 1}, report
