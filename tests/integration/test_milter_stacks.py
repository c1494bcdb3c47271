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
