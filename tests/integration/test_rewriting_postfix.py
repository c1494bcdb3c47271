"""The golden rewriting cases (tests/golden/rewriting/cases.py), checked
against the real Postfix: each case's settings go into a private Postfix
instance that relays to smtp-sink, the case's message is sent over SMTP from
127.0.0.1, and the sink must hold exactly the case's expected envelope and
header fields. The unit test runs the same cases through mailferry."""

from __future__ import annotations

import email
import email.policy
import shutil
import smtplib

import pytest

from tests.golden.rewriting.cases import CASES, COMMON, GENERIC_CASES, VIRTUAL_CASES
from tests.integration.conftest import free_port, wait_for_port, world_readable_tempdir
from tests.peers.postfix import PostfixInstance

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


def message_of(case) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in case.headers) + "Subject: golden\r\n\r\nbody\r\n"


def header_values(raw: bytes, names) -> list[tuple[str, str]]:
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [(name, " ".join(str(parsed[name]).split())) for name in names]


ALL_CASES = CASES + GENERIC_CASES + VIRTUAL_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.name for case in ALL_CASES])
def test_postfix_rewrites_as_the_golden_case_says(case, smtp_sink):
    root = world_readable_tempdir("mailferry-golden-pf-")
    port = free_port()
    postfix = PostfixInstance(root, [f"127.0.0.1:{port} inet n - n - - smtpd"],
                              {**COMMON, "relayhost": smtp_sink.nexthop, **case.settings})
    postfix.write_config()
    try:
        postfix.start()
        wait_for_port("127.0.0.1", port, timeout=20)
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            refused = client.sendmail(case.sender, case.recipients, message_of(case))
        assert refused == {}
        [sunk] = smtp_sink.wait_for_messages(1, timeout=30)
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert sunk.sender == case.expected_sender
    assert sorted(sunk.recipients) == sorted(case.expected_recipients)
    names = [name for name, _ in case.expected_headers]
    assert header_values(sunk.message, names) == case.expected_headers
