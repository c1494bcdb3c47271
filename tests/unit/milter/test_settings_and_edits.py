"""The milter lists of main.cf and Postfix's header index rules for modifications."""

from __future__ import annotations

import pytest

from mailferry.config.config import Config, ConfigValueError
from mailferry.config.maincf import parse_main_cf
from mailferry.milter import protocol as p
from mailferry.milter.edits import EditableMessage
from mailferry.milter.settings import MilterSettings, split_milters


def config(**settings: str) -> Config:
    text = "".join(f"{name} = {value}\n" for name, value in settings.items())
    return Config("/nonexistent", parse_main_cf(text, "/nonexistent/main.cf"))


def test_a_list_with_per_milter_settings():
    settings = MilterSettings.from_config(config(
        smtpd_milters="inet:localhost:8891, { unix:/run/rspamd.sock, default_action=accept, "
                      "command_timeout=10s, content_timeout=2m, connect_timeout=5, protocol=4 } inet:[::1]:11332",
        milter_default_action="reject", milter_command_timeout="20s"))
    first, second, third = settings.milters
    assert (first.name, first.default_action, first.command_timeout, first.protocol) == ("inet:localhost:8891",
                                                                                         "reject", 20, 6)
    assert (second.name, second.default_action, second.command_timeout, second.content_timeout,
            second.connect_timeout, second.protocol) == ("unix:/run/rspamd.sock", "accept", 10, 120, 5, 4)
    assert third.name == "inet:[::1]:11332" and third.default_action == "reject"


def test_the_default_macros_are_postfix_s():
    settings = MilterSettings.from_config(config(smtpd_milters="inet:127.0.0.1:1", myhostname="mx.example"))
    assert settings.macros[p.SMFIC_CONNECT] == ("j", "{daemon_name}", "{daemon_addr}", "v", "_")
    assert settings.macros[p.SMFIC_MAIL] == ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}",
                                             "{mail_host}", "{mail_mailer}")
    assert settings.daemon_name == "mx.example"


@pytest.mark.parametrize("settings", [
    dict(milter_default_action="bounce"), dict(milter_protocol="5"),
    dict(smtpd_milters="{ inet:a:1, colour=blue }"), dict(smtpd_milters="{ inet:a:1, default_action }"),
])
def test_bad_settings_name_the_problem(settings):
    with pytest.raises(ConfigValueError):
        MilterSettings.from_config(config(**{"smtpd_milters": "inet:a:1", **settings}))


def test_split_keeps_braces_together():
    assert split_milters("a {b, c=1},d") == ["a", "{b, c=1}", "d"]


MESSAGE = (b"Received: from ours id Q1\r\nReceived: from theirs\r\nSubject: one\r\nSubject: two\r\n\r\nbody\r\n")


def edited(*replies: p.Reply, leading_space: bool = False) -> bytes:
    message = EditableMessage.parse(MESSAGE, "a@x", ["b@y"], b" id Q1")
    for reply in replies:
        message.apply(reply, leading_space)
    message.finish_body()
    return message.content()


def test_change_counts_the_fields_of_that_name_without_our_received():
    assert edited(p.Reply(p.SMFIR_CHGHEADER, (1, "Received", "changed"))) == MESSAGE.replace(
        b"Received: from theirs", b"Received: changed")
    assert edited(p.Reply(p.SMFIR_CHGHEADER, (2, "subject", "2nd"))) == MESSAGE.replace(
        b"Subject: two", b"subject: 2nd")


def test_change_with_an_empty_value_deletes_and_past_the_end_adds():
    assert edited(p.Reply(p.SMFIR_CHGHEADER, (1, "Subject", ""))) == MESSAGE.replace(b"Subject: one\r\n", b"")
    assert edited(p.Reply(p.SMFIR_CHGHEADER, (3, "Subject", "three"))) == MESSAGE.replace(
        b"two\r\n\r\n", b"two\r\nSubject: three\r\n\r\n")
    assert edited(p.Reply(p.SMFIR_CHGHEADER, (5, "X-None", ""))) == MESSAGE


def test_insert_counts_every_field_ours_included():
    assert edited(p.Reply(p.SMFIR_INSHEADER, (0, "X-Top", "1"))).startswith(b"X-Top: 1\r\nReceived: from ours")
    assert edited(p.Reply(p.SMFIR_INSHEADER, (1, "X-Second", "2"))).startswith(
        b"Received: from ours id Q1\r\nX-Second: 2\r\nReceived: from theirs")
    assert edited(p.Reply(p.SMFIR_INSHEADER, (99, "X-Last", "9"))).endswith(b"Subject: two\r\nX-Last: 9\r\n\r\nbody\r\n")


def test_the_leading_space_is_the_milter_s_when_it_asked_for_it():
    assert b"X-A: padded\r\n" in edited(p.Reply(p.SMFIR_ADDHEADER, ("X-A", " padded")), leading_space=True)
    assert b"X-A:tight\r\n" in edited(p.Reply(p.SMFIR_ADDHEADER, ("X-A", "tight")), leading_space=True)
    assert b"X-A: plain\r\n" in edited(p.Reply(p.SMFIR_ADDHEADER, ("X-A", "plain")))


def test_multi_line_values_get_crlf():
    assert b"X-F: a\r\n\tb\r\n" in edited(p.Reply(p.SMFIR_ADDHEADER, ("X-F", "a\n\tb")))


def test_a_replaced_body_ends_with_crlf():
    assert edited(p.Reply(p.SMFIR_REPLBODY, (b"one\ntwo",))).endswith(b"\r\n\r\none\r\ntwo\r\n")


def test_a_message_without_headers_keeps_its_body():
    message = EditableMessage.parse(b"\r\njust a body\r\n", "", [])
    assert message.headers == [] and message.body == b"just a body\r\n"
    assert message.content() == b"\r\njust a body\r\n"
