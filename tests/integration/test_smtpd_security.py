"""Attacks a public MX sees every day, against the real daemon, from an untrusted address.

The daemon trusts only 127.0.0.1 (mynetworks = 127.0.0.1/32); the tests
connect from 127.0.0.2, which the kernel routes over loopback but which
counts as an outside client.
"""

from __future__ import annotations

import email
import fcntl
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import termios
import time

import pytest

from mailferry.queue import SqliteQueueStore
from tests.integration.conftest import child_pids, free_port

pytestmark = pytest.mark.integration

OUTSIDE = ("127.0.0.2", 0)


@pytest.fixture
def mx(daemon_factory):
    """A daemon whose mail stays queued (no smtp agent yet), so its content can be inspected."""
    return daemon_factory(default_transport="smtp", local_transport="smtp").start()


def queued_contents(daemon) -> list[bytes]:
    store = SqliteQueueStore(daemon.queue_directory / "queue.db")
    try:
        return [store.content(message.queue_id) for message in store.messages()]
    finally:
        store.close()


def outside_client(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, source_address=OUTSIDE, timeout=10)
    client.ehlo("outside.example")
    return client


SMUGGLING_ENDINGS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CR": b"\r.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "LF.CR": b"\n.\r",
    "CRLF.NUL.CRLF": b"\r\n.\x00\r\n",
    "CRLF.SP.CRLF": b"\r\n. \r\n",
}


def submission_listeners(submission_port: int, submissions_port: int) -> str:
    """Port 587's and port 465's services as Postfix's stock master.cf makes them."""
    return (f"127.0.0.1:{submission_port} inet n - n - - smtpd\n"
            "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_tls_auth_only=yes\n"
            f"127.0.0.1:{submissions_port} inet n - n - - smtpd\n"
            "  -o smtpd_tls_wrappermode=yes\n")


@pytest.fixture
def mx_tls(daemon_factory, tmp_path):
    """STARTTLS offered on the smtp port, required on a submission port (587's role), implicit
    on a submissions port (465's role). Mail stays queued (no route out), so it can be read."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ports = {"submission": free_port(), "submissions": free_port()}
    daemon = daemon_factory(submission_listeners(ports["submission"], ports["submissions"]),
                            smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert),
                            smtpd_tls_key_file=str(key), smtpd_tls_received_header="yes",
                            smtpd_tls_loglevel="1", default_transport="smtp", local_transport="smtp")
    daemon.ports = {"smtp": daemon.port, **ports}
    return daemon.start()


def insecure_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def outside_session(daemon, service: str):
    """(socket, reader) of an outside client that has been greeted on `service`, under TLS for
    submission (after EHLO and STARTTLS) and submissions (from the first byte)."""
    raw = socket.create_connection(("127.0.0.1", daemon.ports[service]), source_address=OUTSIDE, timeout=10)
    if service == "submissions":
        raw = insecure_client().wrap_socket(raw, server_hostname="mx.example.test")
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220")
    if service == "submission":
        raw.sendall(b"EHLO outside.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline().startswith(b"220 2.0.0")
        raw = insecure_client().wrap_socket(raw, server_hostname="mx.example.test")
        reader = raw.makefile("rb")
    return raw, reader


@pytest.fixture(params=["smtp", "submission", "submissions"])
def smuggling_target(request, daemon_factory):
    """(daemon, service): the plain MX, and the same attacks over 587's STARTTLS and 465's TLS."""
    if request.param == "smtp":
        daemon = request.getfixturevalue("mx")
        daemon.ports = {"smtp": daemon.port}
        return daemon, "smtp"
    return request.getfixturevalue("mx_tls"), request.param


@pytest.mark.parametrize("name", sorted(SMUGGLING_ENDINGS))
def test_smuggled_end_of_data_stays_inside_one_message(smuggling_target, name):
    mx, service = smuggling_target
    ending = SMUGGLING_ENDINGS[name]
    # What a vulnerable server would take for a second transaction: it ends at the one real
    # terminator, so a server fooled by `ending` answers 250 twice before QUIT's 221.
    smuggled = (b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
                b"Subject: smuggled\r\n\r\nforged")
    raw, reader = outside_session(mx, service)
    with raw:
        raw.sendall(b"EHLO outside.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"MAIL FROM:<honest@outside.example>\r\n")
        assert reader.readline().startswith(b"250")
        raw.sendall(b"RCPT TO:<user@example.test>\r\n")
        assert reader.readline().startswith(b"250")
        raw.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        raw.sendall(b"Subject: honest\r\n\r\nbefore" + ending + smuggled + b"\r\n.\r\nQUIT\r\n")
        replies = [reader.readline() for _ in range(2)]
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as")
    assert replies[1].startswith(b"221")
    # The session is over, and cleanup logs a message before its 250: whatever it
    # queued is in the queue and in cleanup's log by the time smtpd logs the disconnect.
    mx.wait_for_log("disconnect from unknown[127.0.0.2]")
    [content] = queued_contents(mx)
    assert b"before" in content and b"smuggled@evil.example" in content and b"forged" in content
    assert mx.log().count(": message-id=") == 1
    # qmgr logs the message when it takes it, after the commit (as Postfix's does).
    mx.wait_for_log("(queue active)")
    assert mx.log().count("(queue active)") == 1


@pytest.mark.parametrize("service", ["smtp", "submission"])
def test_starttls_injection_gets_no_reply(mx_tls, service):
    daemon = mx_tls
    with socket.create_connection(("127.0.0.1", daemon.ports[service]), source_address=OUTSIDE, timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"EHLO outside.example\r\n")
        lines = []
        while not (line := reader.readline()).startswith(b"250 "):
            lines.append(line)
        assert b"250-STARTTLS\r\n" in lines
        # The injection: a command pipelined after STARTTLS, in the same packet.
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        assert reader.readline().startswith(b"220 2.0.0")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw, server_hostname="mx.example.test") as secure:
            # Nothing may answer the injected MAIL FROM: the first reply after the
            # handshake is the one to this NOOP, with nothing queued ahead of it.
            secure.sendall(b"NOOP\r\n")
            assert secure.recv(1024) == b"250 2.0.0 Ok\r\n"
            secure.sendall(b"MAIL FROM:<a@outside.example>\r\n")
            reply = secure.recv(1024)
            # Had the injected MAIL been kept, this one would be "503 5.5.1 Error: nested MAIL command".
            assert reply.startswith(b"250 2.1.0"), reply
            secure.sendall(b"EHLO outside.example\r\n")
            assert b"250" in secure.recv(4096)
    log = daemon.wait_for_log("TLS connection established")
    assert re.search(r"Anonymous TLS connection established from unknown\[127\.0\.0\.2\]: TLSv1\.[23] with cipher", log)


def tls13_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls12_aes128_client() -> ssl.SSLContext:
    context = tls13_client()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    return context


@pytest.mark.parametrize("client_context", [tls13_client, tls12_aes128_client])
def test_tls_message_carries_cipher_in_received(mx_tls, client_context):
    with smtplib.SMTP("127.0.0.1", mx_tls.port) as client:
        client.starttls(context=client_context())
        name, _, bits = client.sock.cipher()
        negotiated = f"{client.sock.version()} with cipher {name} ({bits}/{bits} bits)"
        client.sendmail("a@example.test", ["b@example.test"], b"Subject: tls\r\n\r\nsecret\r\n")
    mx_tls.wait_for_log("(queue active)")
    log = mx_tls.log()
    assert "TLS connection established from localhost[127.0.0.1]" in log
    [content] = queued_contents(mx_tls)
    [received] = email.message_from_bytes(content).get_all("Received")
    # Postfix's form, e.g. "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))".
    assert f"(using {negotiated})" in " ".join(received.split()), received
    assert " with ESMTPS id " in " ".join(received.split()), received


OPEN_RELAY_TRICKS = [
    "<user@elsewhere.example>",
    "<user%elsewhere.example@example.test>",
    "<user%elsewhere.example@[127.0.0.1]>",
    '<"user@elsewhere.example">',
    '<"user@elsewhere.example"@example.test>',
    '<"user%elsewhere.example"@example.test>',
    "<elsewhere.example!user@example.test>",
    "<user@elsewhere.example@example.test>",
    "<@example.test:user@elsewhere.example>",
    "<@elsewhere.example:user@example.test>",
    "<user@[192.0.2.99]>",
    "<user@elsewhere.example.>",
    "<USER@ELSEWHERE.EXAMPLE>",
    "<postmaster@elsewhere.example>",
    "<user@example.test.elsewhere.example>",
]


@pytest.fixture
def second_listener(daemon_factory):
    port = free_port("127.0.0.2")
    daemon = daemon_factory(extra_listeners=f"127.0.0.2:{port} inet n - n - - smtpd\n")
    daemon.start()
    daemon.second_port = port
    return daemon


@pytest.mark.parametrize("recipient", OPEN_RELAY_TRICKS)
def test_open_relay_tricks_are_refused_from_outside(second_listener, recipient):
    with smtplib.SMTP("127.0.0.2", second_listener.second_port, source_address=OUTSIDE, timeout=10) as client:
        client.ehlo("outside.example")
        assert client.mail("spammer@outside.example")[0] == 250
        code, text = client.docmd(f"RCPT TO:{recipient}")
        assert code >= 500 or code in (450, 451, 454), (code, text)   # 454: defer_unauth_destination
        assert client.docmd("DATA")[0] == 554  # no valid recipients
    # cleanup logs every message before its 250, and the queue holds nothing
    assert ": message-id=" not in second_listener.log()
    assert "Mail queue is empty" in second_listener.mailq()


def test_reject_unauth_destination_answers_554(daemon_factory):
    port = free_port("127.0.0.2")
    daemon_factory(extra_listeners=f"127.0.0.2:{port} inet n - n - - smtpd\n",
                   smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination").start()
    with smtplib.SMTP("127.0.0.2", port, source_address=OUTSIDE, timeout=10) as client:
        client.ehlo("outside.example")
        client.mail("spammer@outside.example")
        assert client.rcpt("victim@elsewhere.example") == (554, b"5.7.1 <victim@elsewhere.example>: Relay access denied")
        assert client.rcpt("user@example.test")[0] == 250


def test_local_recipient_is_accepted_from_outside_and_relay_from_inside(second_listener):
    with smtplib.SMTP("127.0.0.2", second_listener.second_port, source_address=OUTSIDE, timeout=10) as client:
        assert client.sendmail("a@outside.example", ["user@example.test"], b"Subject: in\r\n\r\nx\r\n") == {}
    with smtplib.SMTP("127.0.0.1", second_listener.port, timeout=10) as client:
        assert client.sendmail("a@example.test", ["user@elsewhere.example"], b"Subject: out\r\n\r\nx\r\n") == {}
    log = second_listener.wait_for_log("(queue active)", count=2)
    assert "Relay access denied" not in log


def test_rejections_are_logged_like_postfix(second_listener):
    with smtplib.SMTP("127.0.0.2", second_listener.second_port, source_address=OUTSIDE, timeout=10) as client:
        client.ehlo("outside.example")
        client.mail("spammer@outside.example")
        # The default smtpd_relay_restrictions end in defer_unauth_destination, as Postfix's do:
        # relay_domains_reject_code - 100. 127.0.0.2 has no name (no /etc/hosts line, DNS off).
        assert client.rcpt("victim@elsewhere.example") == (454, b"4.7.1 <victim@elsewhere.example>: Relay access denied")
    log = second_listener.wait_for_log("NOQUEUE")
    assert ("NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 454 4.7.1 <victim@elsewhere.example>: "
            "Relay access denied; from=<spammer@outside.example> to=<victim@elsewhere.example> "
            "proto=ESMTP helo=<outside.example>") in log


def test_pipelining_without_ehlo_is_refused(second_listener):
    with socket.create_connection(("127.0.0.2", second_listener.second_port), source_address=OUTSIDE,
                                  timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220")
        raw.sendall(b"HELO outside.example\r\nMAIL FROM:<a@outside.example>\r\nRCPT TO:<b@example.test>\r\n")
        replies = reader.read()
    assert b"554 5.5.0" in replies
    assert "improper command pipelining" in second_listener.wait_for_log("improper command pipelining")


def unacknowledged_until_empty(sock: socket.socket, timeout: float = 10) -> None:
    """Until the peer's kernel has acknowledged everything sent on `sock` (SIOCOUTQ is 0)."""
    deadline = time.monotonic() + timeout
    while int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4), "little"):
        assert time.monotonic() < deadline, "the peer's kernel never took the bytes"
        time.sleep(0.01)


def test_talking_before_the_greeting_is_refused(second_listener):
    """Freeze the daemon, connect and talk (the kernel completes the handshake),
    thaw it: the client's words are there before the greeting could be."""
    processes = [second_listener.process.pid] + child_pids(second_listener.process.pid)
    for pid in processes:
        os.kill(pid, signal.SIGSTOP)
    try:
        raw = socket.create_connection(("127.0.0.2", second_listener.second_port), source_address=OUTSIDE,
                                       timeout=10)
        raw.sendall(b"EHLO early.example\r\n")
        unacknowledged_until_empty(raw)   # the daemon's kernel holds the words now
    finally:
        for pid in processes:
            os.kill(pid, signal.SIGCONT)
    with raw:
        try:
            replies = raw.makefile("rb").read()
        except Exception:
            print(second_listener.log())
            raise
    assert replies.startswith(b"220 ")
    assert b"554 5.5.0 Error: SMTP protocol synchronization" in replies
    log = second_listener.wait_for_log("improper command pipelining after CONNECT")
    assert "EHLO early.example" in log

