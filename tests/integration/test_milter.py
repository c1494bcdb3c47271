"""smtpd_milters through the real daemon, against a real milter: tests/peers/pymilter_peer.py,
written with Debian's python3-milter (pymilter on Sendmail's libmilter), run as its own process.

The milter's behaviour is chosen per message: the `X-Milter-Test:` header lists what it does at
end of message, recipients named reject-rcpt@, tempfail-rcpt@, discard-rcpt@ get that at RCPT.
Mail that gets through goes to Postfix's smtp-sink, which records it.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.integration.conftest import free_port
from tests.peers import peer_tempdir
from tests.peers.milter_peer import TestMilter

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

SENDER = "alice@example.test"
RCPT = "bob@elsewhere.example"


@pytest.fixture(scope="module")
def test_milter():
    directory = peer_tempdir("milter-")
    milter = TestMilter(directory).start()
    yield milter
    milter.stop()


@pytest.fixture
def milter_daemon(daemon_factory, smtp_sink, test_milter):
    """make(**main_cf) -> a started daemon relaying to the sink, with the test milter in smtpd_milters."""
    test_milter.clear()

    def make(**main_cf: str):
        settings = dict(relayhost=smtp_sink.nexthop, default_transport="smtp", smtpd_milters=test_milter.socket)
        settings.update(main_cf)
        return daemon_factory(**settings).start()
    return make


def message(subject: str, actions: str = "", extra: str = "") -> str:
    test = f"X-Milter-Test: {actions}\r\n" if actions else ""
    return (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n{test}{extra}\r\n"
            "Hello from the milter tests.\r\n")


def send(daemon, text: str, recipients: list[str] | None = None, sender: str = SENDER):
    """(code, text) of the end of DATA; raises only for a refusal before it."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.ehlo("client.example")
        client.mail(sender)
        for recipient in recipients or [RCPT]:
            code, reply = client.rcpt(recipient)
            assert code == 250, (code, reply)
        code, reply = client.data(text.encode())
        return code, reply.decode()


def test_a_reject_at_end_of_data_reaches_the_client_and_nothing_is_queued(milter_daemon, smtp_sink, test_milter):
    daemon = milter_daemon()
    code, reply = send(daemon, message("reject me", "reject"))
    assert (code, reply) == (550, "5.7.1 rejected by the test milter")
    line = daemon.wait_for_log("milter-reject: END-OF-MESSAGE")
    assert "5.7.1 rejected by the test milter; from=<alice@example.test> to=<bob@elsewhere.example> " \
           "proto=ESMTP helo=<client.example>" in line
    assert daemon.queue_summary()[0] == 0
    assert smtp_sink.messages() == []


def test_an_added_header_arrives(milter_daemon, smtp_sink):
    daemon = milter_daemon()
    code, _ = send(daemon, message("add a header", "add-header"))
    assert code == 250
    [arrived] = smtp_sink.wait_for_messages(1, timeout=30)
    assert arrived.email["X-Milter-Added"] == "yes"
    assert arrived.email["Subject"] == "add a header"
