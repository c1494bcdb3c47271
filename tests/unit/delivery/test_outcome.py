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
