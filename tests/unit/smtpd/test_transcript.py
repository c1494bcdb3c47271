"""The postmaster's session transcript (smtpd/transcript.py) and the history the protocol core keeps for it."""

from __future__ import annotations

import email
import email.policy

from mailferry.protocol import server_events as events
from mailferry.protocol.replies import Reply
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings
from mailferry.smtpd.transcript import TranscriptSettings, error_class, errors_to_report, notice

SETTINGS = TranscriptSettings(classes=frozenset({"policy", "protocol"}), error_recipient="errors",
                              bounce_recipient="bounces", myorigin="example.net", myhostname="mx.example.net",
                              mail_name="mailferry")


def test_each_refusal_gets_postfix_error_class():
    assert error_class(Reply(500, "5.5.2", "Error: command not recognized"), True) == "protocol"
    assert error_class(Reply(554, "5.7.1", "<a@b>: Relay access denied"), False) == "policy"
    assert error_class(Reply(451, "4.3.0", "<a@b>: Temporary lookup failure"), False) == "data"
    assert error_class(Reply(451, "4.3.5", "Server configuration error"), False) == "software"
    assert error_class(Reply(451, "4.3.0", "Error: queue file write error"), False) == "resource"
    assert error_class(Reply(452, "4.3.1", "Insufficient system storage"), False) == "resource"
    assert error_class(Reply(552, "5.3.4", "Error: message file too big"), True) == "bounce"


def test_only_the_configured_classes_are_reported():
    failed = [(Reply(451, "4.3.5", "Server configuration error"), False),
              (Reply(500, "5.5.2", "Error: bad syntax"), True)]
    assert errors_to_report(failed, frozenset({"policy", "protocol"})) == {"protocol"}
    assert errors_to_report(failed, frozenset({"policy"})) == set()


def test_the_notice_has_postfix_form():
    history = ["Out: 220 mx.example.net ESMTP", "In:  RCPT TO:<x@y>", "Out: 554 5.7.1 " + "word " * 30]
    message = notice(SETTINGS, "client.example[192.0.2.1]", history, {"policy"}, "lost connection after RCPT")
    assert message.sender == "double-bounce@example.net"
    assert [r.address for r in message.recipients] == ["errors@example.net"]
    assert message.origin == "2bounce"     # never bounced again
    parsed = email.message_from_bytes(message.content, policy=email.policy.default)
    assert parsed["Subject"] == "mailferry SMTP server: errors from client.example[192.0.2.1]"
    assert parsed["From"] == "Mail Delivery System <MAILER-DAEMON@example.net>"
    assert parsed["To"] == "Postmaster <errors@example.net>"
    body = parsed.get_content().replace("\r\n", "\n")
    assert body.startswith("Transcript of session follows.\n\nOut: 220 mx.example.net ESMTP\nIn:  RCPT TO:<x@y>\n")
    assert "Session aborted, reason: lost connection after RCPT" in body
    assert body.rstrip().endswith("For other details, see the local mail logfile")
    lines = message.content.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert any(line.startswith(b"    word") for line in lines)   # continuation lines are indented


def test_a_bounce_class_error_goes_to_bounce_notice_recipient():
    message = notice(SETTINGS, "c[192.0.2.1]", [], {"bounce", "policy"})
    assert [r.address for r in message.recipients] == ["bounces@example.net"]


def test_the_core_records_nothing_unless_asked():
    conn = ServerConnection(ServerSettings(hostname="mx.example.net"))
    conn.greeting()
    conn.receive(b"BOGUS\r\n")
    assert conn.next_event() is events.NEED_DATA
    assert conn.transcript is None and conn.failed_replies == []


def test_the_core_records_commands_replies_and_who_refused():
    conn = ServerConnection(ServerSettings(hostname="mx.example.net", auth_mechanisms=("PLAIN",)))
    conn.transcript = []
    conn.greeting()
    conn.receive(b"EHLO client\r\n")
    assert isinstance(conn.next_event(), events.Hello)
    conn.accept()
    conn.receive(b"AUTH PLAIN c2VjcmV0\r\n")
    assert isinstance(conn.next_event(), events.AuthRequested)
    conn.refuse(Reply(535, "5.7.8", "Error: authentication failed"))
    conn.receive(b"BOGUS\r\n")
    assert conn.next_event() is events.NEED_DATA
    text = "\n".join(conn.transcript)
    assert "In:  EHLO client" in text
    assert "In:  AUTH PLAIN" in text and "c2VjcmV0" not in text   # never a credential
    assert "Out: 535 5.7.8 Error: authentication failed" in text
    assert "In:  BOGUS\nOut: 500 5.5.2 Error: command not recognized" in text
    assert [(reply.code, by_core) for reply, by_core in conn.failed_replies] == [(535, False), (500, True)]


# --- debug_peer_list (smtpd/debug_peer.py) ---------------------------------------------------

def test_debug_peer_list_is_a_namadr_list():
    from mailferry.smtpd.debug_peer import DebugPeers
    peers = DebugPeers("!bad.example.com, example.com, .example.net, 192.0.2.0/24, [2001:db8::1]", 2)
    assert peers.matches("mail.example.com", "198.51.100.1")      # a name matches its subdomains
    assert peers.matches("example.com", "198.51.100.1")
    assert not peers.matches("bad.example.com", "192.0.2.9")       # the first match decides
    assert not peers.matches("example.net", "198.51.100.1")        # .domain: subdomains only
    assert peers.matches("a.example.net", "198.51.100.1")
    assert peers.matches("unknown", "192.0.2.200") and peers.matches("unknown", "2001:db8::1")
    assert not peers.matches("unknown", "198.51.100.1")


def test_debug_peers_off_without_a_list_or_a_level(tmp_path):
    from mailferry.config.config import Config
    from mailferry.config.maincf import parse_main_cf
    from mailferry.smtpd.debug_peer import DebugPeers

    def config(text):
        return Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))
    assert DebugPeers.from_config(config("")) is None
    assert DebugPeers.from_config(config("debug_peer_list = 127.0.0.1\ndebug_peer_level = 0\n")) is None
    assert DebugPeers.from_config(config("debug_peer_list = 127.0.0.1\n")).level == 2
