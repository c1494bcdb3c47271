"""Delivery status notifications, read back with Python's email package the way
a receiving mail client or bounce processor would read them."""

from __future__ import annotations

import email
import email.policy
import re
from email.utils import parsedate_to_datetime

import pytest

from mailferry.message import ClientInfo, QueuedMessage, Recipient
from mailferry.qmgr.bounce import (
    BounceSettings, delay_notice, failure_notice, notices_for, postmaster_copy, wants_delay_notice,
    wants_failure_notice,
)

ARRIVAL = 1_764_000_000.0         # 2025-11-24 16:00:00 UTC
NOW = ARRIVAL + 6 * 3600 + 120    # six hours and two minutes later
SETTINGS = BounceSettings(myhostname="mx.example.net")
HEADERS = b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: lunch\r\n"
BODY = b"See you at noon.\r\n"
CONTENT = HEADERS + b"\r\n" + BODY
REMOTE_REASON = ("host mx.example.com[192.0.2.7] said: 550 5.1.1 <bob@example.com>: "
                 "Recipient address rejected: User unknown (in reply to RCPT TO command)")
LOCAL_REASON = "mail for example.com loops back to myself"


def queued(sender: str = "alice@example.org", **fields) -> QueuedMessage:
    message = QueuedMessage(queue_id="4F2A1B3C5D6E", queue="active", sender=sender, recipients=[],
                            size=len(CONTENT), arrival_time=ARRIVAL, message_id="<lunch@example.org>")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def bob(**fields) -> Recipient:
    return Recipient("bob@example.com", orcpt="rfc822;bob@example.com", dsn="5.1.1",
                     reason=REMOTE_REASON, **fields)


def carol(**fields) -> Recipient:
    return Recipient("carol@example.com", reason=LOCAL_REASON, **fields)


def parse(content: bytes):
    return email.message_from_bytes(content, policy=email.policy.default)


def report_blocks(notice):
    """The delivery-status part as [per-message fields, per-recipient fields...]."""
    return [dict(block.items()) for block in parse(notice.content).get_payload()[1].get_payload()]


def timestamp(date_field: str) -> float:
    return parsedate_to_datetime(date_field).timestamp()


# --- who wants which notice -------------------------------------------------

@pytest.mark.parametrize("notify, failure, delay", [
    (None, True, True),
    ("", True, True),
    ("FAILURE", True, False),
    ("DELAY", False, True),
    ("SUCCESS,FAILURE", True, False),
    ("success,delay", False, True),
    ("FAILURE,DELAY", True, True),
    ("SUCCESS", False, False),
    ("NEVER", False, False),
])
def test_notify_decides_who_wants_a_notice(notify, failure, delay):
    recipient = Recipient("bob@example.com", notify=notify)
    assert wants_failure_notice(recipient) is failure
    assert wants_delay_notice(recipient) is delay


# --- the failure notice -----------------------------------------------------

def test_a_failure_notice_is_a_three_part_delivery_status_report():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    top = parse(notice.content)
    assert top.get_content_type() == "multipart/report"
    assert top.get_param("report-type") == "delivery-status"
    parts = top.get_payload()
    assert [part.get_content_type() for part in parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    assert [part["Content-Description"] for part in parts] == [
        "Notification", "Delivery report", "Undelivered Message"]


def test_a_failure_notice_goes_from_the_null_sender_to_the_sender():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    assert notice.sender == ""
    assert [recipient.address for recipient in notice.recipients] == ["alice@example.org"]
    assert notice.origin == "bounce"
    assert notice.arrival_time == NOW
    assert notice.client == ClientInfo(name="localhost", address="127.0.0.1", protocol="local")


def test_failure_notice_headers():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    top = parse(notice.content)
    assert b"\r\nFrom: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n" in notice.content
    assert top["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.net"
    assert top["Subject"] == "Undelivered Mail Returned to Sender"
    assert top["To"] == "alice@example.org"
    assert top["Auto-Submitted"] == "auto-replied"
    assert top["MIME-Version"] == "1.0"
    assert top["Content-Transfer-Encoding"] == "7bit"
    assert timestamp(top["Date"]) == int(NOW)
    assert top["Message-Id"] == f"<{notice.message_id}>"


def test_the_message_id_names_the_queue_id_the_time_and_the_host():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    assert notice.message_id == "20251124220200.4F2A1B3C5D6E@mx.example.net"


def test_notices_of_the_same_message_get_distinct_ids_and_boundaries():
    message = queued()
    notices = [failure_notice(message, CONTENT, [bob()], SETTINGS, NOW),
               failure_notice(message, CONTENT, [bob()], SETTINGS, NOW + 1),
               delay_notice(message, CONTENT, [carol()], SETTINGS, NOW)]
    assert len({notice.message_id for notice in notices}) == 3
    boundaries = {parse(notice.content).get_boundary() for notice in notices[:2]}
    assert len(boundaries) == 2
    assert all("4F2A1B3C5D6E" in boundary for boundary in boundaries)


def test_the_notification_text_is_postfix_failure_template():
    notice = failure_notice(queued(), CONTENT, [bob(), carol()], SETTINGS, NOW)
    text = parse(notice.content).get_payload()[0].get_content().replace("\r\n", "\n")
    unfolded = text.replace("\n ", " ")
    assert text.startswith("This is the mail system at host mx.example.net.\n")
    for sentence in ["I'm sorry to have to inform you that your message could not\n"
                     "be delivered to one or more recipients. It's attached below.",
                     "For further assistance, please send mail to postmaster.",
                     "If you do so, please include this problem report. You can\n"
                     "delete your own text from the attached returned message.",
                     "                   The mail system\n\n<bob@example.com>: "]:
        assert sentence in text
    assert f"<bob@example.com>: {REMOTE_REASON}\n" in unfolded
    assert f"<carol@example.com>: {LOCAL_REASON}\n" in unfolded


def test_the_per_message_report_fields():
    notice = failure_notice(queued(dsn_envid="QQ314159"), CONTENT, [bob()], SETTINGS, NOW)
    per_message = report_blocks(notice)[0]
    assert list(per_message)[0] == "Original-Envelope-Id"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Reporting-MTA"] == "dns; mx.example.net"
    assert per_message["X-Postfix-Queue-ID"] == "4F2A1B3C5D6E"
    assert per_message["X-Postfix-Sender"] == "rfc822; alice@example.org"
    assert timestamp(per_message["Arrival-Date"]) == ARRIVAL


def test_no_envelope_id_no_original_envelope_id_field():
    per_message = report_blocks(failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW))[0]
    assert "Original-Envelope-Id" not in per_message
    assert list(per_message)[0] == "Reporting-MTA"


def test_a_remote_rejection_is_reported_with_its_remote_mta_and_smtp_reply():
    blocks = report_blocks(failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW))
    assert blocks[1] == {
        "Final-Recipient": "rfc822; bob@example.com",
        "Original-Recipient": "rfc822; bob@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.com",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
    }


def test_a_local_failure_is_an_x_postfix_diagnostic_with_a_default_status():
    blocks = report_blocks(failure_notice(queued(), CONTENT, [carol()], SETTINGS, NOW))
    assert blocks[1] == {
        "Final-Recipient": "rfc822; carol@example.com",
        "Action": "failed",
        "Status": "5.0.0",
        "Diagnostic-Code": f"X-Postfix; {LOCAL_REASON}",
    }


def test_each_recipient_has_its_own_block_in_order():
    blocks = report_blocks(failure_notice(queued(), CONTENT, [bob(), carol()], SETTINGS, NOW))
    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822; bob@example.com", "rfc822; carol@example.com"]


def test_the_reply_ends_at_the_last_in_reply_to():
    reason = ("host mx.example.com[192.0.2.7] said: 554 rejected (in reply to MAIL FROM command) "
              "(in reply to end of DATA command)")
    blocks = report_blocks(failure_notice(queued(), CONTENT, [Recipient("bob@example.com", reason=reason)],
                                          SETTINGS, NOW))
    assert blocks[1]["Diagnostic-Code"] == "smtp; 554 rejected (in reply to MAIL FROM command)"
    assert blocks[1]["Remote-MTA"] == "dns; mx.example.com"


def test_a_connection_failure_has_no_remote_mta():
    reason = "connect to mx.example.com[192.0.2.7]:25: Connection refused"
    blocks = report_blocks(failure_notice(queued(), CONTENT, [Recipient("bob@example.com", reason=reason)],
                                          SETTINGS, NOW))
    assert "Remote-MTA" not in blocks[1]
    assert blocks[1]["Diagnostic-Code"] == f"X-Postfix; {reason}"


def test_an_original_recipient_without_a_type_is_rfc822():
    recipient = Recipient("bob@example.com", orcpt="Bob@Example.COM", reason=LOCAL_REASON)
    blocks = report_blocks(failure_notice(queued(), CONTENT, [recipient], SETTINGS, NOW))
    assert blocks[1]["Original-Recipient"] == "rfc822; Bob@Example.COM"


# --- what is returned ---------------------------------------------------------

def test_the_whole_message_is_returned_byte_for_byte():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    returned = parse(notice.content).get_payload()[2]
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "lunch"
    assert inner.get_content() == BODY.decode()
    boundary = parse(notice.content).get_boundary().encode()
    assert b"\r\n\r\n" + CONTENT + b"\r\n--" + boundary + b"--\r\n" in notice.content


def test_ret_hdrs_returns_only_the_headers():
    notice = failure_notice(queued(dsn_ret="HDRS"), CONTENT, [bob()], SETTINGS, NOW)
    returned = parse(notice.content).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Description"] == "Undelivered Message Headers"
    assert returned.get_payload(decode=True) == HEADERS
    assert BODY not in notice.content


def test_ret_full_returns_the_whole_message():
    notice = failure_notice(queued(dsn_ret="FULL"), CONTENT, [bob()], SETTINGS, NOW)
    assert parse(notice.content).get_payload()[2].get_content_type() == "message/rfc822"


def test_a_message_over_bounce_size_limit_is_returned_as_headers_only():
    settings = BounceSettings(myhostname="mx.example.net", bounce_size_limit=len(CONTENT) - 1)
    notice = failure_notice(queued(), CONTENT, [bob()], settings, NOW)
    returned = parse(notice.content).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == HEADERS


def test_a_message_at_bounce_size_limit_is_returned_whole():
    settings = BounceSettings(myhostname="mx.example.net", bounce_size_limit=len(CONTENT))
    notice = failure_notice(queued(), CONTENT, [bob()], settings, NOW)
    assert parse(notice.content).get_payload()[2].get_content_type() == "message/rfc822"


def test_headers_longer_than_the_limit_are_cut_at_a_line_end():
    settings = BounceSettings(myhostname="mx.example.net", bounce_size_limit=60)
    notice = failure_notice(queued(), CONTENT, [bob()], settings, NOW)
    returned = parse(notice.content).get_payload()[2].get_payload(decode=True)
    assert returned == b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\n"


def test_eight_bit_content_is_declared_8bit():
    content = HEADERS + b"\r\nCaf\xc3\xa9 at noon.\r\n"
    notice = failure_notice(queued(), content, [bob()], SETTINGS, NOW)
    top = parse(notice.content)
    assert top["Content-Transfer-Encoding"] == "8bit"
    assert top.get_payload()[2]["Content-Transfer-Encoding"] == "8bit"
    assert notice.body_type == "8BITMIME"
    assert content in notice.content


def test_seven_bit_content_declares_no_8bit():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    assert b"8bit" not in notice.content
    assert notice.body_type is None


def test_eight_bit_in_the_body_alone_does_not_make_returned_headers_8bit():
    content = HEADERS + b"\r\nCaf\xc3\xa9\r\n"
    notice = failure_notice(queued(dsn_ret="HDRS"), content, [bob()], SETTINGS, NOW)
    assert parse(notice.content)["Content-Transfer-Encoding"] == "7bit"
    assert notice.content.isascii()


# --- who is reported, and when nothing is sent ---------------------------------

def test_a_bounce_is_never_bounced():
    assert failure_notice(queued(sender=""), CONTENT, [bob()], SETTINGS, NOW) is None
    assert delay_notice(queued(sender=""), CONTENT, [bob()], SETTINGS, NOW) is None


@pytest.mark.parametrize("notify", ["NEVER", "SUCCESS", "DELAY", "SUCCESS,DELAY"])
def test_no_failure_notice_for_recipients_that_did_not_ask_for_one(notify):
    assert failure_notice(queued(), CONTENT, [bob(notify=notify)], SETTINGS, NOW) is None


def test_no_failure_notice_for_no_recipients():
    assert failure_notice(queued(), CONTENT, [], SETTINGS, NOW) is None


def test_only_the_recipients_that_want_a_notice_are_reported():
    failed = [bob(notify="NEVER"), carol(notify="SUCCESS,FAILURE"),
              Recipient("dave@example.com", reason=LOCAL_REASON)]
    notice = failure_notice(queued(), CONTENT, failed, SETTINGS, NOW)
    blocks = report_blocks(notice)
    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822; carol@example.com", "rfc822; dave@example.com"]
    assert b"bob@example.com>:" not in notice.content


# --- the delay warning ----------------------------------------------------------

def test_a_delay_warning_reports_delayed_recipients_until_when():
    notice = delay_notice(queued(), CONTENT, [Recipient("carol@example.com", dsn="4.4.1",
                                                        reason=LOCAL_REASON)], SETTINGS, NOW)
    top = parse(notice.content)
    assert top["Subject"] == "Delayed Mail (still being retried)"
    assert notice.sender == "" and notice.origin == "bounce"
    assert [recipient.address for recipient in notice.recipients] == ["alice@example.org"]
    block = report_blocks(notice)[1]
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert timestamp(block["Will-Retry-Until"]) == ARRIVAL + 5 * 86400


def test_a_delay_warning_defaults_to_status_4_0_0():
    block = report_blocks(delay_notice(queued(), CONTENT, [carol()], SETTINGS, NOW))[1]
    assert block["Status"] == "4.0.0"


def test_a_delay_warning_text_says_how_long_it_waited_and_will_wait():
    settings = BounceSettings(myhostname="mx.example.net", maximal_queue_lifetime=3 * 86400)
    notice = delay_notice(queued(), CONTENT, [carol()], settings, NOW)
    text = parse(notice.content).get_payload()[0].get_content().replace("\r\n", "\n")
    assert "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #" in text
    assert "Your message could not be delivered for more than 6 hour(s)." in text
    assert "It will be retried until it is 3 day(s) old." in text
    assert "I'm sorry" not in text
    assert timestamp(report_blocks(notice)[1]["Will-Retry-Until"]) == ARRIVAL + 3 * 86400


def test_a_delay_warning_returns_headers_only_even_with_ret_full():
    notice = delay_notice(queued(dsn_ret="FULL"), CONTENT, [carol()], SETTINGS, NOW)
    returned = parse(notice.content).get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == HEADERS


@pytest.mark.parametrize("notify", ["NEVER", "FAILURE", "SUCCESS,FAILURE"])
def test_no_delay_warning_for_recipients_that_did_not_ask_for_one(notify):
    assert delay_notice(queued(), CONTENT, [carol(notify=notify)], SETTINGS, NOW) is None


def test_a_failure_notice_has_no_will_retry_until():
    block = report_blocks(failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW))[1]
    assert "Will-Retry-Until" not in block


# --- the postmaster copy of an undeliverable notice ----------------------------------

def test_an_undeliverable_notice_goes_to_the_postmaster():
    notice = failure_notice(queued(), CONTENT, [bob()], SETTINGS, NOW)
    bounce = queued(sender="", queue_id="7E6D5C4B3A21", size=len(notice.content))
    failed = [Recipient("alice@example.org", notify="NEVER", dsn="5.1.1", reason=REMOTE_REASON)]
    settings = BounceSettings(myhostname="mx.example.net", postmaster="hostmaster@example.net")
    copy = postmaster_copy(bounce, notice.content, failed, settings, NOW + 60)
    assert copy.sender == "double-bounce"   # Postfix's double_bounce_sender (qualified with myorigin)
    assert [recipient.address for recipient in copy.recipients] == ["hostmaster@example.net"]
    assert copy.origin == "2bounce"
    top = parse(copy.content)
    assert top["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert top["To"] == "hostmaster@example.net"
    blocks = report_blocks(copy)
    assert blocks[0]["X-Postfix-Queue-ID"] == "7E6D5C4B3A21"
    assert blocks[0]["X-Postfix-Sender"] == "rfc822; "
    assert blocks[1]["Final-Recipient"] == "rfc822; alice@example.org"
    assert blocks[1]["Action"] == "failed"
    assert top.get_payload()[2].get_content_type() == "message/rfc822"
    assert notice.content in copy.content


def test_the_postmaster_copy_defaults_to_postmaster():
    copy = postmaster_copy(queued(sender=""), CONTENT, [bob()], SETTINGS, NOW)
    assert [recipient.address for recipient in copy.recipients] == ["postmaster"]


def test_a_notice_to_postmaster_is_addressed_postmaster_at_myorigin():
    settings = BounceSettings(myhostname="mx.example.net", myorigin="example.net")
    copy = postmaster_copy(queued(sender=""), CONTENT, [bob()], settings, NOW)
    assert [recipient.address for recipient in copy.recipients] == ["postmaster@example.net"]
    assert parse(copy.content)["To"] == "postmaster@example.net"
    qualified_already = BounceSettings(myhostname="mx.example.net", myorigin="example.net",
                                       postmaster="hostmaster@elsewhere.example")
    copy = postmaster_copy(queued(sender=""), CONTENT, [bob()], qualified_already, NOW)
    assert [recipient.address for recipient in copy.recipients] == ["hostmaster@elsewhere.example"]


def test_the_scheduler_qualifies_2bounce_notice_recipient_with_myorigin(tmp_path):
    from mailferry.config.config import Config
    from mailferry.config.maincf import parse_main_cf
    from mailferry.qmgr.scheduler import SchedulerSettings
    text = "myhostname = mx.example.net\nmydomain = example.net\nmyorigin = $mydomain\n"
    config = Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))
    settings = SchedulerSettings.from_config(config).bounce_settings()
    copy = postmaster_copy(queued(sender=""), CONTENT, [bob()], settings, NOW)
    assert [recipient.address for recipient in copy.recipients] == ["postmaster@example.net"]


# --- the wire form ------------------------------------------------------------------

LONG_REASON = ("host mx.example.com[192.0.2.7] said: 552-5.2.2 The email account that you tried to reach is "
               "over quota. Please direct the recipient to https://support.example.com/mail/?p=OverQuota "
               + "x" * 120 + " (in reply to RCPT TO command)")


def every_notice():
    long = Recipient("erin@example.com", orcpt="rfc822;erin@example.com", dsn="5.2.2", reason=LONG_REASON)
    message = queued(dsn_envid="E1")
    yield failure_notice(message, CONTENT, [bob(), carol(), long], SETTINGS, NOW)
    yield failure_notice(queued(dsn_ret="HDRS"), CONTENT, [bob()], SETTINGS, NOW)
    yield delay_notice(message, CONTENT, [carol(), long], SETTINGS, NOW)
    yield postmaster_copy(queued(sender=""), CONTENT, [long], SETTINGS, NOW)


@pytest.mark.parametrize("notice", list(every_notice()), ids=["failure", "hdrs", "delay", "2bounce"])
def test_every_line_ends_in_crlf_and_fits(notice):
    assert notice.content.endswith(b"\r\n")
    assert re.search(rb"(?<!\r)\n", notice.content) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", notice.content) is None, "bare CR"
    assert all(len(line) <= 998 for line in notice.content.split(b"\r\n"))
    head = notice.content.partition(b"\r\n\r\n")[0]
    assert head.isascii()


def delivery_report(notice) -> bytes:
    return notice.content.split(b"Content-Type: message/delivery-status\r\n\r\n")[1].split(b"\r\n--")[0]


def test_long_report_lines_are_folded_and_unfold_exactly():
    long = Recipient("erin@example.com", dsn="5.2.2", reason=LONG_REASON)
    notice = failure_notice(queued(), CONTENT, [long], SETTINGS, NOW)
    report = delivery_report(notice)
    assert all(len(line) <= 78 or b" " not in line.lstrip() for line in report.split(b"\r\n"))
    reply = LONG_REASON.partition(" said: ")[2].rpartition(" (in reply to")[0]
    assert f"Diagnostic-Code: smtp; {reply}".encode() in report.replace(b"\r\n ", b" ")
    assert report_blocks(notice)[1]["Diagnostic-Code"] == f"smtp; {reply}"


def test_a_word_longer_than_a_line_gets_a_line_of_its_own():
    reason = "cannot open " + "/var/spool/" + "z" * 100 + " for appending: permission denied"
    notice = failure_notice(queued(), CONTENT, [Recipient("bob@example.com", reason=reason)], SETTINGS, NOW)
    report = delivery_report(notice).split(b"\r\n")
    assert b" /var/spool/" + b"z" * 100 in report
    assert all(len(line) <= 78 or b" " not in line.lstrip() for line in report)
    assert report_blocks(notice)[1]["Diagnostic-Code"] == f"X-Postfix; {reason}"


def test_a_reason_cannot_inject_lines_or_8bit_into_the_report():
    reason = "bad\r\nX-Injected: yes\nvalue caf\u00e9"
    notice = failure_notice(queued(), CONTENT, [Recipient("bob@example.com", reason=reason)], SETTINGS, NOW)
    assert notice.content.isascii()
    block = report_blocks(notice)[1]
    assert "X-Injected" not in block
    assert block["Diagnostic-Code"] == "X-Postfix; bad  X-Injected: yes value caf?"


# --- notify_classes: which postmaster copies notices_for makes ----------------------

class _Log:
    def __init__(self):
        self.warnings = []

    def line(self, program, text):
        pass

    def warning(self, program, text):
        self.warnings.append(text)


def _notify(*classes, **fields):
    return BounceSettings(myhostname="mx.example.net", notify_classes=frozenset(classes),
                          bounce_recipient="bounces@example.net", delay_recipient="delays@example.net",
                          postmaster="doubles@example.net", **fields)


def test_by_default_a_bounce_goes_to_the_sender_only():
    notices = notices_for(queued(), CONTENT, [bob()], BounceSettings(myhostname="mx.example.net"), NOW, _Log())
    assert [n.label for n in notices] == ["sender non-delivery notification"]


def test_notify_bounce_copies_the_headers_to_bounce_notice_recipient():
    notices = notices_for(queued(), CONTENT, [bob(notify="NEVER")], _notify("bounce"), NOW, _Log())
    # NOTIFY=NEVER keeps the sender's notice away, never the postmaster's (DSN_NOTIFY_OVERRIDE).
    [copy] = notices
    assert copy.label == "postmaster non-delivery notification"
    assert [r.address for r in copy.message.recipients] == ["bounces@example.net"]
    top = parse(copy.message.content)
    assert top["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert top.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert BODY not in copy.message.content
    assert b"Subject: lunch" in copy.message.content
    assert b"I'm sorry" not in copy.message.content   # no boilerplate in a postmaster copy
    assert b"<bob@example.com>: host mx.example.com" in copy.message.content


def test_a_bounced_notice_goes_to_2bounce_notice_recipient_with_bounce_or_2bounce():
    for classes in (("2bounce",), ("bounce",)):
        [copy] = notices_for(queued(sender=""), CONTENT, [bob()], _notify(*classes), NOW, _Log())
        assert [r.address for r in copy.message.recipients] == ["doubles@example.net"]
        assert parse(copy.message.content).get_payload()[2].get_content_type() == "message/rfc822"
    assert notices_for(queued(sender=""), CONTENT, [bob()], _notify("delay"), NOW, _Log()) == []


def test_a_failing_postmaster_copy_is_never_copied_again():
    log = _Log()
    assert notices_for(queued(sender="", origin="2bounce"), CONTENT, [bob()],
                       _notify("bounce", "2bounce", "delay"), NOW, log) == []
    assert log.warnings


def test_notify_delay_copies_the_headers_to_delay_notice_recipient():
    settings = _notify("delay", delay_warning_time=3600.0)
    message = queued(recipients=[carol()])
    notices = notices_for(message, CONTENT, [], settings, NOW, _Log())
    assert [n.label for n in notices] == ["sender delay notification", "postmaster delay notification"]
    copy = notices[1].message
    assert [r.address for r in copy.recipients] == ["delays@example.net"]
    top = parse(copy.content)
    assert top["Subject"] == "Postmaster Warning: Delayed Mail"
    assert report_blocks(copy)[1]["Action"] == "delayed"
    assert BODY not in copy.content
    # A delayed notice (null sender) warns only the postmaster, and only with `delay`.
    null = queued(sender="", recipients=[carol()])
    assert [n.label for n in notices_for(null, CONTENT, [], settings, NOW, _Log())] == \
        ["postmaster delay notification"]
    null = queued(sender="", recipients=[carol()])
    assert notices_for(null, CONTENT, [], _notify(delay_warning_time=3600.0), NOW, _Log()) == []
