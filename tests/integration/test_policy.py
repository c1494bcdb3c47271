"""The restriction engine through the real daemon: a representative set.

Each test starts mailferry with its own main.cf and talks SMTP to it with
smtplib, from 127.0.0.1 (in mynetworks) or 127.0.0.2 (an outside client).
DNS questions go to a dnsmasq the test runs (MAILFERRY_NAMESERVERS); the
policy server is tests/peers/policy_server.py, run by the test.
"""

from __future__ import annotations

import smtplib
import sqlite3

import pytest

from tests.integration.conftest import world_readable_tempdir

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
    with smtplib.SMTP("127.0.0.1" if source is None else source[0], port, source_address=source,
                      timeout=20) as client:
        client.ehlo(helo)
        assert client.mail(sender)[0] == 250
        return client.rcpt(recipient)


# --- smtpd_sender_login_maps: a client that did not log in (AUTH itself is the auth helper's)

@pytest.fixture
def login_daemon(daemon_factory):
    daemon = daemon_factory(mydomain="example.com", myorigin="$mydomain", mydestination="",
                            smtpd_sasl_auth_enable="yes",
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
