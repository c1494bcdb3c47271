"""Header and body checks through the real daemon: a REJECT answered at the end of DATA with
nothing queued, HOLD into the hold queue, smtp_header_checks rewriting a header on the way
out, receive_override_options = no_header_body_checks on a second smtpd service (the
re-injection service after a content filter), and sendmail's rejected mail returned to its
sender. One daemon for the module; each test uses its own subjects and senders."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import base_main_cf, free_port, relay_to_sink, smtpd_master_cf

pytestmark = pytest.mark.integration

HEADER_CHECKS = """\
/^Subject: spam here/       REJECT 5.7.1 No spam, thanks
/^Subject: review me/       HOLD waiting for review
/^Subject: from sendmail: reject/ REJECT 5.7.1 Not from the command line
"""
SMTP_HEADER_CHECKS = """\
/^Subject: \\[internal\\] (.*)/  REPLACE Subject: $1
/^X-Internal-Host:/             IGNORE
/^Subject: drop me/             DISCARD not allowed here
"""


@pytest.fixture(scope="module")
def setup():
    with relay_to_sink("checks") as relay:
        directory, sink = relay.directory, relay.sink
        (directory / "header_checks").write_text(HEADER_CHECKS)
        (directory / "smtp_header_checks").write_text(SMTP_HEADER_CHECKS)
        port, reinject = free_port(), free_port()
        daemon = relay.start(
            base_main_cf(directory, relayhost=sink.nexthop, default_transport="smtp",
                         header_checks=f"regexp:{directory}/header_checks",
                         smtp_header_checks=f"regexp:{directory}/smtp_header_checks"),
            smtpd_master_cf(port, f"127.0.0.1:{reinject} inet n - n - - smtpd"
                                  " -o receive_override_options=no_header_body_checks\n"),
            port)
        daemon.reinject_port = reinject
        yield daemon, sink


def message(sender: str, subject: str, extra: str = "") -> str:
    return (f"From: <{sender}>\r\nTo: <rcpt@dest.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{sender}>\r\n{extra}\r\nHello.\r\n")


def queued(daemon) -> list[dict]:
    out = daemon.command("postqueue", "-j", timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_reject_is_answered_at_end_of_data_and_nothing_is_queued(setup):
    daemon, _ = setup
    sender = "reject@sender.test"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(sender, ["rcpt@dest.test"], message(sender, "spam here"))
        # The session goes on: the next transaction is accepted.
        assert client.sendmail("next@sender.test", ["rcpt@dest.test"], message("next@sender.test", "fine")) == {}
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 No spam, thanks")
    log = daemon.wait_for_log("reject: header Subject: spam here")
    assert re.search(r"mailferry/cleanup\[\d+\]: \w+: reject: header Subject: spam here from "
                     r"\S+\[127\.0\.0\.1\]; from=<reject@sender\.test> to=<rcpt@dest\.test> proto=ESMTP "
                     r"helo=<[^>]+>: 5\.7\.1 No spam, thanks", log), log
    assert sender not in [entry["sender"] for entry in queued(daemon)]
    assert not re.search(r"from=<reject@sender\.test>, size=", daemon.log())


def test_hold_puts_the_message_on_hold(setup):
    daemon, _ = setup
    sender = "hold@sender.test"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        assert client.sendmail(sender, ["rcpt@dest.test"], message(sender, "review me")) == {}
    daemon.wait_for_log("hold: header Subject: review me")
    [entry] = [entry for entry in queued(daemon) if entry["sender"] == sender]
    assert entry["queue_name"] == "hold"
    listing = daemon.mailq()
    assert re.search(r"^[0-9A-F]+!\s", listing, re.MULTILINE), listing


def test_smtp_header_checks_rewrite_headers_on_the_way_out(setup):
    daemon, sink = setup
    sender = "outgoing@sender.test"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail(sender, ["rcpt@dest.test"],
                        message(sender, "[internal] quarterly numbers", "X-Internal-Host: build7\r\n"))
    [sunk] = _wait_for_sender(sink, sender)
    headers = sunk.message.split(b"\n\n", 1)[0].decode()
    assert "Subject: quarterly numbers" in headers.split("\n")
    assert "X-Internal-Host" not in headers
    log = daemon.wait_for_log("replace: header Subject: [internal] quarterly numbers")
    assert re.search(r"mailferry/smtp\[\d+\]: \w+: replace: header Subject: \[internal\] quarterly numbers: "
                     r"Subject: quarterly numbers$", log, re.MULTILINE), log


def test_smtp_header_checks_do_not_discard(setup):
    """DISCARD changes where mail goes: not supported on the delivery side, as in Postfix."""
    daemon, sink = setup
    sender = "nodiscard@sender.test"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.sendmail(sender, ["rcpt@dest.test"], message(sender, "drop me"))
    assert _wait_for_sender(sink, sender)
    assert "warning: unsupported command in smtp_header_checks map: DISCARD not allowed here" in daemon.log()


def test_no_header_body_checks_on_the_reinjection_service(setup):
    daemon, sink = setup
    sender = "reinjected@sender.test"
    with smtplib.SMTP("127.0.0.1", daemon.reinject_port, timeout=30) as client:
        assert client.sendmail(sender, ["rcpt@dest.test"], message(sender, "spam here")) == {}
    assert _wait_for_sender(sink, sender)


def test_sendmail_mail_that_is_rejected_returns_to_its_sender(setup):
    daemon, sink = setup
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"
    result = subprocess.run([str(sendmail), "-C", str(daemon.config_dir), "-f", "author@dest.test",
                             "rcpt@dest.test"],
                            input=b"Subject: from sendmail: reject me\n\nHello.\n", capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [notice] = _wait_for_sender(sink, "", recipient="author@dest.test")
    text = notice.message.decode(errors="replace")
    assert "Not from the command line" in text
    assert "Subject: from sendmail: reject me" in text
    log = daemon.wait_for_log("sender non-delivery notification")
    assert re.search(r"cleanup\[\d+\]: \w+: reject: header Subject: from sendmail: reject me from local; "
                     r"from=<author@dest\.test> to=<rcpt@dest\.test>: 5\.7\.1 Not from the command line", log), log
    assert re.search(r"\w+: to=<rcpt@dest\.test>, relay=none, .*dsn=5\.7\.1, status=bounced "
                     r"\(Not from the command line\)", log), log
    assert re.search(r"\w+: sender non-delivery notification: \w+", log), log


def _wait_for_sender(sink, sender: str, recipient: str | None = None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in sink.messages() if m.sender == sender and (recipient is None or recipient in m.recipients)]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"nothing from <{sender}> reached the sink in {timeout} s")
