"""Self-tests for the real peers in tests/peers: CAs, smtp-sink, Dovecot submission and LMTP."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.peers import require_tool
from tests.peers.dovecot import GMAIL_PASSWORD, GMAIL_USER, SUBMISSION_HOSTNAME

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


def swaks(host: str, port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("swaks"), "--server", f"{host}:{port}", "--timeout", "10", *args],
                          capture_output=True, text=True, timeout=60)


def replies(transcript: str) -> list[str]:
    """Server lines from a swaks transcript ('<-', '<~', '<**', '<~*' prefixes), without the prefix."""
    return [match.group(1) for match in re.finditer(r"^<[-~*]+\s+(.*)$", transcript, re.MULTILINE)]


def relay_swaks(relay, *args: str, password: str = GMAIL_PASSWORD, mechanism: str = "PLAIN"):
    return swaks(relay.host, relay.port, "--tls", "--auth", mechanism, "--auth-user", GMAIL_USER,
                 "--auth-password", password, *args)


def starttls(host: str, port: int, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    """EHLO, STARTTLS, then a TLS handshake that verifies the server as `server_hostname`."""
    raw = socket.create_connection((host, port), timeout=10)
    reader = raw.makefile("rb")

    def reply() -> bytes:
        while True:
            line = reader.readline()
            assert line, "connection closed"
            if line[3:4] != b"-":
                return line

    assert reply().startswith(b"220")
    raw.sendall(b"EHLO client.test\r\n")
    assert reply().startswith(b"250")
    raw.sendall(b"STARTTLS\r\n")
    assert reply().startswith(b"220")
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


# --- submission stand-in for [smtp.gmail.com]:587 -------------------------------------------------

def test_authenticated_submission_is_relayed_to_the_sink(submission_relay):
    result = relay_swaks(submission_relay, "--from", GMAIL_USER, "--to", "friend@example.org,other@example.net",
                         "--header", "Subject: via the stand-in", "--body", "hello over TLS")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS started" in result.stdout
    assert "235 2.7.0" in result.stdout
    login = relay_swaks(submission_relay, "--from", GMAIL_USER, "--to", "third@example.org", mechanism="LOGIN")
    assert login.returncode == 0, login.stdout

    first, second = submission_relay.sink.wait_for_messages(2)
    assert first.sender == GMAIL_USER
    assert first.recipients == ["friend@example.org", "other@example.net"]
    assert f"AUTH={GMAIL_USER}" in first.mail_parameters
    assert first.helo == SUBMISSION_HOSTNAME
    assert first.email["Subject"] == "via the stand-in"
    assert first.body.rstrip() == b"hello over TLS"
    assert f"by {SUBMISSION_HOSTNAME} with ESMTPSA" in first.message.decode()
    assert second.recipients == ["third@example.org"]
    assert "method=LOGIN" in submission_relay.log()


def test_wrong_password_gets_535_and_nothing_is_relayed(submission_relay):
    result = relay_swaks(submission_relay, "--from", GMAIL_USER, "--to", "friend@example.org", password="wrong")
    assert result.returncode != 0
    assert any(line.startswith("535 5.7.8") for line in replies(result.stdout)), result.stdout
    assert submission_relay.sink.messages() == []


def test_no_auth_and_no_mail_without_starttls(submission_relay):
    with smtplib.SMTP(submission_relay.host, submission_relay.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")  # 127.0.0.1 -> 127.0.0.2 is not "secured" to Dovecot
        code, _ = client.docmd("AUTH", "PLAIN AHVzZXIubmFtZUBnbWFpbC5jb20AcGFzc3dvcmQ=")
        assert 500 <= code < 600
        code, text = client.docmd("MAIL", f"FROM:<{GMAIL_USER}>")
        assert code == 530, text
    result = swaks(submission_relay.host, submission_relay.port, "--auth", "PLAIN", "--auth-user", GMAIL_USER,
                   "--auth-password", GMAIL_PASSWORD, "--from", GMAIL_USER, "--to", "friend@example.org")
    assert result.returncode != 0
    assert submission_relay.sink.messages() == []


def test_certificate_verifies_by_name_against_the_ca_only(submission_relay, peer_ca, untrusted_ca):
    relay = submission_relay
    with starttls(relay.host, relay.port, peer_ca.client_context(), SUBMISSION_HOSTNAME) as tls:
        names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
        assert names == [SUBMISSION_HOSTNAME]
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        starttls(relay.host, relay.port, untrusted_ca.client_context(), SUBMISSION_HOSTNAME)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        starttls(relay.host, relay.port, peer_ca.client_context(), "smtp.gmail.com")


def test_sink_refusals_show_through_the_relay(submission_relay_factory, smtp_sink_factory):
    sink = smtp_sink_factory(hard_reject=("RCPT",), hard_reply="550 5.1.1 No such user here")
    relay = submission_relay_factory(sink=sink)
    result = relay_swaks(relay, "--from", GMAIL_USER, "--to", "nobody@example.org")
    assert any(line.startswith("550 5.1.1") for line in replies(result.stdout)), result.stdout
    assert sink.messages() == []


# --- smtp-sink on its own -----------------------------------------------------------------------

def test_smtp_sink_dump_is_parsed(smtp_sink):
    result = swaks(smtp_sink.host, smtp_sink.port, "--ehlo", "client.test", "--from", "<>",
                   "--to", "a@example.test,b@example.test", "--header", "Subject: bounce")
    assert result.returncode == 0, result.stdout
    [message] = smtp_sink.wait_for_messages(1)
    assert (message.client_addr, message.client_proto, message.helo) == ("127.0.0.1", "ESMTP", "client.test")
    assert message.sender == "" and message.mail_args.startswith("<>")
    assert message.recipients == ["a@example.test", "b@example.test"]
    assert message.received.startswith("Received: from client.test ([127.0.0.1])")
    assert message.email["Subject"] == "bounce"
    assert not message.message.startswith(b"Received:")


def _open_transaction(sink, body: bytes) -> smtplib.SMTP:
    """A session left inside DATA after sending `body` (no final "." yet)."""
    client = smtplib.SMTP(sink.host, sink.port, timeout=10)
    client.ehlo("client.test")
    client.mail("a@example.test")
    client.rcpt("b@example.test")
    code, _ = client.docmd("DATA")
    assert code == 354
    client.send(body)
    return client


def test_smtp_sink_dump_being_written_is_waited_for_then_read_whole(smtp_sink):
    """smtp-sink creates the dump at MAIL FROM and fills it through a buffer until the final ".":
    an empty or partial dump is not a message yet (the cause of a flaky fixture that read one)."""
    body = b"Subject: long\r\n\r\n" + b"".join(b"line %05d of a message longer than smtp-sink's buffer\r\n" % i
                                                  for i in range(200))
    client = _open_transaction(smtp_sink, body)
    try:
        # the file is there (a prefix of the message on disk) but the transaction is not finished
        deadline = time.monotonic() + 10
        while not smtp_sink.paths() or smtp_sink.paths()[0].stat().st_size == 0:
            assert time.monotonic() < deadline, "smtp-sink wrote nothing of the open transaction"
            time.sleep(0.02)
        assert smtp_sink.in_progress() == set(smtp_sink.paths())
        assert smtp_sink.messages() == []
        with pytest.raises(AssertionError, match=r"0 of 1 messages .* \(1 more still being written\)"):
            smtp_sink.wait_for_messages(1, timeout=0.5)
        code, _ = client.docmd(".")
        assert code == 250
    finally:
        client.close()
    [message] = smtp_sink.wait_for_messages(1)
    assert message.message == body.replace(b"\r\n", b"\n")
    assert smtp_sink.in_progress() == set()


def test_smtp_sink_aborted_transactions_are_not_messages(smtp_sink_factory):
    """A transaction cut off (the client hangs up in DATA, or the sink is stopped) is never a
    message; one finished beside it still is."""
    sink = smtp_sink_factory()
    _open_transaction(sink, b"Subject: cut off\r\n\r\nhalf").close()      # smtp-sink unlinks its dump
    finished = _open_transaction(sink, b"Subject: whole\r\n\r\nall of it\r\n")
    assert finished.docmd(".")[0] == 250
    finished.quit()
    deadline = time.monotonic() + 10
    while len(sink.paths()) != 1:                            # the "." reply came after the close
        assert time.monotonic() < deadline, f"smtp-sink kept the cut-off dump: {sink.paths()}"
        time.sleep(0.02)
    left_open = _open_transaction(sink, b"Subject: open at stop\r\n\r\nhalf")
    try:
        while not sink.in_progress():
            assert time.monotonic() < deadline, "smtp-sink has no dump open"
            time.sleep(0.02)
        sink.stop()                                          # leaves the open dump behind, unfinished
    finally:
        left_open.close()
    assert len(sink.paths()) == 2
    assert [message.email["Subject"] for message in sink.wait_for_messages(1)] == ["whole"]


def test_smtp_sink_answers_given_codes(smtp_sink_factory):
    hard = smtp_sink_factory(hard_reject=("RCPT",), hard_reply="550 5.1.1 Unknown user")
    soft = smtp_sink_factory(soft_reject=(".",))
    refused = swaks(hard.host, hard.port, "--from", "a@example.test", "--to", "b@example.test")
    assert "550 5.1.1 Unknown user" in replies(refused.stdout)
    deferred = swaks(soft.host, soft.port, "--from", "a@example.test", "--to", "b@example.test")
    assert replies(deferred.stdout)[-2].startswith("450 4.3.0"), deferred.stdout  # then 221 for QUIT
    assert hard.messages() == []


def test_smtp_sink_lmtp_answers_per_recipient(lmtp_sink):
    result = swaks(lmtp_sink.host, lmtp_sink.port, "--protocol", "LMTP", "--from", "a@example.test",
                   "--to", "b@example.test,c@example.test,d@example.test")
    assert result.returncode == 0, result.stdout
    after_dot = result.stdout.split("\n -> .\n", 1)[1]
    assert [line for line in replies(after_dot) if line.startswith("250")] == ["250 2.2.0 Ok"] * 3
    [message] = lmtp_sink.wait_for_messages(1)
    assert message.client_proto == "LMTP"
    assert message.recipients == ["b@example.test", "c@example.test", "d@example.test"]


# --- Dovecot LMTP -------------------------------------------------------------------------------

def test_dovecot_lmtp_delivers_to_maildirs_with_per_recipient_replies(dovecot_lmtp):
    result = swaks(dovecot_lmtp.host, dovecot_lmtp.port, "--protocol", "LMTP", "--from", "sender@example.org",
                   "--to", "alice@example.test,stranger@example.test,bob@example.test",
                   "--header", "Subject: to the maildirs")
    lines = replies(result.stdout)
    assert any(line.startswith("550 5.1.1 <stranger@example.test>") for line in lines), result.stdout
    assert [line.split()[2] for line in lines if line.startswith("250 2.0.0 <")] == \
        ["<alice@example.test>", "<bob@example.test>"]
    for user in ("alice@example.test", "bob@example.test"):
        [delivered] = dovecot_lmtp.wait_for_messages(user, 1)
        assert delivered.email["Subject"] == "to the maildirs"
        assert delivered.return_path == "sender@example.org"
        assert delivered.delivered_to is None  # only with a single recipient
        assert delivered.path.parent.name == "new"
    assert not dovecot_lmtp.home("stranger@example.test").exists()
    single = swaks(dovecot_lmtp.host, dovecot_lmtp.port, "--protocol", "LMTP", "--from", "<>",
                   "--to", "bob@example.test")
    assert single.returncode == 0, single.stdout
    _, bounce = dovecot_lmtp.wait_for_messages("bob@example.test", 2)
    assert (bounce.return_path, bounce.delivered_to) == ("", "bob@example.test")
