"""Virtual aliases from the seed's directory, end to end: the real daemon, the
seed's ldap-aliases.cf (server_host pointed at the two slapd peers), mail to
each of John Smith's five addresses relayed rewritten to the mailbox host (a
sink), and an address the directory does not know refused at RCPT."""

from __future__ import annotations

import smtplib

import pytest

from tests.integration.test_delivery import wait_for_line
from tests.integration.test_rewriting import rcpt_reply
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


@pytest.fixture
def directory_daemon(daemon_factory, smtp_sink, seed_ldap_aliases):
    """The mailbox host is elsewhere: relayed to a sink (tests/integration/test_ldap_routing.py
    delivers here, into Dovecot, when the mailbox host is this host)."""
    return daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                          virtual_alias_domains="example.com", virtual_alias_maps=seed_ldap_aliases).start()


def test_each_seed_address_is_delivered_to_the_routing_address(directory_daemon, smtp_sink):
    with smtplib.SMTP("127.0.0.1", directory_daemon.port, timeout=30) as client:
        for number, address in enumerate(SEED_ADDRESSES):
            message = f"From: alice@example.test\r\nTo: {address}\r\nSubject: seed {number}\r\n\r\nHello.\r\n"
            assert client.sendmail("alice@example.test", [address], message) == {}
    sunk = smtp_sink.wait_for_messages(len(SEED_ADDRESSES), timeout=30)
    assert [message.recipients for message in sunk] == [[SEED_ROUTING_ADDRESS]] * len(SEED_ADDRESSES)
    assert sorted(message.email["To"] for message in sunk) == sorted(SEED_ADDRESSES)   # headers untouched


def test_an_address_the_directory_does_not_know_is_refused_at_rcpt(directory_daemon):
    assert rcpt_reply(directory_daemon, "nobody@example.com") == (
        550, "5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual alias table")
    wait_for_line(directory_daemon, r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 550 5\.1\.1 "
                                    r"<nobody@example\.com>")
