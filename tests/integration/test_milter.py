"""smtpd_milters through the real daemon, against a real milter: tests/peers/pymilter_peer.py,
written with Debian's python3-milter (pymilter on Sendmail's libmilter), run as its own process.

The milter's behaviour is chosen per message: the `X-Milter-Test:` header lists what it does at
end of message; recipients named reject-rcpt@, tempfail-rcpt@, discard-rcpt@ get that at RCPT.
Mail that gets through goes to Postfix's smtp-sink, which records it; the milter records what it
saw (macros per stage, envelope, headers, body).

One daemon (module-wide) serves the tests of replies, modifications and macros; a second one,
with several smtpd services, the default actions (milter down, time-out) and the switches.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import time
import uuid

import pytest

from tests.integration.auth_peers import PASSWORD, dovecot_auth, make_certificate, plain  # noqa: F401 (a fixture)
from tests.integration.conftest import Daemon, base_main_cf, smtpd_master_cf, world_readable_tempdir
from tests.peers import free_port, peer_tempdir
from tests.peers.milter_peer import TestMilter
from tests.peers.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

SENDER = "alice@example.test"
RCPT = "bob@elsewhere.example"


@pytest.fixture(scope="module")
def test_milter():
    milter = TestMilter(peer_tempdir("milter-")).start()
    yield milter
    milter.stop()
    shutil.rmtree(milter.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def unix_milter():
    milter = TestMilter(peer_tempdir("milter-unix-"), unix=True).start()
    yield milter
    milter.stop()
    shutil.rmtree(milter.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def sink():
    sink = SmtpSink(peer_tempdir("milter-sink-")).start()
    yield sink
    sink.stop()
    shutil.rmtree(sink.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_files():
    return make_certificate()


def start_daemon(request, extra_listeners: str = "", **main_cf: str) -> Daemon:
    directory = world_readable_tempdir("mailferry-milter-")
    port = free_port()
    daemon = Daemon(directory, base_main_cf(directory, **main_cf), smtpd_master_cf(port, extra_listeners), port)

    def stop():
        try:
            daemon.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    request.addfinalizer(stop)
    return daemon.start()


@pytest.fixture(scope="module")
def mx(request, test_milter, sink, dovecot_auth, tls_files):
    """The daemon with the test milter in smtpd_milters, STARTTLS and Dovecot AUTH, relaying to the sink."""
    _, cert, key = tls_files
    return start_daemon(request, relayhost=sink.nexthop, default_transport="smtp",
                        smtpd_milters=test_milter.socket, smtpd_tls_security_level="may",
                        smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
                        smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
                        smtpd_sasl_path=dovecot_auth.sasl_path)


def message(subject: str, actions: str = "", extra: str = "") -> str:
    test = f"X-Milter-Test: {actions}\r\n" if actions else ""
    return (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n{test}{extra}\r\n"
            "Hello from the milter tests.\r\n")


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def send(port: int, text: str, recipients: list[str] | None = None, sender: str = SENDER,
         source: str = "127.0.0.1", login: str = "", tls_ca=None) -> tuple[int, str]:
    """(code, text) of the end of DATA; asserts that MAIL and each RCPT got 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as client:
        client.ehlo("client.example")
        if tls_ca is not None:
            context = ssl.create_default_context(cafile=str(tls_ca))
            context.check_hostname = False
            client.starttls(context=context)
            client.ehlo("client.example")
        if login:
            code, reply = client.docmd("AUTH", "PLAIN " + plain(login, PASSWORD))
            assert code == 235, reply
        code, reply = client.mail(sender)
        assert code == 250, (code, reply)
        for recipient in recipients or [RCPT]:
            code, reply = client.rcpt(recipient)
            assert code == 250, (code, reply)
        code, reply = client.data(text.encode())
        return code, reply.decode()


def complete_messages(sink: SmtpSink) -> list:
    """The sink's messages; a dump still being written is waited for (smtp-sink writes as it reads)."""
    for _ in range(200):
        try:
            return sink.messages()
        except AssertionError:
            time.sleep(0.05)
    return sink.messages()


def arrived(sink: SmtpSink, text: str, timeout: float = 30.0):
    """The sink's message that contains `text` (its Subject, say), once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in complete_messages(sink):
            if text.encode() in found.message:
                return found
        time.sleep(0.05)
    raise AssertionError(f"no message with {text!r} at the sink after {timeout:.0f} s")


def never_arrived(sink: SmtpSink, text: str) -> bool:
    return not any(text.encode() in found.message for found in complete_messages(sink))


def seen_by_milter(milter: TestMilter, subject: str) -> dict:
    """What the milter recorded of the message with this Subject."""
    for _ in range(400):
        for record in milter.records_seen():
            if any(name == "Subject" and value == subject for name, value in record["headers"]):
                return record
        time.sleep(0.05)
    raise AssertionError(f"the milter recorded no message with Subject {subject!r}")


# --- replies


@pytest.mark.parametrize("actions, expected", [
    ("reject", (550, "5.7.1 rejected by the test milter")),
    ("reject-plain", (550, "5.7.1 Command rejected")),
    ("tempfail", (451, "4.7.1 Service unavailable - try again later")),
    ("tempfail-custom", (451, "4.7.0 try again later, says the test milter")),
])
def test_a_refusal_at_end_of_data_reaches_the_client_and_nothing_is_queued(mx, sink, actions, expected):
    subject = unique(actions)
    assert send(mx.port, message(subject, actions)) == expected
    mx.wait_for_log(f"milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: {expected[1]}; "
                          f"from=<{SENDER}> to=<{RCPT}> proto=ESMTP helo=<client.example>")
    assert mx.queue_summary()[0] == 0
    assert never_arrived(sink, subject)


def test_a_milter_reject_at_rcpt_refuses_that_recipient_only(mx, sink):
    subject = unique("rcpt reject")
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=60) as client:
        client.ehlo("client.example")
        client.mail(SENDER)
        assert client.rcpt("reject-rcpt@elsewhere.example") == (550, b"5.7.1 recipient refused by the test milter")
        assert client.rcpt("tempfail-rcpt@elsewhere.example") == (
            451, b"4.7.1 Service unavailable - try again later")
        assert client.rcpt(RCPT)[0] == 250
        assert client.data(message(subject).encode())[0] == 250
    assert arrived(sink, subject).recipients == [RCPT]
    mx.wait_for_log("NOQUEUE: milter-reject: RCPT from localhost[127.0.0.1]: 550 5.7.1 recipient refused by "
                    "the test milter; from=<alice@example.test> to=<reject-rcpt@elsewhere.example> proto=ESMTP "
                    "helo=<client.example>")


def test_a_reject_at_connect_greets_554_and_refuses_mail_as_postfix_does(mx):
    with smtplib.SMTP(timeout=60, source_address=("127.0.0.5", 0)) as client:
        assert client.connect("127.0.0.1", mx.port) == (554, b"mx.example.test ESMTP not accepting connections")
        assert client.ehlo("client.example")[0] == 250
        assert client.mail(SENDER) == (550, b"5.7.1 Command rejected")
    mx.wait_for_log("NOQUEUE: milter-reject: CONNECT from unknown[127.0.0.5]: 550 5.7.1 Command rejected;")


def test_a_tempfail_at_connect_greets_220_and_refuses_mail_with_451(mx):
    with smtplib.SMTP(timeout=60, source_address=("127.0.0.6", 0)) as client:
        assert client.connect("127.0.0.1", mx.port)[0] == 220
        assert client.ehlo("client.example")[0] == 250
        assert client.mail(SENDER) == (451, b"4.7.1 Service unavailable - try again later")


def test_discard_accepts_and_drops(mx, sink):
    subject = unique("discard")
    assert send(mx.port, message(subject, "discard"))[0] == 250
    mx.wait_for_log("milter-discard: END-OF-MESSAGE from localhost[127.0.0.1]: milter triggers DISCARD action;")
    subject_rcpt = unique("discard at rcpt")
    assert send(mx.port, message(subject_rcpt), ["discard-rcpt@elsewhere.example"])[0] == 250
    mx.wait_for_log("milter-discard: END-OF-MESSAGE", count=2)
    assert mx.queue_summary()[0] == 0
    assert never_arrived(sink, subject)


def test_accept_delivers_unchanged(mx, sink):
    subject = unique("accept")
    assert send(mx.port, message(subject, "accept"))[0] == 250
    found = arrived(sink, subject)
    assert found.email["X-Milter-Test"] == "accept"
    assert found.sender == SENDER and found.recipients == [RCPT]


# --- modifications


def test_header_modifications_arrive(mx, sink):
    subject = unique("headers")
    text = message(subject, "add-header, change-header, delete-header, insert-header", "X-Remove-Me: please\r\n")
    assert send(mx.port, text)[0] == 250
    found = arrived(sink, "changed by the milter")
    headers = found.message.split(b"\n\n", 1)[0].decode()
    assert headers.startswith("X-Milter-Inserted: at the top\nReceived: from client.example")
    assert found.email["X-Milter-Added"] == "yes"
    assert found.email["Subject"] == "changed by the milter"
    assert "X-Remove-Me" not in headers
    # Appended at the end of the header section, after the client's own fields.
    assert headers.rstrip("\n").endswith("X-Milter-Added: yes")


def test_body_sender_and_recipient_modifications_arrive(mx, sink):
    subject = unique("envelope")
    assert send(mx.port, message(subject, "replace-body, change-from, add-rcpt, delete-rcpt"),
                [RCPT, "deleted-rcpt@elsewhere.example"])[0] == 250
    found = arrived(sink, subject)
    assert found.body == b"The milter replaced this body.\n"
    assert found.sender == "changed-sender@example.test"
    assert sorted(found.recipients) == ["added-rcpt@elsewhere.example", RCPT]


def test_quarantine_holds_the_message_with_the_reason_logged(mx, sink):
    subject = unique("quarantine")
    assert send(mx.port, message(subject, "quarantine"))[0] == 250
    log = mx.wait_for_log("milter-hold: END-OF-MESSAGE from localhost[127.0.0.1]: quarantined by the test milter;")
    queue_id = log.split(": milter-hold: END-OF-MESSAGE")[0].rsplit(" ", 1)[-1]
    assert queue_id in mx.mailq()
    assert f"{queue_id}!" in mx.mailq()   # postqueue -p marks a held message with "!"
    assert never_arrived(sink, subject)


# --- what the milter saw


def test_the_macros_postfix_sends(mx, test_milter, sink):
    subject = unique("macros")
    assert send(mx.port, message(subject))[0] == 250
    record = seen_by_milter(test_milter, subject)
    macros = record["macros"]
    assert macros["connect"]["{daemon_name}"] == "mx.example.test"
    assert macros["connect"]["j"] == "mx.example.test"
    assert macros["connect"]["{daemon_addr}"] == "127.0.0.1"
    assert macros["connect"]["v"].startswith("mailferry ")
    assert macros["connect"]["_"] == "localhost [127.0.0.1]"
    assert record["connect"]["hostaddr"][0] == "127.0.0.1"
    assert macros["mail"]["{mail_addr}"] == SENDER
    assert macros["rcpt"]["{rcpt_addr}"] == RCPT
    queue_id = macros["eom"]["i"]
    assert macros["data"]["i"] == queue_id
    mx.wait_for_log(f"{queue_id}: client=localhost[127.0.0.1]")
    assert "{auth_authen}" not in macros["mail"] and "{tls_version}" not in macros["helo"]
    assert record["helo"] == "client.example"
    # Our own Received: header is not shown to milters, as in Postfix; the fields cleanup added
    # for a local client (Message-Id:, Date:) are.
    names = [name for name, _ in record["headers"]]
    assert "Received" not in names and names[-3:] == ["From", "To", "Subject"]
    assert sorted(names[:-3]) == ["Date", "Message-Id"]


def test_auth_and_tls_macros_of_an_authenticated_submission_over_starttls(mx, test_milter, tls_files):
    subject = unique("submission")
    ca_cert, _, _ = tls_files
    assert send(mx.port, message(subject), ["someone@remote.example"], sender="user1@example.com",
                source="127.0.0.2", login="user1", tls_ca=ca_cert)[0] == 250
    macros = seen_by_milter(test_milter, subject)["macros"]
    assert macros["mail"]["{auth_authen}"] == "user1"
    assert macros["mail"]["{auth_type}"] == "PLAIN"
    assert macros["helo"]["{tls_version}"].startswith("TLSv1.")
    assert macros["helo"]["{cipher}"] and int(macros["helo"]["{cipher_bits}"]) >= 128


# --- default actions and switches


@pytest.fixture(scope="module")
def edge(request, test_milter, unix_milter, sink):
    """One daemon, five smtpd services:
    main    a milter that is down, milter_default_action = tempfail; smtpd_milter_maps gives
            127.0.0.3 the test milter and 127.0.0.4 none
    accept  the same milter with { ..., default_action=accept } (per-milter setting)
    slow    the test milter with milter_content_timeout = 2s
    off     the test milter, with receive_override_options = no_milters
    unix    the test milter on a unix-domain socket"""
    dead = f"inet:127.0.0.1:{free_port()}"
    ports = {name: free_port() for name in ("accept", "slow", "off", "unix")}
    listeners = (f"127.0.0.1:{ports['accept']} inet n - n - - smtpd -o smtpd_milters=$accepting_milters\n"
                 f"127.0.0.1:{ports['unix']} inet n - n - - smtpd -o smtpd_milters={unix_milter.socket}\n"
                 f"127.0.0.1:{ports['slow']} inet n - n - - smtpd -o smtpd_milters={test_milter.socket}"
                 " -o milter_content_timeout=2s\n"
                 f"127.0.0.1:{ports['off']} inet n - n - - smtpd -o smtpd_milters={test_milter.socket}"
                 " -o receive_override_options=no_milters\n")
    daemon = start_daemon(request, listeners, relayhost=sink.nexthop, default_transport="smtp",
                          smtpd_milters=dead, milter_default_action="tempfail",
                          accepting_milters=f"{{ {dead}, default_action=accept }}", mynetworks="127.0.0.0/8",
                          smtpd_milter_maps=f"inline:{{ 127.0.0.3={test_milter.socket}, 127.0.0.4=DISABLE }}")
    daemon.ports = ports
    daemon.dead_milter = dead
    return daemon


def test_a_milter_that_is_down_with_tempfail_gives_4xx(edge):
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=60) as client:
        assert client.ehlo("client.example")[0] == 250   # Postfix answers HELO; the reply waits for MAIL
        assert client.mail(SENDER) == (451, b"4.7.1 Service unavailable - try again later")
    edge.wait_for_log(f"warning: connect to Milter service {edge.dead_milter}: Connection refused")
    edge.wait_for_log("NOQUEUE: milter-reject: MAIL from localhost[127.0.0.1]: 451 4.7.1 Service unavailable")


def test_a_milter_that_is_down_with_accept_delivers(edge, sink):
    subject = unique("down but accept")
    assert send(edge.ports["accept"], message(subject, "reject"))[0] == 250
    assert arrived(sink, subject).recipients == [RCPT]


def test_a_milter_that_times_out_gets_the_default_action(edge, sink):
    subject = unique("slow")
    assert send(edge.ports["slow"], message(subject, "sleep")) == (451, "4.7.1 Service unavailable - try again later")
    edge.wait_for_log(f"warning: milter {edge.dead_milter.rsplit(':', 1)[0]}")
    edge.wait_for_log("can't read SMFIC_BODYEOB reply packet header: Connection timed out")
    assert never_arrived(sink, subject)


def test_no_milters_in_receive_override_options_turns_them_off(edge, sink, test_milter):
    subject = unique("no milters")
    assert send(edge.ports["off"], message(subject, "reject"))[0] == 250
    assert arrived(sink, subject).email["X-Milter-Test"] == "reject"
    assert not any(any(value == subject for _, value in record["headers"]) for record in test_milter.records_seen())


def test_smtpd_milter_maps_chooses_the_milters_per_client(edge, sink, test_milter):
    subject = unique("milter maps")
    assert send(edge.port, message(subject, "reject"), source="127.0.0.3") == (
        550, "5.7.1 rejected by the test milter")
    seen_by_milter(test_milter, subject)
    subject = unique("milter maps disabled")
    assert send(edge.port, message(subject, "reject"), source="127.0.0.4")[0] == 250
    arrived(sink, subject)


def test_a_milter_on_a_unix_socket(edge, unix_milter, sink):
    subject = unique("unix socket")
    assert send(edge.ports["unix"], message(subject, "add-header"))[0] == 250
    found = arrived(sink, subject)
    assert found.email["X-Milter-Added"] == "yes"
    assert seen_by_milter(unix_milter, subject)["macros"]["connect"]["{daemon_name}"] == "mx.example.test"
