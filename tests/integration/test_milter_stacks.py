"""mailferry in real mail stacks: Debian's OpenDKIM and rspamd as milters of the real daemon.

Issue 12, "Done when" 1 and 2:
- OpenDKIM (tests/peers/opendkim.py) signs what mailferry relays, for SMTP intake (smtpd_milters)
  and for `mailferry-sendmail` (non_smtpd_milters, pickup); the signature that arrives at a
  recording smtp-sink verifies with dkimpy against the key this module generated (no DNS).
- rspamd (tests/peers/rspamd.py) rejects at end of data (the client hears rspamd's 554 and
  nothing is queued), tempfails (451), and adds its X-Spamd-Result / X-Spam-Status headers; a
  milter that is down follows milter_default_action (tempfail: 4xx; accept: delivered).
- For sendmail's mail, a refusal cannot go to a client: a 5xx returns the message to its sender
  (a bounce arrives at the sink), a 4xx leaves it in the maildrop; as Postfix's cleanup does.

Each peer starts once for the module; each test gets its own daemon and smtp-sink.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.peers.opendkim import OpenDkim, private_directory
from tests.peers.rspamd import ADDED_HEADERS, REJECT_MESSAGE, REJECT_WORD, TEMPFAIL_MESSAGE, TEMPFAIL_WORD, Rspamd

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

SIGNED_DOMAIN = "example.test"            # OpenDKIM's Domain; the daemon's mydestination too
SENDER = f"alice@{SIGNED_DOMAIN}"
REMOTE_SENDER = "carol@sender.example"    # not local: a bounce to this address goes to the sink
RCPT = "bob@elsewhere.example"
SENDMAIL = Path(sys.executable).parent / "mailferry-sendmail"   # the installed entry point


@pytest.fixture(scope="module")
def opendkim():
    dkim = OpenDkim(private_directory("opendkim-"), domain=SIGNED_DOMAIN)
    try:
        yield dkim.start()
    finally:
        dkim.stop()
        dkim.remove()


@pytest.fixture(scope="module")
def rspamd():
    spam = Rspamd(private_directory("rspamd-"))
    try:
        yield spam.start()
    finally:
        spam.stop()
        spam.remove()


@pytest.fixture
def relay(daemon_factory, smtp_sink):
    """make(**main_cf) -> a started daemon relaying everything to the sink."""
    def make(**main_cf: str):
        return daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp", **main_cf).start()
    return make


def message(subject: str, sender: str = SENDER) -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: Bob <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject))}.{time.time_ns()}@{SIGNED_DOMAIN}>\r\n\r\n"
            "Hello from the stacks tests.\r\nA second line, for the body hash.\r\n").encode()


def send(daemon, content: bytes, sender: str = SENDER) -> tuple[str, int, str]:
    """(stage, code, text) of the first reply that is not a success, or of the end of DATA."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        for stage, command in (("EHLO", lambda: client.ehlo("client.example")),
                               ("MAIL", lambda: client.mail(sender)),
                               ("RCPT", lambda: client.rcpt(RCPT)),
                               ("DATA", lambda: client.data(content))):
            code, text = command()
            if code >= 400 or stage == "DATA":
                return stage, code, text.decode()
    raise AssertionError("not reached")


def sendmail(daemon, content: bytes, sender: str = SENDER) -> None:
    result = subprocess.run([str(SENDMAIL), "-C", str(daemon.config_dir), "-f", sender, RCPT],
                            input=content.replace(b"\r\n", b"\n"), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr


def maildrop_files(daemon) -> list[Path]:
    maildrop = daemon.queue_directory / "maildrop"
    return sorted(maildrop.iterdir()) if maildrop.exists() else []


# --- OpenDKIM: Done-when 1

def test_smtp_relayed_mail_arrives_signed_by_opendkim_and_verifies_with_dkimpy(relay, smtp_sink, opendkim):
    daemon = relay(smtpd_milters=opendkim.milter)
    assert send(daemon, message("signed over smtp"))[1] == 250
    [arrived] = smtp_sink.wait_for_messages(1, timeout=30)
    signature = arrived.email["DKIM-Signature"]
    assert signature is not None, arrived.message.decode()
    assert f"d={SIGNED_DOMAIN};" in signature and f"s={opendkim.selector};" in signature
    assert opendkim.verify(arrived.message)
    # the check can fail: one changed byte of the body and the same signature no longer verifies
    assert not opendkim.verify(arrived.message.replace(b"second line", b"Second line"))


def test_sendmail_mail_arrives_signed_through_non_smtpd_milters(relay, smtp_sink, opendkim):
    daemon = relay(non_smtpd_milters=opendkim.milter)   # and no smtpd_milters: only pickup's path signs
    sendmail(daemon, message("signed from sendmail"))
    [arrived] = smtp_sink.wait_for_messages(1, timeout=60)
    assert arrived.sender == SENDER
    assert arrived.email["DKIM-Signature"] is not None, arrived.message.decode()
    assert opendkim.verify(arrived.message)
    assert maildrop_files(daemon) == []


def test_sendmail_mail_is_not_signed_without_non_smtpd_milters(relay, smtp_sink, opendkim):
    daemon = relay(smtpd_milters=opendkim.milter)       # smtpd's milters are not pickup's
    sendmail(daemon, message("not signed from sendmail"))
    [arrived] = smtp_sink.wait_for_messages(1, timeout=60)
    assert arrived.email["DKIM-Signature"] is None


# --- rspamd: Done-when 2

def test_rspamd_reject_is_the_reply_at_end_of_data_and_nothing_is_queued(relay, smtp_sink, rspamd):
    daemon = relay(smtpd_milters=rspamd.milter)
    assert send(daemon, message(f"please {REJECT_WORD}")) == ("DATA", 554, f"5.7.1 {REJECT_MESSAGE}")
    line = daemon.wait_for_log("milter-reject: END-OF-MESSAGE")
    assert f"5.7.1 {REJECT_MESSAGE}; from=<{SENDER}> to=<{RCPT}>" in line
    assert daemon.queue_summary()[0] == 0
    assert "MAILFERRY_TEST_REJECT" in rspamd.log()   # rspamd's own rule decided it
    assert smtp_sink.messages() == []


def test_rspamd_soft_reject_is_a_4xx_at_end_of_data(relay, smtp_sink, rspamd):
    daemon = relay(smtpd_milters=rspamd.milter)
    assert send(daemon, message(f"please {TEMPFAIL_WORD}")) == ("DATA", 451, f"4.7.1 {TEMPFAIL_MESSAGE}")
    daemon.wait_for_log(f"milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 4.7.1 {TEMPFAIL_MESSAGE}")
    assert daemon.queue_summary()[0] == 0
    assert smtp_sink.messages() == []


def test_rspamd_headers_arrive_with_the_message(relay, smtp_sink, rspamd):
    daemon = relay(smtpd_milters=rspamd.milter)
    assert send(daemon, message("an ordinary message"))[1] == 250
    [arrived] = smtp_sink.wait_for_messages(1, timeout=30)
    for name in ADDED_HEADERS:
        assert arrived.email[name] is not None, f"{name} missing:\n{arrived.message.decode()}"
    assert str(arrived.email["X-Spam-Status"]).startswith("No, score=")
    assert arrived.email["Subject"] == "an ordinary message"


def test_opendkim_and_rspamd_in_one_list_both_act(relay, smtp_sink, opendkim, rspamd):
    daemon = relay(smtpd_milters=f"{opendkim.milter}, {rspamd.milter}")
    assert send(daemon, message("signed and scanned"))[1] == 250
    [arrived] = smtp_sink.wait_for_messages(1, timeout=30)
    assert arrived.email["X-Spamd-Result"] is not None
    assert opendkim.verify(arrived.message)


def test_milter_down_with_default_action_tempfail_gives_4xx_and_queues_nothing(relay, smtp_sink):
    daemon = relay(smtpd_milters=f"inet:127.0.0.1:{free_port()}", milter_default_action="tempfail")
    stage, code, text = send(daemon, message("milter down, tempfail"))
    assert 400 <= code < 500, (stage, code, text)
    assert daemon.queue_summary()[0] == 0
    assert smtp_sink.messages() == []


def test_milter_down_with_default_action_accept_delivers(relay, smtp_sink):
    daemon = relay(smtpd_milters=f"inet:127.0.0.1:{free_port()}", milter_default_action="accept")
    assert send(daemon, message("milter down, accept"))[1] == 250
    [arrived] = smtp_sink.wait_for_messages(1, timeout=30)
    assert arrived.email["Subject"] == "milter down, accept"


# --- sendmail's mail refused by a milter: returned to the sender, or kept, never lost

def test_sendmail_mail_rejected_by_rspamd_is_returned_to_its_sender(relay, smtp_sink, rspamd):
    daemon = relay(non_smtpd_milters=rspamd.milter)
    sendmail(daemon, message(f"from sendmail {REJECT_WORD}", REMOTE_SENDER), sender=REMOTE_SENDER)
    [notice] = smtp_sink.wait_for_messages(1, timeout=60)
    assert notice.sender == "" and notice.recipients == [REMOTE_SENDER]
    assert notice.email["Subject"] == "Undelivered Mail Returned to Sender"
    text = notice.message.decode()
    assert REJECT_MESSAGE in text and f"from sendmail {REJECT_WORD}" in text   # the reason, the original
    log = daemon.wait_for_log("status=bounced")
    queue_id = re.search(r"mailferry/pickup\[\d+\]: ([0-9A-F]+): uid=0 from=<" + re.escape(REMOTE_SENDER), log)[1]
    assert f"{queue_id}: milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 5.7.1 {REJECT_MESSAGE}" in log
    assert re.search(rf"{queue_id}: to=<{re.escape(RCPT)}>, relay=none, .*dsn=5\.7\.1, "
                     rf"status=bounced \({REJECT_MESSAGE}\)", log), log
    assert f"{queue_id}: sender non-delivery notification: " in log
    assert maildrop_files(daemon) == []


def test_sendmail_mail_tempfailed_by_rspamd_stays_in_the_maildrop(relay, smtp_sink, rspamd):
    daemon = relay(non_smtpd_milters=rspamd.milter)
    sendmail(daemon, message(f"from sendmail {TEMPFAIL_WORD}"))
    daemon.wait_for_log(f"milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 4.7.1 {TEMPFAIL_MESSAGE}")
    assert len(maildrop_files(daemon)) == 1            # kept for pickup's next pass, as in Postfix
    assert daemon.queue_summary()[0] == 1              # that file (mailq lists the maildrop), nothing more
    assert "status=bounced" not in daemon.log()
    assert smtp_sink.messages() == []


def test_sendmail_mail_with_the_milter_down_and_tempfail_stays_in_the_maildrop(relay, smtp_sink):
    daemon = relay(non_smtpd_milters=f"inet:127.0.0.1:{free_port()}", milter_default_action="tempfail")
    sendmail(daemon, message("from sendmail, milter down"))
    daemon.wait_for_log("milter-reject: CONNECT from localhost[127.0.0.1]: 4.7.1")
    assert len(maildrop_files(daemon)) == 1
    assert daemon.queue_summary()[0] == 1
    assert smtp_sink.messages() == []
