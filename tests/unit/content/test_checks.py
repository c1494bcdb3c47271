"""content/checks.py: each action, on the receiving side and on the delivery side."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.content.checks import CheckTables, Limits, Verdict, dsn_prepend, inspect, printable_line
from mailferry.tables.result import MISSING, LookupResult, found, tempfail


class Rules:
    """A table answering by the first substring found in the key (a stand-in for regexp:)."""

    def __init__(self, *rules: tuple[str, str], failing: bool = False):
        self.rules = rules
        self.failing = failing
        self.keys: list[str] = []

    async def lookup(self, key: str) -> LookupResult:
        self.keys.append(key)
        if self.failing:
            return tempfail("down")
        for needle, action in self.rules:
            if needle in key:
                return found(action)
        return MISSING


MESSAGE = b"Subject: hello\r\nX-Old: 1\r\n\r\nfirst line\r\nsecond line\r\n"


def check(content: bytes = MESSAGE, header=None, body=None, receiving: bool = True, **limits) -> Verdict:
    tables = CheckTables(header, header, header, body)
    return asyncio.run(inspect(content, tables, Limits(**limits), receiving))


@pytest.mark.parametrize("action, reason", [
    ("REJECT", "5.7.1 message content rejected"),
    ("REJECT go away", "5.7.1 go away"),
    ("reject 5.7.2 custom status", "5.7.2 custom status"),
    ("REJECT 4.7.1 later", "4.7.1 later"),
])
def test_reject(action, reason):
    verdict = check(header=Rules(("Subject", action)))
    assert verdict.reject == reason
    assert verdict.notes[0].action == "reject" and verdict.notes[0].text == reason


def test_reject_with_a_success_status_is_made_temporary_with_a_warning():
    verdict = check(header=Rules(("Subject", "REJECT 2.0.0 odd")))
    assert verdict.reject == "4.0.0 odd"
    assert verdict.warnings == ["bad DSN action in 2.0.0 odd -- need 4.x.x or 5.x.x"]


def test_reject_stops_the_inspection():
    body = Rules()
    check(header=Rules(("Subject", "REJECT")), body=body)
    assert body.keys == []


def test_warn_and_info_only_log():
    verdict = check(header=Rules(("Subject", "WARN look"), ("X-Old", "INFO note")))
    assert [(n.action, n.line, n.text) for n in verdict.notes] == [
        ("warning", b"Subject: hello", "look"), ("info", b"X-Old: 1", "note")]
    assert verdict.content is None and not verdict.refused


def test_ignore_and_strip_remove_the_line():
    verdict = check(header=Rules(("X-Old", "IGNORE")), body=Rules(("first", "STRIP why")))
    assert verdict.content == b"Subject: hello\r\n\r\nsecond line\r\n"
    assert [(n.action, n.text) for n in verdict.notes] == [("strip", "why")]


def test_replace_and_prepend_headers_and_body_lines():
    verdict = check(header=Rules(("X-Old", "REPLACE X-New: 2"), ("Subject", "PREPEND X-Before: yes")),
                    body=Rules(("second", "REPLACE 2nd"), ("first", "PREPEND zeroth")))
    assert verdict.content == (b"X-Before: yes\r\nSubject: hello\r\nX-New: 2\r\n\r\nzeroth\r\nfirst line\r\n"
                               b"2nd\r\n")


def test_replace_and_prepend_need_a_header_for_a_header():
    verdict = check(header=Rules(("Subject", "REPLACE not a header"), ("X-Old", "PREPEND")))
    assert verdict.content is None
    assert verdict.warnings == [
        'bad REPLACE header text "not a header" in header_checks map -- need "headername: headervalue"',
        "PREPEND action without text in header_checks map"]


def test_hold_discard_redirect_filter_bcc():
    verdict = check(header=Rules(("Subject", "HOLD"), ("X-Old", "BCC archive@example.test")),
                    body=Rules(("first", "FILTER scan:[127.0.0.1]:10025"), ("second", "REDIRECT boss@example.test")))
    assert (verdict.hold, verdict.bcc, verdict.filter, verdict.redirect) == (
        True, ["archive@example.test"], "scan:[127.0.0.1]:10025", "boss@example.test")
    discarded = check(header=Rules(("Subject", "DISCARD")), body=Rules(("first", "HOLD")))
    assert discarded.discard and not discarded.hold


def test_bad_redirect_bcc_and_filter_targets_are_warned_about():
    verdict = check(header=Rules(("Subject", "REDIRECT nobody"), ("X-Old", "FILTER nocolon")),
                    body=Rules(("first", "BCC")))
    assert not (verdict.redirect or verdict.filter or verdict.bcc)
    assert len(verdict.warnings) == 3


def test_redirect_and_pass_end_the_inspection():
    for action in ("REDIRECT a@b.test", "PASS"):
        body = Rules(("first", "REJECT"))
        verdict = check(header=Rules(("Subject", action)), body=body)
        assert not verdict.reject and body.keys == []


def test_dunno_and_ok_keep_the_line():
    verdict = check(header=Rules(("Subject", "DUNNO"), ("X-Old", "OK")))
    assert verdict == Verdict()


def test_unknown_action_is_warned_about():
    assert check(header=Rules(("Subject", "FROB it"))).warnings == ["unknown command in header_checks map: FROB it"]


def test_a_failing_table_refuses_for_now():
    verdict = check(header=Rules(failing=True))
    assert verdict.lookup_failed == "header_checks" and verdict.refused


def test_body_checks_size_limit_counts_from_the_start_of_each_body_part():
    body = Rules()
    check(b"S: x\r\n\r\n" + b"0123456789\r\n" * 10, body=body, body_size_limit=50)
    assert len(body.keys) == 5   # offsets 1, 12, 23, 34, 45 are below 50


def test_empty_lines_are_never_looked_up():
    body = Rules()
    check(b"S: x\r\n\r\n\r\nx\r\n", body=body)
    assert body.keys == ["x"]


def test_cleanups_own_headers_are_skipped():
    header = Rules(("Message-Id", "REJECT"))
    content = b"Received: x\r\nMessage-Id: <ours>\r\nSubject: s\r\n\r\n"
    verdict = asyncio.run(inspect(content, CheckTables(header), Limits(), True, skip=(13, 32)))
    assert not verdict.reject and "Message-Id: <ours>" not in header.keys


def test_mime_headers_go_to_mime_header_checks_wherever_they_are():
    primary, mime = Rules(), Rules(("Content-Type", "REJECT"))
    tables = CheckTables(primary, mime, None, None)
    verdict = asyncio.run(inspect(b"Subject: s\r\nContent-Type: text/plain\r\n\r\nx\r\n", tables))
    assert verdict.reject and primary.keys == ["Subject: s"]


def test_strict_mime_encoding_domain_refuses_with_postfixs_error():
    content = b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n\r\n--b--\r\n"
    verdict = asyncio.run(inspect(content, CheckTables(), Limits(strict_encoding=True)))
    assert verdict.mime_error is not None and verdict.refused


@pytest.mark.parametrize("action", ["REJECT", "HOLD", "DISCARD", "REDIRECT a@b.test", "FILTER x:y", "BCC a@b.test",
                                    "PASS"])
def test_the_delivery_side_refuses_actions_that_change_when_or_where_mail_goes(action):
    verdict = check(header=Rules(("Subject", action)), receiving=False)
    assert verdict == Verdict(warnings=[f"unsupported command in header_checks map: {action}"])


def test_the_delivery_side_edits_and_logs():
    verdict = check(header=Rules(("Subject", "REPLACE Subject: bye"), ("X-Old", "WARN seen")),
                    body=Rules(("first", "IGNORE")), receiving=False)
    assert verdict.content == b"Subject: bye\r\nX-Old: 1\r\n\r\nsecond line\r\n"
    assert [n.action for n in verdict.notes] == ["replace", "warning"]


def test_unchanged_content_is_the_same_object():
    verdict = check(header=Rules(("nothing", "REJECT")), body=Rules())
    assert verdict.content is None


def test_dsn_prepend_and_printable_line():
    assert dsn_prepend("5.7.1", "4.2.0 busy") == "4.2.0 busy"
    assert dsn_prepend("5.7.1", "no status") == "5.7.1 no status"
    assert printable_line(b"Subject: a\n\tb") == "Subject: a??b"
    assert len(printable_line(b"x" * 500)) == 200
