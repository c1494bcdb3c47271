"""Hostile input through the REAL daemon (issue 14, item 6): fixed vectors.

One daemon for the module, as a public MX would run: a port-25-style smtpd and a port-587-style
submission service (STARTTLS required), the client connecting from 127.0.0.2 (outside
mynetworks = 127.0.0.1/32). Mail for example.test goes to a real smtp-sink, mail for
pipe.example to a pipe(8) service whose command records its argv, and mail for the bad-*.example
domains to small hostile SMTP servers (tests/peers/hostile.py) that answer with malformed
replies: no real server can be made to do that.

Each vector gets a clear reply, the worker's memory stays bounded (VmRSS from /proc before and
after), nothing crashes (the daemon's process set is unchanged and it still greets), and nothing
acknowledged is lost or duplicated: what got a 250 reaches the sink exactly once, what a hostile
next hop garbled stays queued, deferred with a reason that says what was wrong.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from mailferry.queue import SqliteQueueStore
from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir
from tests.peers.hostile import HostileServer, RawSession, daemon_pids, read_line, serving_pid, vm_rss_kib
from tests.peers.mailferry import MailferryDaemon
from tests.peers.smtp_sink import SmtpSink

MESSAGE_SIZE_LIMIT = 2_000_000
PIPE_USER = "daemon"
MIB = 1024

SMUGGLING_ENDINGS = {
    "LF.LF": b"\n.\n", "LF.CRLF": b"\n.\r\n", "CRLF.LF": b"\r\n.\n", "CR.CR": b"\r.\r",
    "CR.CRLF": b"\r.\r\n", "CRLF.CR": b"\r\n.\r", "LF.CR": b"\n.\r", "CRLF.NUL.CRLF": b"\r\n.\x00\r\n",
    "CRLF.SP.CRLF": b"\r\n. \r\n", "CR.LF": b"\r.\n", "CRLF.CRCRLF": b"\r\n.\r\r\n",
}

RECORDER = """#!/bin/sh
# pipe(8) command for the tests: record argv exactly (NUL-separated), read the message, succeed.
run=$(mktemp -d "{records}/run.XXXXXX")
printf '%s\\0' "$0" "$@" > "$run/argv"
cat > "$run/stdin.part" && mv "$run/stdin.part" "$run/stdin"
exit 0
"""


# --- Hostile next hops: what each says once the client speaks ------------------------------------------

def _greet_then(after_ehlo: bytes | None = None, after_mail: bytes | None = None,
                after_data: bytes | None = None, after_dot: bytes | None = None,
                greeting: bytes = b"220 bad.example ESMTP\r\n"):
    """A scenario that speaks proper SMTP except at the step given."""
    def scenario(connection: socket.socket) -> None:
        connection.sendall(greeting)
        if greeting[:3] != b"220":
            time.sleep(1)
            return
        line = read_line(connection)
        connection.sendall(after_ehlo or b"250-bad.example\r\n250 8BITMIME\r\n")
        if after_ehlo is not None:
            time.sleep(1)
            return
        while line := read_line(connection):
            verb = line[:4].upper()
            if verb == b"MAIL":
                connection.sendall(after_mail or b"250 2.1.0 Ok\r\n")
                if after_mail is not None:
                    time.sleep(1)
                    return
            elif verb == b"RCPT":
                connection.sendall(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                connection.sendall(after_data or b"354 go\r\n")
                if after_data is not None:
                    time.sleep(1)
                    return
                while read_line(connection, 1 << 24) != b".":
                    pass
                connection.sendall(after_dot or b"250 2.0.0 Ok: queued\r\n")
                time.sleep(1)
                return
            elif verb == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:
                connection.sendall(b"250 Ok\r\n")
    return scenario


HOSTILE_NEXT_HOPS = {
    # name: (scenario, what the deferral reason must say)
    "garbage-greeting": (_greet_then(greeting=b"\x00\xff\xfeHELLO\r\n"), "malformed reply"),
    "overlong-line": (_greet_then(greeting=b"220 " + b"x" * 200_000 + b"\r\n"), "longer than"),
    "mixed-multiline": (_greet_then(after_ehlo=b"250-bad.example\r\n251 PIPELINING\r\n"), "continues a 250"),
    "endless-multiline": (_greet_then(after_ehlo=b"250-x\r\n" * 1500 + b"250 x\r\n"), "more than 1000 lines"),
    "code-999": (_greet_then(after_mail=b"999 what\r\n"), "malformed reply"),
    "no-space": (_greet_then(after_mail=b"250Ok\r\n"), "malformed reply"),
    "250-to-data": (_greet_then(after_data=b"250 2.0.0 Ok\r\n"), "unexpected reply"),
    "cut-mid-reply": (_greet_then(after_data=b"35"), "lost connection"),
}


class HostileMx:
    def __init__(self, daemon: MailferryDaemon, sink: SmtpSink, records: Path, servers: dict, ports: dict):
        self.daemon, self.sink, self.records, self.servers, self.ports = daemon, sink, records, servers, ports

    def session(self, service: str = "smtp") -> RawSession:
        session = RawSession(self.ports[service])
        assert session.greeting.startswith(b"220 "), session.greeting
        if service == "submission":
            ehlo(session)
            assert session.command(b"STARTTLS").startswith(b"220 2.0.0")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            session.sock = context.wrap_socket(session.sock, server_hostname="mx.example.test")
            session.reader = session.sock.makefile("rb")
        return session

    def sink_messages(self, token: str) -> list:
        """The finished dumps that mention `token` (a dump still being written is skipped)."""
        return [message for message in self.sink.messages()
                if token.encode() in message.message or token in message.sender]

    def wait_for_sink(self, token: str, count: int = 1, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while len(found := self.sink_messages(token)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} messages with {token} reached the sink"
            time.sleep(0.05)
        return found

    def still_serving(self, pids_before: set[int]) -> None:
        """No process died or was replaced, and a new client is greeted and answered."""
        assert self.daemon.process.poll() is None, "the daemon exited"
        assert daemon_pids(self.daemon.process.pid) >= pids_before, "a daemon process died"
        with RawSession(self.ports["smtp"]) as other:
            assert other.greeting.startswith(b"220 ")
            assert other.command(b"NOOP").startswith(b"250")


def ehlo(session: RawSession) -> bytes:
    reply = session.command(b"EHLO outside.example")
    assert reply.startswith(b"250"), reply
    return reply


def start_data(session: RawSession, sender: str, recipient: str = "user@example.test") -> None:
    """MAIL, RCPT and DATA, each accepted: the message may follow."""
    assert session.command(f"MAIL FROM:<{sender}>".encode()).startswith(b"250")
    assert session.command(f"RCPT TO:<{recipient}>".encode()).startswith(b"250")
    assert session.command(b"DATA").startswith(b"354")


def token() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def mx():
    directory = peer_tempdir("mailferry-hostile-")
    sink = SmtpSink(peer_tempdir("mailferry-hostile-sink-")).start()
    servers = {name: HostileServer(scenario).start() for name, (scenario, _) in HOSTILE_NEXT_HOPS.items()}
    recorder_root = peer_tempdir("mailferry-hostile-pipe-")
    records = recorder_root / "records"
    records.mkdir()
    account = pwd.getpwnam(PIPE_USER)
    os.chown(records, account.pw_uid, account.pw_gid)
    program = recorder_root / "record-argv"
    program.write_text(RECORDER.replace("{records}", str(records)))
    program.chmod(0o755)
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o644)
    port, submission = free_port(), free_port()
    routes = {"example.test": f"smtp:{sink.nexthop}", "pipe.example": "recorder:"}
    routes.update({f"{name}.example": f"smtp:{server.nexthop}" for name, server in servers.items()})
    transports = "inline:{ " + ", ".join(f"{domain}={route}" for domain, route in routes.items()) + " }"
    main_cf = base_main_cf(
        directory, message_size_limit=str(MESSAGE_SIZE_LIMIT), transport_maps=transports,
        relay_domains=", ".join(domain for domain in routes if domain != "example.test"),
        smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
        # a deferred message is retried soon, and the hostile next hops are asked again
        minimal_backoff_time="5s", maximal_backoff_time="10s", queue_run_delay="5s",
        smtp_connect_timeout="5s", smtp_helo_timeout="10s")
    master_cf = smtpd_master_cf(
        port,
        extra_listeners=(f"127.0.0.1:{submission} inet n - n - - smtpd\n"
                         "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_tls_auth_only=yes\n"),
        extra_services=f"recorder unix - n n - - pipe\n  user={PIPE_USER} argv={program} ${{sender}} ${{recipient}}\n")
    daemon = MailferryDaemon(directory, main_cf, master_cf, port)
    try:
        daemon.start()
        yield HostileMx(daemon, sink, records, servers, {"smtp": port, "submission": submission})
        for server in servers.values():
            assert not server.errors, server.errors
    finally:
        daemon.stop()
        sink.stop()
        for server in servers.values():
            server.stop()
        for path in (directory, sink.directory, recorder_root):
            shutil.rmtree(path, ignore_errors=True)


# --- SMTP smuggling: one message in, one message out -------------------------------------------------

@pytest.mark.parametrize("service", ["smtp", "submission"])
@pytest.mark.parametrize("name", sorted(SMUGGLING_ENDINGS))
def test_smuggled_end_of_data_reaches_the_sink_as_one_message(mx, service, name):
    mark = token()
    smuggled = (f"MAIL FROM:<smuggled-{mark}@evil.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
                f"Subject: smuggled\r\n\r\nforged-{mark}").encode()
    with mx.session(service) as session:
        ehlo(session)
        start_data(session, f"honest-{mark}@outside.example")
        session.send(f"Subject: {mark}\r\n\r\nbefore".encode() + SMUGGLING_ENDINGS[name] + smuggled
                     + b"\r\n.\r\nQUIT\r\n")
        replies = session.rest()
    # A fooled server would answer 250 twice (and 250/354 to the smuggled commands).
    assert replies.startswith(b"250 2.0.0 Ok: queued as "), replies
    assert replies.count(b"\r\n") == 2 and replies.split(b"\r\n")[1].startswith(b"221"), replies
    [message] = mx.wait_for_sink(f"honest-{mark}")
    assert message.recipients == ["user@example.test"]
    assert f"forged-{mark}".encode() in message.message     # the smuggled text stayed inside
    mx.daemon.wait_for_log(f"from=<honest-{mark}@outside.example>")
    log = mx.daemon.log()
    assert f"smuggled-{mark}" not in "".join(line for line in log.splitlines(True) if "from=<" in line)
    assert len(mx.sink_messages(f"smuggled-{mark}")) == 1, "only the honest message carries the text"


# --- NUL and invalid UTF-8 --------------------------------------------------------------------------

def test_nul_bytes_in_commands_get_a_syntax_error_and_the_session_goes_on(mx):
    pids = daemon_pids(mx.daemon.process.pid)
    with mx.session() as session:
        ehlo(session)
        for line in (b"MAIL FROM:<a\x00b@outside.example>", b"NOOP\x00", b"\x00", b"EHLO a\x00b"):
            assert session.command(line).startswith(b"500 5.5.2 Error: bad syntax"), line
        assert session.command(b"MAIL FROM:<a@outside.example>").startswith(b"250")
        assert session.command(b"RCPT TO:<a\x00@example.test>").startswith(b"500 5.5.2")
        assert session.command(b"QUIT").startswith(b"221")
    mx.still_serving(pids)


def test_nul_bytes_in_data_are_delivered_as_sent(mx):
    mark = token()
    content = f"Subject: nul {mark}\r\nX-Nul: a\x00b\r\n\r\nbody\x00with\x00nuls\r\n".encode()
    with mx.session() as session:
        ehlo(session)
        start_data(session, f"{mark}@outside.example")
        reply = session.command(content + b".")
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    [message] = mx.wait_for_sink(mark)
    assert b"body\x00with\x00nuls" in message.message


def test_invalid_utf8_in_commands_and_addresses_is_refused_cleanly(mx):
    pids = daemon_pids(mx.daemon.process.pid)
    with mx.session() as session:
        assert session.command(b"EHLO \xff\xfe.example")[:1] in (b"2", b"5")
        ehlo(session)
        assert session.command(b"MAIL FROM:<\xff@outside.example>").startswith(b"501 5.1.7")
        assert session.command(b"MAIL FROM:<\xc3\x28@outside.example> SMTPUTF8").startswith(b"501 5.1.7")
        assert session.command(b"MAIL FROM:<a@outside.example>").startswith(b"250")
        assert session.command(b"RCPT TO:<\xc3\x28@example.test>").startswith(b"501 5.1.3")
        assert session.command(b"RCPT TO:<user@\xff.example.test>").startswith(b"501 5.1.3")
        assert session.command(b"\xff\xfe\xfd")[:3] in (b"500", b"221")
    mx.still_serving(pids)


def test_invalid_utf8_in_headers_is_delivered_byte_for_byte(mx):
    mark = token()
    with mx.session() as session:
        ehlo(session)
        start_data(session, f"{mark}@outside.example")
        reply = session.command(f"Subject: {mark} \xff\xfe\r\nFrom: \xc3\x28 <a@outside.example>\r\n"
                                f"\r\nbody\r\n.".encode("latin-1"))
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    [message] = mx.wait_for_sink(mark)
    assert f"{mark} \xff\xfe".encode("latin-1") in message.message and b"From: \xc3\x28 <" in message.message


# --- Size: a 10 MB line, a 1 MB header, 100,000 recipients -------------------------------------------

def worker_of(mx, session: RawSession) -> int:
    return serving_pid(mx.daemon.process.pid, session.sock)


def send_in_pieces(session: RawSession, data: bytes, piece: int = 1 << 20) -> None:
    for start in range(0, len(data), piece):
        session.send(data[start:start + piece])


def test_a_10_mb_command_line_is_refused_with_bounded_memory(mx):
    pids = daemon_pids(mx.daemon.process.pid)
    with mx.session() as session:
        ehlo(session)
        worker = worker_of(mx, session)
        before = vm_rss_kib(worker)
        send_in_pieces(session, b"NOOP " + b"x" * (10 << 20) + b"\r\n")
        assert session.reply().startswith(b"500 5.5.2 Error: command too long")
        grown = vm_rss_kib(worker) - before
        assert session.command(b"NOOP").startswith(b"250")
    print(f"\n10 MB command line: worker VmRSS {before} KiB, +{grown} KiB")
    # The line is thrown away as it arrives: a few read buffers, never the 10 MB.
    assert grown < 8 * MIB, f"the worker grew by {grown} KiB"
    mx.still_serving(pids)


def test_a_10_mb_line_in_data_is_refused_with_bounded_memory(mx):
    pids = daemon_pids(mx.daemon.process.pid)
    mark = token()
    with mx.session() as session:
        ehlo(session)
        worker = worker_of(mx, session)
        start_data(session, f"{mark}@outside.example")
        before = vm_rss_kib(worker)
        send_in_pieces(session, f"Subject: {mark}\r\n\r\n".encode() + b"y" * (10 << 20) + b"\r\n.\r\n")
        reply = session.reply()
        grown = vm_rss_kib(worker) - before
        assert reply.startswith(b"552 5.3.4"), reply
        assert session.command(b"RSET").startswith(b"250")
    print(f"\n10 MB line in DATA: worker VmRSS {before} KiB, +{grown} KiB")
    # Stored up to message_size_limit, then no more (a copy or two of the limit, not of 10 MB).
    assert grown < 3 * MESSAGE_SIZE_LIMIT // 1024 + 8 * MIB, f"the worker grew by {grown} KiB"
    assert not mx.sink_messages(mark)
    mx.still_serving(pids)


def test_a_1_mb_header_gets_a_clear_reply_with_bounded_memory(mx):
    mark = token()
    folded = b"".join(b"\t" + b"h" * 996 + b"\r\n" for _ in range(1050))       # ~1 MB, in 998-octet lines
    with mx.session() as session:
        ehlo(session)
        worker = worker_of(mx, session)
        start_data(session, f"{mark}@outside.example")
        before = vm_rss_kib(worker)
        send_in_pieces(session, f"Subject: {mark}\r\nX-Huge: start\r\n".encode() + folded + b"\r\nbody\r\n.\r\n")
        reply = session.reply()
        grown = vm_rss_kib(worker) - before
        assert session.command(b"NOOP").startswith(b"250")
    print(f"\n1 MB header: {reply[:40]!r}, worker VmRSS {before} KiB, +{grown} KiB")
    assert reply[:1] in (b"2", b"5") and reply.endswith(b"\r\n"), reply
    assert grown < 3 * MESSAGE_SIZE_LIMIT // 1024 + 8 * MIB, f"the worker grew by {grown} KiB"
    if reply.startswith(b"250"):
        [message] = mx.wait_for_sink(mark)       # accepted: delivered, once
        assert message.message.count(b"\n\th") >= 1
        # header_size_limit (102400): the header arrives cut, as Postfix's cleanup cuts it.
        assert len(message.message) < 102400 + 16384, len(message.message)


def test_100000_recipients_are_bounded_and_others_are_still_served(mx):
    """smtpd_recipient_limit (1000) then smtpd_recipient_overshoot_limit and smtpd_hard_error_limit
    end the session long before 100,000; meanwhile another client is served and the worker's
    memory stays bounded."""
    pids = daemon_pids(mx.daemon.process.pid)
    mark = token()
    session = mx.session()
    ehlo(session)
    worker = worker_of(mx, session)
    before = vm_rss_kib(worker)
    commands = [f"MAIL FROM:<{mark}@outside.example>\r\n".encode()]
    commands += [f"RCPT TO:<r{number}@example.test>\r\n".encode() for number in range(100_000)]

    def write() -> None:
        try:
            for start in range(0, len(commands), 500):
                session.send(b"".join(commands[start:start + 500]))
        except OSError:
            pass    # the server hung up after its 421, as it should

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    peak = before
    replies = []
    other_served = False
    try:
        while reply := session.reply():
            replies.append(reply[:3])
            if len(replies) % 200 == 0:
                peak = max(peak, vm_rss_kib(worker))
            if replies[-1] == b"452" and not other_served:
                # The client is now being throttled: another one is still served.
                with RawSession(mx.ports["smtp"]) as other:
                    assert other.greeting.startswith(b"220 ")
                    assert other.command(b"NOOP").startswith(b"250")
                other_served = True
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        session.close()
        writer.join(30)
    accepted = replies.count(b"250")
    print(f"\n100,000 RCPTs: {len(replies)} replies ({accepted} x 250, then {replies.count(b'452')} x 452, "
          f"{replies[-1]!r}); worker VmRSS {before} KiB, peak +{peak - before} KiB")
    assert replies[0] == b"250" and accepted == 1 + 1000, (accepted, replies[:3])
    assert replies[-1] == b"421", replies[-3:]
    assert len(replies) < 3000, "the error limits end the session"
    assert other_served
    assert peak - before < 32 * MIB, f"the worker grew by {peak - before} KiB"
    mx.daemon.wait_for_log("too many errors after RCPT")
    mx.still_serving(pids)


# --- Shell metacharacters ------------------------------------------------------------------------------

def test_mail_from_with_shell_metacharacters_is_refused_cleanly(mx):
    with mx.session() as session:
        ehlo(session)
        began = time.monotonic()
        reply = session.command(b"MAIL FROM:<;sleep 66;>")
        took = time.monotonic() - began
    assert reply.startswith(b"501 5.1.7 Bad sender address syntax"), reply
    assert took < 30, "nothing ran the sleep"


def test_shell_metacharacters_reach_a_pipe_command_literally(mx):
    """Quoted local parts may carry any printable character. The pipe service's argv gets them
    as one word each, never through a shell: no command runs, nothing sleeps."""
    canary = Path(f"/tmp/mailferry-hostile-canary-{token()}")
    sender = f'";sleep 66;touch {canary};"@outside.example'
    recipient = f'"$(touch {canary})`touch {canary}`|x;sleep 66"@pipe.example'
    with mx.session() as session:
        ehlo(session)
        start_data(session, sender, recipient)
        assert session.command(b"Subject: shell\r\n\r\nhi\r\n.").startswith(b"250")
    deadline = time.monotonic() + 30
    while not (runs := [run for run in mx.records.iterdir() if (run / "stdin").exists()
                        and str(canary).encode() in (run / "argv").read_bytes()]):
        assert time.monotonic() < deadline, "the pipe command never ran"
        time.sleep(0.05)
    argv = (runs[0] / "argv").read_bytes().decode().split("\0")[:-1]
    assert len(argv) == 3, argv
    assert ";sleep 66;touch " in argv[1] and argv[1].endswith("@outside.example"), argv
    assert f"$(touch {canary})`touch {canary}`|x;sleep 66" in argv[2] and argv[2].endswith("@pipe.example"), argv
    assert not canary.exists(), "a shell ran the address"
    mx.daemon.wait_for_log("status=sent (delivered via recorder service)")


# --- Our SMTP client: addresses with line ends, hostile next hops --------------------------------------

def queued(daemon: MailferryDaemon) -> dict[str, list]:
    store = SqliteQueueStore(daemon.queue_directory / "queue.db")
    try:
        return {message.queue_id: [(r.address, r.status) for r in message.recipients]
                for message in store.messages()}
    finally:
        store.close()


def test_cr_lf_in_an_address_never_reaches_the_wire(mx):
    """An address with CR LF in it, from the one door that does not parse SMTP (sendmail -f), can
    never become a command of its own on our client's connection."""
    mark = token()
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"
    sender = f"{mark}@outside.example\r\nRCPT TO:<injected-{mark}@example.test>"
    result = subprocess.run([str(sendmail), "-C", str(mx.daemon.config_dir), "-f", sender, "user@example.test"],
                            input=f"Subject: {mark}\n\nbody\n".encode(), capture_output=True, timeout=60)
    if result.returncode != 0:
        # Refused at the door: clearly, and nothing was queued.
        assert result.stderr.strip(), "a refusal says why"
        assert mark not in mx.daemon.log()
        return
    log = mx.daemon.wait_for_log(f"{mark}", timeout=30)
    deadline = time.monotonic() + 30
    while "status=" not in "".join(line for line in mx.daemon.log().splitlines(True) if mark in line):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.1)
    time.sleep(1)
    for message in mx.sink.messages():
        assert f"injected-{mark}" not in " ".join(message.recipients), "a command was injected"


@pytest.mark.parametrize("name", sorted(HOSTILE_NEXT_HOPS))
def test_a_hostile_next_hop_defers_with_a_clear_reason(mx, name):
    server = mx.servers[name]
    _, reason = HOSTILE_NEXT_HOPS[name]
    pids = daemon_pids(mx.daemon.process.pid)
    mark = token()
    with mx.session() as session:
        ehlo(session)
        start_data(session, f"{mark}@outside.example", f"user@{name}.example")
        reply = session.command(f"Subject: {mark}\r\n\r\nbody\r\n.".encode())
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    queue_id = reply.split()[-1].decode()
    line = mx.daemon.wait_for_log(f"{queue_id}: to=<user@{name}.example>", timeout=60)
    [outcome] = [text for text in line.splitlines() if f"{queue_id}: to=<user@{name}.example>" in text]
    assert "status=deferred" in outcome and reason in outcome, outcome
    assert server.connections >= 1
    # Nothing lost: still queued for that recipient, waiting for the next try.
    assert queued(mx.daemon).get(queue_id), f"{queue_id} left the queue: {outcome}"
    mx.still_serving(pids)
