"""Directory routing end to end (issue 9, "Done when" 1 and 2): the real daemon, the seed's
ldap-aliases.cf as written (server_host pointed at the two slapd peers), SMTP clients.

1. On the mailbox host (myhostname = mail1.internal, in mydestination), each of John Smith's
   five addresses lands in his real Dovecot mailbox over LMTP (mailbox_transport). The routing
   address itself has no alias entry (not as john.smith@mail1.internal, not as the bare
   john.smith our domains allow, not as @mail1.internal): it stays, and is delivered once, with no
   loop. (On another host the mail is relayed to the mailbox host: test_rewriting_ldap.py.)
   An address of the alias domain that the directory does not know, arriving without the RCPT
   check (sendmail), bounces as Postfix's trivial-rewrite bounces it.
2. Outages, seen from the SMTP client: the first slapd stopped costs nothing; both stopped give
   `451 4.3.0` at RCPT (or after DATA, when they stop between RCPT and the end of DATA) and
   nothing accepted is lost or delivered unrewritten; mail flows again once they return; the
   first one frozen (SIGSTOP: connections accepted, never answered) delays a RCPT by the client's
   first-answer bound (2 s), well within the issue's 5 s, where Postfix waits `timeout = 20`.

The ldap table caches answers for 5 s (tables/ldap/__init__.py): each outage step uses keys that
no earlier step of its daemon looked up, so that a cached answer cannot stand in for the directory.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_delivery import wait_for_line
from tests.peers.dovecot import LmtpServer
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS, STAR_ADDRESS

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

SENDER = "alice@example.test"


def message_to(address: str, subject: str) -> str:
    return f"From: {SENDER}\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nHello.\r\n"


# --- 1. the mailbox host: local delivery into Dovecot over LMTP --------------------------------


@pytest.fixture
def mailbox_host(daemon_factory, _peers, seed_ldap_aliases):
    """(daemon, dovecot): mail1.internal, John Smith's mailbox host, delivering to Dovecot LMTP."""
    dovecot = _peers.start(LmtpServer(_peers.directory("mailferry-lmtp-"), users=(SEED_ROUTING_ADDRESS,)))
    daemon = daemon_factory(myhostname="mail1.internal", mydestination="$myhostname, localhost",
                            local_transport="local:$myhostname",
                            mailbox_transport=f"lmtp:inet:{dovecot.nexthop}",
                            virtual_alias_domains="example.com", virtual_alias_maps=seed_ldap_aliases).start()
    return daemon, dovecot


def test_each_seed_address_lands_in_the_mailbox_on_the_mailbox_host(mailbox_host):
    daemon, dovecot = mailbox_host
    addresses = (*SEED_ADDRESSES, SEED_ROUTING_ADDRESS)
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        for number, address in enumerate(addresses):
            assert client.sendmail(SENDER, [address], message_to(address, f"seed {number}")) == {}
    delivered = dovecot.wait_for_messages(SEED_ROUTING_ADDRESS, len(addresses), timeout=30)
    assert len(delivered) == len(addresses)                       # each once: no loop, no duplicate
    assert [message.delivered_to for message in delivered] == [SEED_ROUTING_ADDRESS] * len(addresses)
    assert sorted(message.email["To"] for message in delivered) == sorted(addresses)   # headers untouched
    log = daemon.wait_for_log("status=sent", count=len(addresses))
    for address in SEED_ADDRESSES:
        assert re.search(rf"lmtp\[\d+\]: [0-9A-F]+: to=<{re.escape(SEED_ROUTING_ADDRESS)}>, "
                         rf"orig_to=<{re.escape(address)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*"
                         r"status=sent", log), address
    assert re.search(rf"to=<{re.escape(SEED_ROUTING_ADDRESS)}>, relay=127\.0\.0\.1", log)  # itself: no orig_to
    assert "loop" not in log.lower()


def test_an_unknown_address_of_the_alias_domain_from_sendmail_bounces(mailbox_host):
    """No RCPT check on this path: trivial-rewrite's rule bounces it (error:User unknown in
    virtual alias table), and the notice reaches the sender's own mailbox here."""
    daemon, dovecot = mailbox_host
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"
    result = subprocess.run([str(sendmail), "-C", str(daemon.config_dir), "-f", SEED_ROUTING_ADDRESS,
                             "nobody@example.com"],
                            input=b"Subject: to nobody\n\nanyone there?\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    wait_for_line(daemon, r"error\[\d+\]: [0-9A-F]+: to=<nobody@example\.com>, relay=none, .*dsn=5\.0\.0, "
                          r"status=bounced \(User unknown in virtual alias table\)")
    [notice] = dovecot.wait_for_messages(SEED_ROUTING_ADDRESS, 1, timeout=30)
    assert b"User unknown in virtual alias table" in notice.raw
    assert b"nobody@example.com" in notice.raw


# --- 2. outages --------------------------------------------------------------------------------


@pytest.fixture
def relaying_host(daemon_factory, smtp_sink, seed_ldap_aliases):
    """A host that is not the mailbox host: rewritten mail is relayed to the sink."""
    return daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                          virtual_alias_domains="example.com", virtual_alias_maps=seed_ldap_aliases).start()


def session(daemon) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=60)
    client.ehlo("client.test")
    return client


def send_whole(daemon, address: str, subject: str) -> None:
    """MAIL, RCPT and DATA each get their 2xx: no 4xx at any step."""
    with session(daemon) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(address)[0] == 250
        assert client.data(message_to(address, subject).encode())[0] == 250


def test_with_the_first_slapd_stopped_no_client_sees_a_4xx(relaying_host, smtp_sink, slapd_pair_restored):
    first, _ = slapd_pair_restored
    first.stop()
    send_whole(relaying_host, SEED_ADDRESSES[0], "first down")
    [sunk] = smtp_sink.wait_for_messages(1, timeout=30)
    assert sunk.recipients == [SEED_ROUTING_ADDRESS]
    assert sunk.email["To"] == SEED_ADDRESSES[0]
    wait_for_line(relaying_host, rf"server {re.escape(first.url)} failed: .*out of rotation")


def test_both_slapd_stopped_defer_and_nothing_accepted_is_lost_or_unrewritten(relaying_host, smtp_sink,
                                                                             slapd_pair_restored):
    first, second = slapd_pair_restored
    # Accepted before the outage: rewritten before it was queued.
    send_whole(relaying_host, SEED_ADDRESSES[0], "before")
    # RCPT answered while the directory was up; it goes down before the end of DATA. The alias
    # itself was looked up at RCPT (cached), but cleanup must also look up its result,
    # star.user@mail2.internal: that lookup fails, so the message is refused after DATA.
    with session(relaying_host) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(STAR_ADDRESS)[0] == 250
        first.stop()
        second.stop()
        reply = client.data(message_to(STAR_ADDRESS, "during").encode())
    assert reply == (451, b"4.3.0 Error: queue file write error")    # Postfix's words for it
    wait_for_line(relaying_host, r"cleanup\[\d+\]: warning: [0-9A-F]+: virtual_alias_maps map lookup problem "
                                 r"for .* -- message not accepted, try again later")
    # A new RCPT during the outage: a temporary failure, never "unknown".
    with session(relaying_host) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SEED_ADDRESSES[1]) == (
            451, f"4.3.0 <{SEED_ADDRESSES[1]}>: Temporary lookup failure".encode())
    # They return: a new RCPT gets its 250 again, without waiting out the 30 s a failed server
    # spends out of rotation (when every server is out, all are tried anyway).
    first.start()
    second.start()
    with session(relaying_host) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SEED_ADDRESSES[2])[0] == 250
        assert client.data(message_to(SEED_ADDRESSES[2], "after").encode())[0] == 250
    sunk = smtp_sink.wait_for_messages(2, timeout=30)
    assert [(message.recipients, message.email["Subject"]) for message in sunk] == [
        ([SEED_ROUTING_ADDRESS], "before"), ([SEED_ROUTING_ADDRESS], "after")]
    assert relaying_host.queue_summary()[0] == 0       # the refused one was never queued


def test_with_the_first_slapd_frozen_the_second_answers_within_5_seconds(relaying_host, smtp_sink,
                                                                         slapd_pair_restored):
    first, _ = slapd_pair_restored
    first.freeze()
    with session(relaying_host) as client:
        assert client.mail(SENDER)[0] == 250
        started = time.monotonic()
        code, _ = client.rcpt(SEED_ADDRESSES[3])     # the socket would wait 60 s
        elapsed = time.monotonic() - started
        assert code == 250
        assert elapsed < 5.0, f"RCPT answered after {elapsed:.1f} s"   # the bound
        assert client.data(message_to(SEED_ADDRESSES[3], "frozen").encode())[0] == 250
    [sunk] = smtp_sink.wait_for_messages(1, timeout=30)
    assert sunk.recipients == [SEED_ROUTING_ADDRESS]
    wait_for_line(relaying_host, rf"server {re.escape(first.url)} failed: no answer within 2 s")
