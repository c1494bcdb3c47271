"""The restriction engine through the real daemon: a representative set.

Each test starts mailferry with its own main.cf and talks SMTP to it with
smtplib, from 127.0.0.1 (in mynetworks) or 127.0.0.2 (an outside client).
DNS questions go to a dnsmasq the test runs (MAILFERRY_NAMESERVERS); the
policy server is tests/peers/policy_server.py, run by the test.
"""

from __future__ import annotations

import smtplib
import socket

import pytest

from mailferry.queue.sqlite import SqliteQueueStore
from tests.integration.conftest import world_readable_tempdir
from tests.peers.policy_server import PolicyServer

pytest_plugins = ["tests.peers.conftest_plugin"]

OUTSIDE = ("127.0.0.2", 0)
SEED_LOGIN_TABLE = """\
user1@example.com user1
user2@example.com user1
user3@example.com user3
@example.com user4
"""


def table(name: str, text: str) -> str:
    directory = world_readable_tempdir("mailferry-policy-")
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return f"texthash:{path}"


def rcpt_reply(port: int, sender: str, recipient: str, source=None, helo="client.example.test"):
    with smtplib.SMTP("127.0.0.1", port, source_address=source,
                      timeout=20) as client:
        client.ehlo(helo)
        assert client.mail(sender)[0] == 250
        return client.rcpt(recipient)


# --- smtpd_sender_login_maps: a client that did not log in (AUTH itself is the auth helper's)

@pytest.fixture
def login_daemon(daemon_factory):
    daemon = daemon_factory(mydomain="example.com", myorigin="$mydomain", mydestination="",
                            smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
                            smtpd_sasl_path="inet:127.0.0.1:9",   # never asked: nobody logs in here
                            smtpd_sender_login_maps=table("logins", SEED_LOGIN_TABLE),
                            smtpd_recipient_restrictions="reject_sender_login_mismatch, permit")
    return daemon.start()


@pytest.mark.parametrize("sender", ["user1@example.com", "user2@example.com", "USER3@Example.COM",
                                    "anyone@example.com", "user3%example.com@example.com"])
def test_a_client_that_did_not_log_in_may_not_use_an_owned_address(login_daemon, sender):
    code, text = rcpt_reply(login_daemon.port, sender, "someone@elsewhere.example")
    assert (code, text) == (553, f"5.7.1 <{sender}>: Sender address rejected: not logged in".encode())
    log = login_daemon.wait_for_log("Sender address rejected")
    assert (f"NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 553 5.7.1 <{sender}>: Sender address rejected: "
            f"not logged in; from=<{sender}> to=<someone@elsewhere.example> proto=ESMTP "
            "helo=<client.example.test>") in log


def test_an_address_nobody_owns_needs_no_login(login_daemon):
    assert rcpt_reply(login_daemon.port, "someone@elsewhere.example", "friend@elsewhere.example")[0] == 250


# --- access(5) actions through the daemon

ACCESS_TABLE = """\
reject@example.net REJECT not wanted here
hold@example.net HOLD kept for review
discard@example.net DISCARD
redirect@example.net REDIRECT archive@example.net
prepend@example.net PREPEND X-Policy-Tag: tagged by the access table
bcc@example.net BCC archive@example.net
"""


@pytest.fixture
def access_daemon(daemon_factory):
    # Mail stays queued (no smtp agent), so what the queue holds can be read.
    daemon = daemon_factory(default_transport="smtp", local_transport="smtp",
                            smtpd_recipient_restrictions=f"check_recipient_access {table('access', ACCESS_TABLE)}")
    return daemon.start()


def queued(daemon) -> list:
    store = SqliteQueueStore(daemon.queue_directory / "queue.db")
    try:
        return [(message, store.content(message.queue_id)) for message in store.messages()]
    finally:
        store.close()


def send(port: int, recipient: str, sender: str = "sender@example.test") -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.example.test")
        return client.sendmail(sender, [recipient], b"Subject: policy\r\n\r\nbody\r\n")


def test_access_map_reject_refuses_with_the_tables_text(access_daemon):
    code, text = rcpt_reply(access_daemon.port, "sender@example.test", "reject@example.net")
    assert (code, text) == (554, b"5.7.1 <reject@example.net>: Recipient address rejected: not wanted here")


def test_access_map_hold_puts_the_message_on_hold(access_daemon):
    send(access_daemon.port, "hold@example.net")
    log = access_daemon.wait_for_log(": hold: RCPT from")
    assert ("hold: RCPT from localhost[127.0.0.1]: <hold@example.net>: Recipient address kept for review; "
            "from=<sender@example.test> to=<hold@example.net> proto=ESMTP helo=<client.example.test>") in log
    [(message, _)] = queued(access_daemon)
    assert message.queue == "hold"
    assert "!" in access_daemon.mailq()   # postqueue marks held messages


def test_access_map_discard_accepts_and_drops(access_daemon):
    assert send(access_daemon.port, "discard@example.net") == {}
    log = access_daemon.wait_for_log(": discard: ")
    assert "<discard@example.net>: Recipient address triggers DISCARD action" in log
    assert queued(access_daemon) == []


def test_access_map_redirect_replaces_the_recipients(access_daemon):
    send(access_daemon.port, "redirect@example.net")
    access_daemon.wait_for_log("triggers REDIRECT archive@example.net")
    [(message, _)] = queued(access_daemon)
    assert [recipient.address for recipient in message.recipients] == ["archive@example.net"]


def test_access_map_prepend_adds_a_header_above_received(access_daemon):
    send(access_daemon.port, "prepend@example.net")
    access_daemon.wait_for_log("message-id=")
    [(_, content)] = queued(access_daemon)
    assert content.startswith(b"X-Policy-Tag: tagged by the access table\r\nReceived: from client.example.test")


def test_access_map_bcc_adds_a_recipient_that_gets_no_notices(access_daemon):
    send(access_daemon.port, "bcc@example.net")
    access_daemon.wait_for_log("message-id=")
    [(message, _)] = queued(access_daemon)
    assert [(r.address, r.notify) for r in message.recipients] == [("bcc@example.net", None),
                                                                     ("archive@example.net", "NEVER")]


def test_the_header_from_login_check_refuses_an_owned_from_without_login(daemon_factory):
    daemon = daemon_factory(mydomain="example.com", myorigin="$mydomain", mydestination="",
                            smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
                            smtpd_sasl_path="inet:127.0.0.1:9",   # never asked: nobody logs in here
                            smtpd_sender_login_header_check="yes",
                            smtpd_sender_login_maps=table("logins", SEED_LOGIN_TABLE)).start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=20) as client:
        client.ehlo("client.example.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("nobody@elsewhere.example", ["friend@elsewhere.example"],
                            b"From: User One <user1@example.com>\r\nSubject: spoof\r\n\r\nbody\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            553, b"5.7.1 <user1@example.com>: Header From: address rejected: not logged in")
        # A From: nobody owns passes.
        assert client.sendmail("nobody@elsewhere.example", ["friend@elsewhere.example"],
                               b"From: <nobody@elsewhere.example>\r\nSubject: fine\r\n\r\nbody\r\n") == {}
    log = daemon.wait_for_log("END-OF-MESSAGE")
    assert ": reject: END-OF-MESSAGE from localhost[127.0.0.1]: 553 5.7.1 <user1@example.com>: Header From:" in log


# --- DNS: the client name, and DNS lists, from a dnsmasq the test runs

@pytest.fixture
def dns_daemon(daemon_factory, dns_server_factory):
    dns = dns_server_factory(
        zones=("test", "in-addr.arpa"),
        a={"good.example.test": "127.0.0.2", "forged.example.test": "127.0.0.9",
           "3.0.0.127.zen.dnsbl.test": "127.0.0.2"},
        ptr={"127.0.0.2": "good.example.test", "127.0.0.4": "forged.example.test"},
        txt={"3.0.0.127.zen.dnsbl.test": "listed in the test list"})
    daemon = daemon_factory(nameservers=dns.nameserver, mynetworks="127.0.0.0/8", unknown_client_reject_code="550",
                            smtpd_client_restrictions="reject_rbl_client zen.dnsbl.test, "
                                                      "reject_unknown_client_hostname")
    return daemon.start()


def test_a_client_whose_name_resolves_back_is_named_and_accepted(dns_daemon):
    assert rcpt_reply(dns_daemon.port, "a@example.test", "b@example.test", source=("127.0.0.2", 0))[0] == 250
    assert "connect from good.example.test[127.0.0.2]" in dns_daemon.wait_for_log("connect from good")


def test_a_client_without_a_reverse_name_is_refused_by_reject_unknown_client_hostname(dns_daemon):
    code, text = rcpt_reply(dns_daemon.port, "a@example.test", "b@example.test", source=("127.0.0.5", 0))
    assert (code, text) == (550, b"5.7.25 Client host rejected: cannot find your hostname, [127.0.0.5]")


def test_a_forged_reverse_name_is_unknown(dns_daemon):
    code, text = rcpt_reply(dns_daemon.port, "a@example.test", "b@example.test", source=("127.0.0.4", 0))
    assert (code, text) == (550, b"5.7.25 Client host rejected: cannot find your hostname, [127.0.0.4]")
    log = dns_daemon.wait_for_log("connect from unknown[127.0.0.4]")
    assert "warning: hostname forged.example.test does not resolve to address 127.0.0.4" in log


def test_a_client_on_a_dns_list_is_refused_with_the_lists_reason(dns_daemon):
    code, text = rcpt_reply(dns_daemon.port, "a@example.test", "b@example.test", source=("127.0.0.3", 0))
    assert (code, text) == (554, b"5.7.1 Service unavailable; Client host [127.0.0.3] blocked using zen.dnsbl.test; "
                                 b"listed in the test list")


# --- check_policy_service against a policy server the test runs

@pytest.fixture
def policy_server():
    def decide(request: dict[str, str]) -> str:
        if request.get("sender") == "spammer@example.test":
            return "REJECT policy says no"
        if request.get("recipient") == "greylist@example.net":
            return "DEFER_IF_PERMIT 4.7.1 greylisted, come back later"
        return "DUNNO"
    server = PolicyServer(decide).start()
    yield server
    server.stop()


def test_check_policy_service_decides_through_the_daemon(daemon_factory, policy_server):
    daemon = daemon_factory(smtpd_recipient_restrictions=f"check_policy_service {policy_server.endpoint}, permit",
                            smtpd_policy_service_policy_context="integration").start()
    code, text = rcpt_reply(daemon.port, "spammer@example.test", "b@example.net")
    assert (code, text) == (554, b"5.7.1 <b@example.net>: Recipient address rejected: policy says no")
    code, text = rcpt_reply(daemon.port, "friend@example.test", "greylist@example.net")
    assert (code, text) == (450, b"4.7.1 <greylist@example.net>: Recipient address rejected: greylisted, "
                                 b"come back later")
    assert rcpt_reply(daemon.port, "friend@example.test", "b@example.net")[0] == 250
    first = policy_server.requests[0]
    assert first["request"] == "smtpd_access_policy" and first["protocol_state"] == "RCPT"
    assert first["client_address"] == "127.0.0.1" and first["client_name"] == "localhost"
    assert first["helo_name"] == "client.example.test" and first["sender"] == "spammer@example.test"
    assert first["recipient"] == "b@example.net" and first["policy_context"] == "integration"


# --- smtpd_delay_reject = no: a client refused at connect

def test_a_client_refused_at_connect_gets_the_refusal_then_503(daemon_factory):
    daemon = daemon_factory(smtpd_delay_reject="no",
                            smtpd_client_restrictions="check_client_access inline:{ { 127.0.0.2 = REJECT go away } }"
                            ).start()
    with socket.create_connection(("127.0.0.1", daemon.port), source_address=OUTSIDE, timeout=20) as raw:
        reader = raw.makefile("rb")
        assert reader.readline() == b"554 5.7.1 <unknown[127.0.0.2]>: Client host rejected: go away\r\n"
        raw.sendall(b"EHLO client.example.test\r\n")
        assert reader.readline() == b"503 5.7.0 Error: access denied for unknown[127.0.0.2]\r\n"
        raw.sendall(b"MAIL FROM:<a@example.test>\r\n")
        assert reader.readline() == b"503 5.7.0 Error: access denied for unknown[127.0.0.2]\r\n"
        raw.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221 ")
    log = daemon.wait_for_log("disconnect from unknown[127.0.0.2]")
    assert ("NOQUEUE: reject: CONNECT from unknown[127.0.0.2]: 554 5.7.1 <unknown[127.0.0.2]>: Client host "
            "rejected: go away; proto=SMTP") in log
    # A trusted client is greeted as usual.
    assert rcpt_reply(daemon.port, "a@example.test", "b@example.test")[0] == 250
