"""The one place where a failure becomes deferred or bounced, with Postfix's texts."""

import pytest

from mailferry.delivery import outcome
from mailferry.message import BOUNCED, DEFERRED, SENT
from mailferry.protocol.smtp_client import ServerReply


def reply(code, *lines):
    return ServerReply(code, tuple(lines))


def test_a_positive_reply_is_sent_with_the_servers_words():
    result = outcome.from_reply(reply(250, "2.0.0 Ok: queued as 4ABC"), "mx[192.0.2.1]:25", "mx",
                                "192.0.2.1", "end of DATA")
    assert (result.status, result.dsn, result.reason, result.relay) == (
        SENT, "2.0.0", "250 2.0.0 Ok: queued as 4ABC", "mx[192.0.2.1]:25")


@pytest.mark.parametrize("code, text, status, dsn", [
    (550, "5.1.1 <a@b>: Recipient address rejected", BOUNCED, "5.1.1"),
    (554, "no enhanced code here", BOUNCED, "5.0.0"),
    (451, "4.3.0 try later", DEFERRED, "4.3.0"),
    (421, "service shutting down", DEFERRED, "4.0.0"),
])
def test_failures_by_reply_class(code, text, status, dsn):
    result = outcome.from_reply(reply(code, text), "mx[192.0.2.1]:25", "mx", "192.0.2.1", "RCPT TO")
    assert (result.status, result.dsn) == (status, dsn)
    assert result.reason == f"host mx[192.0.2.1] said: {reply(code, text)} (in reply to RCPT TO command)"


def test_a_status_code_of_the_wrong_class_keeps_only_its_detail():
    assert outcome.deferred("5.7.1", "x").dsn == "4.7.1"
    assert outcome.bounced("4.4.1", "x").dsn == "5.4.1"
    assert outcome.deferred("nonsense", "x").dsn == "4.0.0"


@pytest.mark.parametrize("nexthop, status, dsn, reason", [
    ("5.1.1 no such user", BOUNCED, "5.1.1", "no such user"),
    ("4.2.2 mailbox full", DEFERRED, "4.2.2", "mailbox full"),
    ("outbound mail is disabled", BOUNCED, "5.0.0", "outbound mail is disabled"),
    ("", BOUNCED, "5.0.0", "mail delivery disabled"),
])
def test_the_error_transport(nexthop, status, dsn, reason):
    result = outcome.error_transport(nexthop)
    assert (result.status, result.dsn, result.reason) == (status, dsn, reason)


def test_the_retry_transport_always_defers():
    assert outcome.retry_transport("5.0.0 nope").status == DEFERRED
    assert outcome.retry_transport("").reason == "delivery temporarily suspended"


class FakeDnsError:
    def __init__(self, temporary):
        self.temporary, self.dsn, self.text = temporary, "4.4.3" if temporary else "5.4.4", "lookup"


def test_dns_errors_defer_or_bounce_as_they_say():
    assert outcome.from_dns_error(FakeDnsError(True)).status == DEFERRED
    assert outcome.from_dns_error(FakeDnsError(False)).status == BOUNCED


# --- the SMTP client's session decisions

PEER, RELAY = "mx[192.0.2.1]", "mx[192.0.2.1]:25"


@pytest.mark.parametrize("code, text, skip_5xx, status, dsn", [
    (554, "5.7.1 go away", True, DEFERRED, "4.7.1"),
    (554, "5.7.1 go away", False, BOUNCED, "5.7.1"),
    (554, "go away", False, BOUNCED, "5.0.0"),
    (421, "busy", False, DEFERRED, "4.3.0"),
])
def test_a_refused_greeting_bounces_only_without_skip_5xx_greeting(code, text, skip_5xx, status, dsn):
    result = outcome.greeting_refused(reply(code, text), PEER, RELAY, skip_5xx)
    assert (result.status, result.dsn, result.relay) == (status, dsn, RELAY)
    assert result.reason == f"host {PEER} refused to talk to me: {reply(code, text)}"


def test_a_refused_hello_always_defers():
    result = outcome.hello_refused(reply(554, "5.5.1 no"), PEER, "LHLO", RELAY)
    assert (result.status, result.dsn) == (DEFERRED, "4.5.1")
    assert result.reason == f"host {PEER} refused to talk to me: 554 5.5.1 no (in reply to LHLO command)"
    assert outcome.hello_refused(reply(421, "later"), PEER, "EHLO", RELAY).dsn == "4.3.0"


@pytest.mark.parametrize("code, soft_bounce, status, dsn", [
    (535, True, DEFERRED, "4.7.8"),
    (535, False, BOUNCED, "5.7.8"),
    (454, False, DEFERRED, "4.7.0"),
])
def test_a_failed_login_bounces_only_without_soft_bounce(code, soft_bounce, status, dsn):
    text = "5.7.8 bad credentials" if code == 535 else "4.7.0 try later"
    result = outcome.sasl_refused(reply(code, text), PEER, RELAY, soft_bounce)
    assert (result.status, result.dsn) == (status, dsn)
    assert result.reason == f"SASL authentication failed; server {PEER} said: {reply(code, text)}"


def test_what_the_server_cannot_take_bounces():
    too_big = outcome.too_big_for_server(2000, 1000, PEER, RELAY)
    assert (too_big.status, too_big.dsn, too_big.reason) == (
        BOUNCED, "5.3.4", f"message size 2000 exceeds size limit 1000 of server {PEER}")
    utf8 = outcome.smtputf8_not_offered(PEER, RELAY)
    assert (utf8.status, utf8.dsn, utf8.reason) == (
        BOUNCED, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {PEER}")


def test_connection_trouble_defers():
    refused = outcome.connect_failed("mx", "192.0.2.1", 25, "Connection refused")
    assert (refused.status, refused.dsn, refused.reason) == (
        DEFERRED, "4.4.1", "connect to mx[192.0.2.1]:25: Connection refused")
    assert outcome.connect_failed("localhost", "/run/lmtp", None, "No such file or directory").reason == \
        "connect to localhost[/run/lmtp]: No such file or directory"
    lost = outcome.session_lost("lost connection with mx[192.0.2.1] while sending RCPT TO", RELAY)
    assert (lost.status, lost.dsn, lost.relay) == (DEFERRED, "4.4.2", RELAY)
    suspended = outcome.destination_suspended(refused.reason)
    assert (suspended.status, suspended.dsn, suspended.reason) == (
        DEFERRED, "4.4.1", "delivery temporarily suspended: connect to mx[192.0.2.1]:25: Connection refused")
