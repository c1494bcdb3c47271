"""Dovecot auth answers as verdicts (auth/dovecot.py _verdict): a broken answer is the server's
fault, a temporary failure, never a 535 that tells the client its password is wrong."""

from __future__ import annotations

import pytest

from mailferry.auth.dovecot import _verdict
from mailferry.auth.verdict import FAIL, OK, TEMPFAIL


def test_ok_names_the_user():
    verdict = _verdict("OK", ["user=user1"])
    assert (verdict.outcome, verdict.username) == (OK, "user1")


@pytest.mark.parametrize("arguments, outcome", [(["reason=bad password"], FAIL), (["temp", "reason=db down"], TEMPFAIL)])
def test_fail_and_temporary_fail(arguments, outcome):
    assert _verdict("FAIL", arguments).outcome == outcome


@pytest.mark.parametrize("command, arguments", [("OK", []), ("OK", ["user="]), ("CONT", ["!!!"]), ("WHAT", ["x"]),
                                                ("\x00\xff", [])])
def test_a_malformed_answer_is_a_temporary_failure(command, arguments):
    verdict = _verdict(command, arguments)
    assert verdict.outcome == TEMPFAIL and verdict.reason.startswith("Authentication backend error")
    assert verdict.reason.isascii() and verdict.reason.isprintable()


def test_a_reason_becomes_printable_ascii_and_a_user_name_stays_utf8():
    verdict = _verdict("FAIL", ["reason=\x00caf\ufffd\r\n", "user=\u00e9ve\x00"])
    assert verdict.reason == "?caf???" and verdict.username == "\u00e9ve?"
