"""Malformed answers from the daemon's own back ends (issue 14, item 6): an LDAP server and a
Dovecot auth server that send garbage, through the REAL daemon.

The servers here are fakes, on purpose and only for this: a real slapd or Dovecot cannot be made
to send malformed bytes, and that is the case under test. (A real slapd and a real Dovecot that
are down or slow are the faults tests' business; they run the real ones.) Each fake is a small
TCP server on loopback (tests/peers/hostile.py) that reads the daemon's request and answers with
one kind of garbage per scenario, then hangs up.

Whatever the garbage: the client gets a temporary refusal (451 4.3.0 for a lookup, 454 4.7.0 for
AUTH), never a 5xx that would make it give up and never a 235 or a 250 the back end did not
grant; the daemon's processes survive, its memory stays bounded, and another client is served.
"""

from __future__ import annotations

import base64
import shutil
import socket
import time

import pytest

from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.hostile import HostileServer, RawSession, daemon_pids, read_line, serving_pid, vm_rss_kib
from tests.peers.mailferry import MailferryDaemon

MIB = 1024


def _reply_after_request(answer: bytes, linger: float = 0.5):
    """Read the client's first LDAP request (bind or search), answer `answer`, hang up."""
    def scenario(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(answer)
        time.sleep(linger)
    return scenario


LDAP_GARBAGE = {
    "not-ber": _reply_after_request(b"\x00\xff garbage, not BER at all\r\n" * 20),
    "truncated-message": _reply_after_request(b"\x30\x0c\x02\x01\x01\x61"),
    "unknown-operation": _reply_after_request(b"\x30\x05\x02\x01\x01\x5f\x00" * 3),
    "wrong-message-id": _reply_after_request(bytes.fromhex("300c02017f6107 0a0100 0400 0400".replace(" ", ""))),
    "length-claims-2-gib": _reply_after_request(b"\x30\x84\x7f\xff\xff\xf0\x02\x01\x01" + b"\x00" * 4096),
    "indefinite-nesting": _reply_after_request(b"\x30\x80" * 5000),
}


class Fakes:
    def __init__(self, daemon, ldap: HostileServer, auth: HostileServer, port: int):
        self.daemon, self.ldap, self.auth, self.port = daemon, ldap, auth, port


@pytest.fixture(scope="module")
def fakes():
    directory = peer_tempdir("mailferry-hostile-peers-")
    ldap = HostileServer(LDAP_GARBAGE["not-ber"]).start()
    auth = HostileServer(DOVECOT_GARBAGE["garbage-handshake"]).start()
    ldap_cf = directory / "fake-ldap.cf"
    ldap_cf.write_text(f"server_host = ldap://127.0.0.1:{ldap.port}/\nsearch_base = dc=example,dc=com\n"
                       "query_filter = (mail=%s)\nresult_attribute = mail\nbind = no\nversion = 3\n"
                       "timeout = 3\n")
    ldap_cf.chmod(0o644)
    port = free_port()
    main_cf = base_main_cf(
        directory,
        smtpd_recipient_restrictions=f"check_recipient_access ldap:{ldap_cf}, permit_mynetworks, "
                                     "reject_unauth_destination",
        smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
        smtpd_sasl_path=f"inet:127.0.0.1:{auth.port}")
    daemon = MailferryDaemon(directory, main_cf, smtpd_master_cf(port), port)
    try:
        daemon.start()
        yield Fakes(daemon, ldap, auth, port)
    finally:
        daemon.stop()
        ldap.stop()
        auth.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert not ldap.errors and not auth.errors, (ldap.errors, auth.errors)


def still_serving(fakes: Fakes, pids: set[int]) -> None:
    assert fakes.daemon.process.poll() is None, "the daemon exited"
    assert daemon_pids(fakes.daemon.process.pid) >= pids, "a daemon process died"
    with RawSession(fakes.port) as other:
        assert other.greeting.startswith(b"220 ")
        assert other.command(b"NOOP").startswith(b"250")


@pytest.mark.parametrize("name", sorted(LDAP_GARBAGE))
def test_malformed_ldap_answers_give_a_temporary_failure(fakes, name):
    fakes.ldap.scenario = LDAP_GARBAGE[name]
    connections = fakes.ldap.connections
    pids = daemon_pids(fakes.daemon.process.pid)
    with RawSession(fakes.port) as session:
        assert session.command(b"EHLO outside.example").startswith(b"250")
        worker = serving_pid(fakes.daemon.process.pid, session.sock)
        before = vm_rss_kib(worker)
        assert session.command(b"MAIL FROM:<a@outside.example>").startswith(b"250")
        reply = session.command(f"RCPT TO:<{name}@example.test>".encode())
        grown = vm_rss_kib(worker) - before
        assert reply.startswith(b"451 4.3.0 <") and b"Temporary lookup failure" in reply, reply
        assert session.command(b"QUIT").startswith(b"221")
    print(f"\nLDAP {name}: {reply.strip()!r}, worker VmRSS +{grown} KiB")
    assert fakes.ldap.connections > connections, "the fake LDAP server was asked"
    assert grown < 16 * MIB, f"the worker grew by {grown} KiB"
    still_serving(fakes, pids)


# --- Dovecot's auth protocol, broken ----------------------------------------------------------------

HANDSHAKE = b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\tabc\nDONE\n"


def _dovecot(handshake: bytes = HANDSHAKE, answer: bytes | None = None):
    """Read the client's VERSION and CPID, send `handshake`; if that ended with DONE, read one
    AUTH and send `answer` (None: hang up instead). Then hang up."""
    def scenario(connection: socket.socket) -> None:
        while not read_line(connection).startswith(b"CPID"):
            pass
        connection.sendall(handshake)
        if not handshake.endswith(b"DONE\n"):
            time.sleep(0.5)
            return
        request = read_line(connection)
        if not request.startswith(b"AUTH\t"):
            return      # the daemon dropped this connection (it keeps one and reopens it when lost)
        if answer is not None:
            connection.sendall(answer.replace(b"{id}", request.split(b"\t")[1]))
        time.sleep(0.5)
    return scenario


DOVECOT_GARBAGE = {
    "garbage-handshake": _dovecot(b"\x00\xff\xfe not the auth protocol\n" * 3),
    "bad-version": _dovecot(HANDSHAKE.replace(b"VERSION\t1\t2", b"VERSION\t9\t0")),
    "overlong-handshake-line": _dovecot(b"VERSION\t1\t2\nMECH\tPLAIN\t" + b"x" * 300_000),
    "ok-without-user": _dovecot(answer=b"OK\t{id}\n"),
    "unknown-answer": _dovecot(answer=b"WHAT\t{id}\tuser=user1\n"),
    "cont-for-plain": _dovecot(answer=b"CONT\t{id}\t!!!not-base64\n"),
    "answer-for-another-id": _dovecot(answer=b"OK\t999999\tuser=user1\n"),
    "no-tabs": _dovecot(answer=b"OK {id} user=user1\n"),
    "overlong-answer": _dovecot(answer=b"OK\t{id}\tuser=" + b"u" * 300_000 + b"\n"),
    "nul-and-invalid-utf8": _dovecot(answer=b"FAIL\t{id}\treason=\x00\xff\xfe\ttemp\n"),
    "hang-up-on-auth": _dovecot(answer=None),
}


@pytest.mark.parametrize("name", sorted(DOVECOT_GARBAGE))
def test_malformed_dovecot_auth_answers_give_a_temporary_failure(fakes, name):
    fakes.auth.scenario = DOVECOT_GARBAGE[name]
    connections = fakes.auth.connections
    pids = daemon_pids(fakes.daemon.process.pid)
    response = base64.b64encode(b"\0user1\0secret").decode()
    with RawSession(fakes.port) as session:
        assert session.command(b"EHLO outside.example").startswith(b"250")
        worker = serving_pid(fakes.daemon.process.pid, session.sock)
        before = vm_rss_kib(worker)
        reply = session.command(f"AUTH PLAIN {response}".encode())
        grown = vm_rss_kib(worker) - before
        # The session goes on: not authenticated, and still able to send as any outside client.
        assert session.command(b"MAIL FROM:<a@outside.example>").startswith(b"250")
        assert session.command(b"QUIT").startswith(b"221")
    print(f"\nDovecot {name}: {reply.strip()!r}, worker VmRSS +{grown} KiB")
    assert reply.startswith(b"454 4.7.0 Temporary authentication failure"), reply
    assert reply.isascii(), "a reply is ASCII"
    assert fakes.auth.connections > connections, "the fake auth server was asked"
    assert grown < 16 * MIB, f"the worker grew by {grown} KiB"
    still_serving(fakes, pids)


def _silent(connection: socket.socket) -> None:
    """An LDAP server that takes the request and says nothing until the client's timeout."""
    connection.recv(65536)
    time.sleep(5)


def test_a_client_pipelining_while_a_lookup_waits_is_not_buffered_without_bound(fakes):
    """While smtpd waits for a slow lookup (here: an LDAP server that never answers, up to the
    table's timeout), a client keeps sending pipelined commands as fast as loopback goes. smtpd must
    stop reading rather than buffer all of it."""
    fakes.ldap.scenario = _silent
    pids = daemon_pids(fakes.daemon.process.pid)
    flood = b"NOOP\r\n" * (1 << 14)        # 96 KiB a write
    with RawSession(fakes.port) as session:
        assert session.command(b"EHLO outside.example").startswith(b"250")
        worker = serving_pid(fakes.daemon.process.pid, session.sock)
        before = vm_rss_kib(worker)
        assert session.command(b"MAIL FROM:<a@outside.example>").startswith(b"250")
        session.send(b"RCPT TO:<slow@example.test>\r\n")
        session.sock.settimeout(0.2)
        sent, peak = 0, before
        deadline = time.monotonic() + 2.5       # well inside the lookup's 3 s timeout
        while time.monotonic() < deadline and sent < (400 << 20):
            try:
                session.sock.sendall(flood)
                sent += len(flood)
            except (TimeoutError, socket.timeout):
                pass        # the daemon stopped reading: the kernel buffers are full
            except (ConnectionResetError, BrokenPipeError):
                break       # the lookup failed, the NOOPs ran into the error limits: 421 and closed
            peak = max(peak, vm_rss_kib(worker))
        session.sock.settimeout(30)
    print(f"\nflood while a lookup waits: {sent >> 20} MiB sent, worker VmRSS {before} KiB, peak +{peak - before} KiB")
    assert peak - before < 32 * MIB, f"the worker grew by {peak - before} KiB ({sent >> 20} MiB sent)"
    still_serving(fakes, pids)
