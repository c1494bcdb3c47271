"""debug_peer_list / debug_peer_level through the real daemon: the conversation with a listed
client is logged as Postfix's verbose smtpd logs it; an unlisted one's is not."""

from __future__ import annotations

import re
import smtplib

import pytest

pytestmark = pytest.mark.integration

# This session's own disconnect line: the daemon's start-up probe (wait_for_port) logs a bare
# "disconnect from localhost[127.0.0.1]" of its own, before this session's worker flushes its lines.
SESSION_END = "disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1"


def converse(daemon, helo: str) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo(helo)
        client.sendmail("alice@example.test", ["bob@example.test"], "Subject: hi\r\n\r\nbody line\r\n")


def test_a_listed_peer_has_its_conversation_logged(daemon_factory):
    daemon = daemon_factory(debug_peer_list="192.0.2.0/24, !127.0.0.2, localhost", debug_peer_level="2").start()
    converse(daemon, "listed.example")
    log = daemon.wait_for_log(SESSION_END)
    assert re.search(r"mailferry/smtpd\[\d+\]: > localhost\[127\.0\.0\.1\]: 220 mx\.example\.test ESMTP", log)
    assert re.search(r"mailferry/smtpd\[\d+\]: < localhost\[127\.0\.0\.1\]: ehlo listed\.example", log)
    assert re.search(r"> localhost\[127\.0\.0\.1\]: 250-mx\.example\.test", log)
    assert re.search(r"< localhost\[127\.0\.0\.1\]: mail FROM:<alice@example\.test>", log)
    assert re.search(r"> localhost\[127\.0\.0\.1\]: 250 2\.0\.0 Ok: queued as [0-9A-F]+", log)
    assert "body line" not in log                      # the message itself is never logged


@pytest.mark.parametrize("settings", [{"debug_peer_list": "192.0.2.1"},
                                      {"debug_peer_list": "127.0.0.1", "debug_peer_level": "0"}],
                         ids=["unlisted", "level-0"])
def test_an_unlisted_peer_or_level_0_logs_nothing_more(daemon_factory, settings):
    daemon = daemon_factory(**settings).start()
    converse(daemon, "unlisted.example")
    log = daemon.wait_for_log(SESSION_END)
    assert not re.search(r": [<>] localhost\[127\.0\.0\.1\]: ", log)
