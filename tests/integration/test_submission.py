"""The submission (587, STARTTLS required) and submissions (465, implicit TLS) services, made
the way Postfix's stock master.cf makes them: smtpd entries with `-o` overrides. Real daemon,
real clients (smtplib, swaks); one daemon for the module.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from tests.integration.test_smtpd_security import queued_contents
from tests.integration.conftest import Daemon, base_main_cf, free_port, smtpd_master_cf, world_readable_tempdir

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

HOSTNAME = "smtp.gmail.test"  # the name submission_certificate is issued for


def submission_services(submission_port: int, submissions_port: int) -> str:
    """Postfix's stock submission and submissions entries, on loopback ports of our own."""
    return (f"127.0.0.1:{submission_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_tls_auth_only=yes\n"
            "  -o smtpd_reject_unlisted_recipient=no\n"
            "  -o milter_macro_daemon_name=ORIGINATING\n"
            f"127.0.0.1:{submissions_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submissions\n"
            "  -o smtpd_tls_wrappermode=yes\n"
            "  -o smtpd_reject_unlisted_recipient=no\n"
            "  -o milter_macro_daemon_name=ORIGINATING\n")


@pytest.fixture(scope="module")
def submission_daemon(submission_certificate):
    cert, key = submission_certificate
    directory = world_readable_tempdir("mailferry-submission-")
    port, submission, submissions = free_port(), free_port(), free_port()
    main_cf = base_main_cf(directory, smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
                           smtpd_tls_security_level="may", smtpd_tls_loglevel="1",
                           default_transport="smtp", local_transport="smtp")
    daemon = Daemon(directory, main_cf, smtpd_master_cf(port, submission_services(submission, submissions)), port)
    daemon.submission_port, daemon.submissions_port = submission, submissions
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


def test_submission_wants_starttls_before_mail(submission_daemon):
    with socket.create_connection(("127.0.0.1", submission_daemon.submission_port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        assert b"250-STARTTLS\r\n" in read_reply(reader)
        raw.sendall(b"MAIL FROM:<a@example.test>\r\n")
        assert reader.readline() == b"530 5.7.0 Must issue a STARTTLS command first\r\n"


def test_smtplib_submits_over_587_with_starttls(submission_daemon, peer_ca):
    with smtplib.SMTP("127.0.0.1", submission_daemon.submission_port, timeout=10) as client:
        client.starttls(context=trusting(peer_ca))
        refused = client.sendmail("user@example.test", ["friend@example.test"],
                                  b"Subject: over 587\r\n\r\nhello\r\n")
    assert refused == {}
    log = submission_daemon.wait_for_log("to=<friend@example.test>")
    assert re.search(r"postfix/submission/smtpd\[\d+\]: Anonymous TLS connection established from "
                     r"localhost\[127\.0\.0\.1\]: TLSv1\.3 with cipher", log), log[-2000:]


def test_smtplib_submits_over_465_with_implicit_tls(submission_daemon, peer_ca):
    with smtplib.SMTP_SSL("127.0.0.1", submission_daemon.submissions_port, timeout=10,
                          context=trusting(peer_ca)) as client:
        code, features = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in features
        # TLS is on from the first byte: there is nothing left to start.
        assert client.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
        refused = client.sendmail("user@example.test", ["friend@example.test"], b"Subject: over 465\r\n\r\nhi\r\n")
    assert refused == {}
    log = submission_daemon.wait_for_log("postfix/submissions/smtpd")
    assert re.search(r"postfix/submissions/smtpd\[\d+\]: Anonymous TLS connection established from "
                     r"localhost\[127\.0\.0\.1\]: TLSv1\.3 with cipher", log), log[-2000:]


def test_received_header_says_esmtps_on_465(submission_daemon, peer_ca):
    with smtplib.SMTP_SSL("127.0.0.1", submission_daemon.submissions_port, timeout=10,
                          context=trusting(peer_ca)) as client:
        client.sendmail("user@example.test", ["received@example.test"], b"Subject: received\r\n\r\nx\r\n")
    submission_daemon.wait_for_log("to=<received@example.test>")
    [content] = [item for item in queued_contents(submission_daemon) if b"Subject: received" in item]
    assert b" with ESMTPS id " in content


def test_plaintext_client_on_465_gets_no_greeting(submission_daemon):
    with socket.create_connection(("127.0.0.1", submission_daemon.submissions_port), timeout=10) as raw:
        raw.sendall(b"EHLO plaintext.example\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    # The handshake fails on the plaintext: no 220 in the clear, ever (a TLS alert at most).
    assert not answer.startswith(b"220"), answer


@pytest.mark.parametrize("service,flag", [("submission", "--tls"), ("submissions", "--tls-on-connect")])
def test_swaks_submits(submission_daemon, peer_ca, service, flag):
    port = getattr(submission_daemon, f"{service}_port")
    completed = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), flag, "--tls-verify",
         "--tls-ca-path", str(peer_ca.cert_path), "--tls-sni", HOSTNAME,
         "--from", "user@example.test", "--to", f"swaks-{service}@example.test",
         "--helo", "client.example", "--header", f"Subject: swaks over {service}"],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as \w+", completed.stdout), completed.stdout
    submission_daemon.wait_for_log(f"to=<swaks-{service}@example.test>")
