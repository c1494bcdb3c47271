"""notify_classes through the real daemon: the postmaster's copies arrive at smtp-sink (the
relayhost) in Postfix's form.

- bounce:   a bounced message's headers to bounce_notice_recipient ("Postmaster Copy: Undelivered Mail")
- 2bounce:  a bounced notice, whole, to 2bounce_notice_recipient
- delay:    a delayed message's headers to delay_notice_recipient ("Postmaster Warning: Delayed Mail")
- policy, protocol: smtpd's session transcript to error_notice_recipient
  ("mailferry SMTP server: errors from localhost[127.0.0.1]")
- resource: the transcript of a session whose message hit a queue file write error (the fault shim)
"""

from __future__ import annotations

import contextlib
import errno
import smtplib

import pytest

from tests.peers import free_port
from tests.peers.fault_scenarios import Scenario
from tests.peers.queue_faults import FaultShim

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

RETRY_FAST = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}
SUBJECT_TRANSCRIPT = "mailferry SMTP server: errors from localhost[127.0.0.1]"


def by_recipient(messages):
    return {message.recipients[0]: message for message in messages}


def test_bounce_policy_and_protocol_notices_reach_their_recipients(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory()
    daemon = daemon_factory(
        default_transport="smtp", relayhost=sink.nexthop, myorigin="example.test",
        notify_classes="bounce, policy, protocol",
        bounce_notice_recipient="bounces@remote.test", error_notice_recipient="errors@remote.test",
        transport_maps="inline:{{ gone@remote.test = error:5.1.1 mailbox gone }}",
        smtpd_recipient_restrictions="check_recipient_access inline:{{ blocked@remote.test = REJECT no thanks }},"
                                     " permit_mynetworks, reject_unauth_destination").start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.sendmail("alice@remote.test", ["gone@remote.test"],
                        "From: alice@remote.test\r\nSubject: lunch\r\n\r\nSecret body.\r\n")
    # bounce: the sender's notice and the postmaster's headers-only copy.
    notices = by_recipient(sink.wait_for_messages(2, timeout=30))
    assert set(notices) == {"alice@remote.test", "bounces@remote.test"}, notices
    copy = notices["bounces@remote.test"]
    assert copy.sender == "double-bounce@example.test"
    assert copy.email["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert b"Subject: lunch" in copy.message and b"Secret body." not in copy.message
    assert b"gone@remote.test" in copy.message
    assert notices["alice@remote.test"].email["Subject"] == "Undelivered Mail Returned to Sender"
    daemon.wait_for_log("postmaster non-delivery notification")

    # policy: a rejected recipient; the transcript goes to error_notice_recipient.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo("client.example.test")
        client.mail("alice@remote.test")
        code, _ = client.rcpt("blocked@remote.test")
        assert code == 554
    [transcript] = [m for m in sink.wait_for_messages(3, timeout=30) if m.recipients == ["errors@remote.test"]]
    assert transcript.sender == "double-bounce@example.test"
    assert transcript.email["Subject"] == SUBJECT_TRANSCRIPT
    body = transcript.email.get_content()
    assert "Transcript of session follows." in body
    assert "In:  rcpt TO:<blocked@remote.test>" in body   # as smtplib wrote it
    assert "Out: 554 5.7.1 <blocked@remote.test>: Recipient address rejected: no thanks" in body
    assert "For other details, see the local mail logfile" in body

    # protocol: an unknown command.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        code, _ = client.docmd("BOGUS")
        assert code == 500
    [protocol] = [m for m in sink.wait_for_messages(4, timeout=30)
                  if m.recipients == ["errors@remote.test"] and "In:  BOGUS" in m.email.get_content()]
    assert "Out: 500 5.5.2 Error: command not recognized" in protocol.email.get_content()

    # A clean session sends nothing.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.sendmail("alice@remote.test", ["someone@remote.test"], "Subject: fine\r\n\r\nok\r\n")
    messages = sink.wait_for_messages(5, timeout=30)
    daemon.wait_for_log("status=sent", count=5)
    assert len(messages) == 5


def test_without_the_classes_no_postmaster_copy_and_no_transcript(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory()
    daemon = daemon_factory(
        default_transport="smtp", relayhost=sink.nexthop, myorigin="example.test",
        bounce_notice_recipient="bounces@remote.test", error_notice_recipient="errors@remote.test",
        transport_maps="inline:{{ gone@remote.test = error:5.1.1 mailbox gone }}").start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.docmd("BOGUS")
        client.sendmail("alice@remote.test", ["gone@remote.test"], "Subject: lunch\r\n\r\nbody\r\n")
    [notice] = sink.wait_for_messages(1, timeout=30)
    assert notice.recipients == ["alice@remote.test"]
    daemon.wait_for_log(": removed", count=2)   # the message and its notice: nothing else was made
    assert "postmaster non-delivery notification" not in daemon.log()
    assert len(sink.messages()) == 1


def test_2bounce_and_delay_copies(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory()
    dead = free_port()
    daemon = daemon_factory(
        default_transport="smtp", relayhost=sink.nexthop, myorigin="example.test",
        notify_classes="2bounce, delay", delay_warning_time="1s", **RETRY_FAST,
        **{"2bounce_notice_recipient": "doubles@remote.test", "delay_notice_recipient": "delays@remote.test"},
        transport_maps=f"inline:{{ {{ gone@remote.test = error:5.1.1 mailbox gone }}, slow@remote.test=smtp:[127.0.0.1]:{dead}}}"
    ).start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        # A notice that bounces (null sender): the whole of it to 2bounce_notice_recipient.
        client.sendmail("", ["gone@remote.test"], "Subject: a notice\r\n\r\nnotice body\r\n")
        client.sendmail("alice@remote.test", ["slow@remote.test"], "Subject: slow\r\n\r\nslow body\r\n")
    found = {}
    for _ in range(3):
        found = by_recipient(sink.wait_for_messages(len(found) + 1, timeout=30))
        if {"doubles@remote.test", "delays@remote.test", "alice@remote.test"} <= set(found):
            break
    double = found["doubles@remote.test"]
    assert double.email["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert b"notice body" in double.message          # 2bounce returns the whole message
    delay = found["delays@remote.test"]
    assert delay.email["Subject"] == "Postmaster Warning: Delayed Mail"
    assert b"Subject: slow" in delay.message and b"slow body" not in delay.message
    assert found["alice@remote.test"].email["Subject"] == "Delayed Mail (still being retried)"
    daemon.wait_for_log("postmaster delay notification")


def test_a_queue_file_write_error_sends_the_resource_transcript():
    with contextlib.ExitStack() as stack:
        scenario = Scenario(stack)
        shim = FaultShim(scenario.directory / "faults")
        daemon = scenario.make_daemon(extra_env=shim.env, myorigin="example.test",
                                      error_notice_recipient="errors@remote.test").start()
        sink = scenario.sink_up()
        shim.inject("fsync", 1, errno.EIO, "/queue.db-wal")   # a commit's sync, not a background checkpoint's
        code, text = scenario.send()
        assert code == 451 and "queue file write error" in text, (code, text)
        assert shim.remaining() == 0
        [notice] = sink.wait_for_messages(1, timeout=30)
        assert notice.recipients == ["errors@remote.test"]
        assert notice.email["Subject"] == SUBJECT_TRANSCRIPT
        body = notice.email.get_content()
        assert "Out: 451 4.3.0 Error: queue file write error" in body
        assert "In:  data" in body   # as smtplib wrote it
