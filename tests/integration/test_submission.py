"""The submission (587, STARTTLS required) and submissions (465, implicit TLS) services, made
the way Postfix's stock master.cf makes them: smtpd entries with `-o` overrides, AUTH against
real Dovecot. Real daemon, real clients (smtplib, swaks) from an outside address (127.0.0.2,
not in mynetworks), so only a logged-in client may relay. One daemon for the module.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from tests.integration.auth_peers import PASSWORD, REMOTE_RECIPIENT, plain
from tests.integration.conftest import Daemon, base_main_cf, free_port, smtpd_master_cf, world_readable_tempdir
from tests.integration.test_smtpd_security import queued_contents
from tests.integration.test_submission_auth import dovecot_auth  # noqa: F401  (the module's Dovecot)

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

HOSTNAME = "smtp.gmail.test"  # the name submission_certificate is issued for
OUTSIDE = "127.0.0.2"


def submission_services(ports: dict[str, int]) -> str:
    """Postfix's stock submission and submissions entries, on loopback ports of our own; and a
    587-like entry without smtpd_tls_auth_only, to show that required TLS implies it."""
    return (f"127.0.0.1:{ports['submission']} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_tls_auth_only=yes\n"
            "  -o smtpd_reject_unlisted_recipient=no\n"
            "  -o milter_macro_daemon_name=ORIGINATING\n"
            f"127.0.0.1:{ports['submissions']} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submissions\n"
            "  -o smtpd_tls_wrappermode=yes\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_reject_unlisted_recipient=no\n"
            "  -o milter_macro_daemon_name=ORIGINATING\n"
            f"127.0.0.1:{ports['encrypt_only']} inet n - n - - smtpd\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            f"127.0.0.1:{ports['plaintext_refused']} inet n - n - - smtpd\n"
            "  -o smtpd_recipient_restrictions=reject_plaintext_session,permit\n")


@pytest.fixture(scope="module")
def submission_daemon(submission_certificate, dovecot_auth):
    cert, key = submission_certificate
    directory = world_readable_tempdir("mailferry-submission-")
    port = free_port()
    ports = {name: free_port() for name in ("submission", "submissions", "encrypt_only", "plaintext_refused")}
    main_cf = base_main_cf(directory, smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
                           smtpd_tls_security_level="may", smtpd_tls_loglevel="1",
                           smtpd_sasl_type="dovecot", smtpd_sasl_path=dovecot_auth.sasl_path,
                           # Mail stays queued (no route out), so it can be read.
                           default_transport="smtp", local_transport="smtp")
    daemon = Daemon(directory, main_cf, smtpd_master_cf(port, submission_services(ports)), port)
    daemon.ports = ports
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(directory, ignore_errors=True)


def trusting(peer_ca) -> ssl.SSLContext:
    return peer_ca.client_context()


def read_reply(reader) -> list[bytes]:
    lines = [reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(reader.readline())
    return lines


@pytest.mark.parametrize("service", ["submission", "encrypt_only"])
def test_587_wants_starttls_before_auth_and_mail(submission_daemon, service):
    with socket.create_connection(("127.0.0.1", submission_daemon.ports[service]), source_address=(OUTSIDE, 0),
                                  timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        ehlo = read_reply(reader)
        assert b"250-STARTTLS\r\n" in ehlo
        # Not offered in plaintext (smtpd_tls_auth_only, which required TLS implies as in Postfix).
        assert not any(line[4:].startswith(b"AUTH") for line in ehlo), ehlo
        raw.sendall(b"AUTH PLAIN " + plain("user1", PASSWORD).encode() + b"\r\n")
        assert reader.readline().startswith(b"5")
        raw.sendall(b"MAIL FROM:<a@example.test>\r\n")
        assert reader.readline() == b"530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_smtplib_submits_over_587_with_starttls_and_auth(submission_daemon, peer_ca):
    with smtplib.SMTP("127.0.0.1", submission_daemon.ports["submission"], source_address=(OUTSIDE, 0),
                      timeout=10) as client:
        client.starttls(context=trusting(peer_ca))
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.login("user1", PASSWORD)
        refused = client.sendmail("user1@example.com", [REMOTE_RECIPIENT], b"Subject: over 587\r\n\r\nhello\r\n")
    assert refused == {}
    log = submission_daemon.wait_for_log("sasl_username=user1")
    assert re.search(r"postfix/submission/smtpd\[\d+\]: Anonymous TLS connection established from "
                     r"\S+\[127\.0\.0\.2\]: TLSv1\.3 with cipher", log), log[-2000:]
    assert re.search(r"postfix/submission/smtpd\[\d+\]: \w+: client=\S+\[127\.0\.0\.2\], "
                     r"sasl_method=(PLAIN|LOGIN), sasl_username=user1", log), log[-2000:]


def test_smtplib_submits_over_465_with_implicit_tls_and_auth(submission_daemon, peer_ca):
    with smtplib.SMTP_SSL("127.0.0.1", submission_daemon.ports["submissions"], source_address=(OUTSIDE, 0),
                          timeout=10, context=trusting(peer_ca)) as client:
        code, features = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in features and b"AUTH PLAIN LOGIN" in features
        # TLS is on from the first byte: there is nothing left to start.
        assert client.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
        assert client.docmd("AUTH", "PLAIN " + plain("user3", PASSWORD))[0] == 235
        refused = client.sendmail("user3@example.com", ["friend@remote.example"],
                                  b"Subject: over 465\r\n\r\nhi\r\n")
    assert refused == {}
    log = submission_daemon.wait_for_log("sasl_username=user3")
    assert re.search(r"postfix/submissions/smtpd\[\d+\]: Anonymous TLS connection established from "
                     r"\S+\[127\.0\.0\.2\]: TLSv1\.3 with cipher", log), log[-2000:]
    [content] = [item for item in queued_contents(submission_daemon) if b"Subject: over 465" in item]
    assert b" with ESMTPSA id " in content


def test_without_auth_465_does_not_relay(submission_daemon, peer_ca):
    with smtplib.SMTP_SSL("127.0.0.1", submission_daemon.ports["submissions"], source_address=(OUTSIDE, 0),
                          timeout=10, context=trusting(peer_ca)) as client:
        client.ehlo("client.example")
        client.mail("user1@example.com")
        code, _ = client.rcpt(REMOTE_RECIPIENT)
    assert code in (450, 454, 554)


def test_plaintext_client_on_465_gets_no_greeting(submission_daemon):
    with socket.create_connection(("127.0.0.1", submission_daemon.ports["submissions"]), timeout=10) as raw:
        raw.sendall(b"EHLO plaintext.example\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    # The handshake fails on the plaintext: no 220 in the clear, ever (a TLS alert at most).
    assert not answer.startswith(b"220"), answer


@pytest.mark.parametrize("service, flag", [("submission", "--tls"), ("submissions", "--tls-on-connect")])
def test_swaks_submits_with_auth_plain(submission_daemon, peer_ca, service, flag):
    completed = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(submission_daemon.ports[service]),
         "--local-interface", OUTSIDE, flag, "--tls-verify", "--tls-ca-path", str(peer_ca.cert_path),
         "--tls-sni", HOSTNAME, "--auth", "PLAIN", "--auth-user", "user4", "--auth-password", PASSWORD,
         "--from", "user4@example.com", "--to", f"swaks-{service}@remote.example",
         "--helo", "client.example", "--header", f"Subject: swaks over {service}"],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "<~  235 2.7.0 Authentication successful" in completed.stdout, completed.stdout
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as \w+", completed.stdout), completed.stdout
    submission_daemon.wait_for_log(f"to=<swaks-{service}@remote.example>")


def test_the_restrictions_see_the_tls_session(submission_daemon, peer_ca):
    """reject_plaintext_session reads what the handshake set (the protocol, as Postfix's
    encryption_protocol attribute)."""
    port = submission_daemon.ports["plaintext_refused"]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("a@example.test")
        assert client.rcpt("b@example.test")[0] == 450
        client.rset()
        client.starttls(context=trusting(peer_ca))
        client.ehlo("client.example")
        client.mail("a@example.test")
        assert client.rcpt("b@example.test")[0] == 250
