"""The golden content-check cases (tests/golden/content_checks/) through mailferry's cleanup
checks: the reply, what happens to the message, its content and the log line of each action.
tests/integration/test_content_checks_postfix.py holds real Postfix and the real daemon to the
same cases."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.cleanup.checks import ContentChecks
from mailferry.cleanup.service import ContentRefused
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import ClientInfo, NewMessage, Recipient
from tests.golden.content_checks.cases import BODY_CHECKS, CASES, HEADER_CHECKS, RECIPIENT, SETTINGS, table_text
from tests.unit.listlog import ListLog

SINK_PORT = 2599


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden-checks")
    (directory / "header_checks").write_text(table_text(HEADER_CHECKS, SINK_PORT))
    (directory / "body_checks").write_text(table_text(BODY_CHECKS, SINK_PORT))
    text = (f"header_checks = regexp:{directory}/header_checks\n"
            f"body_checks = regexp:{directory}/body_checks\n"
            + "".join(f"{name} = {value}\n" for name, value in SETTINGS.items()))
    return Config(str(directory), parse_main_cf(text, str(directory / "main.cf")))


def run(case, config) -> tuple[str, NewMessage, list[str]]:
    log = ListLog()
    checks = ContentChecks.from_config(config, log)
    message = NewMessage(case.sender, [Recipient(RECIPIENT)], case.message(SINK_PORT),
                         ClientInfo("localhost", "127.0.0.1", helo="client.test"), queue_id="4ABC")
    try:
        asyncio.run(checks.apply(message))
    except ContentRefused as refused:
        reply = refused.refusal.reply
        return f"{reply.code} {reply.enhanced} {reply.text}", message, log.texts()
    return "250", message, log.texts()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden_case(case, tables):
    reply, message, log = run(case, tables)
    assert reply == case.reply
    if reply != "250":
        return
    outcome = "held" if message.hold else "discarded" if message.discard else "delivered"
    assert outcome == case.outcome
    for expected in case.expected("recipients"):
        delivered = [message.redirect] if message.redirect else [r.address for r in message.recipients]
        assert sorted(delivered) == expected.split()
    lines = message.content.decode().split("\r\n")
    for expected in case.expected("has"):
        assert expected in lines
    for unexpected in case.expected("lacks"):
        assert not any(unexpected in line for line in lines)
    for expected in case.expected("log"):
        head, _, text = expected.replace("SINKPORT", str(SINK_PORT)).partition(" || ")
        matches = [line for line in log if line.startswith(f"4ABC: {head} from localhost[127.0.0.1]; "
                                                           f"from=<{case.sender}> to=<{RECIPIENT}> proto=ESMTP "
                                                           "helo=<client.test>")]
        assert len(matches) == 1, log
        assert matches[0].endswith(f": {text}" if text else ">"), matches[0]


def test_the_golden_cases_log_rejects_too(tables):
    """A refused case's reject line: logged before the refusal, as Postfix's cleanup does."""
    case = next(case for case in CASES if case.name == "reject-default")
    _, _, log = run(case, tables)
    assert log == ["4ABC: reject: header Subject: reject default please from localhost[127.0.0.1]; "
                   "from=<case-reject-default@sender.test> to=<rcpt@dest.test> proto=ESMTP helo=<client.test>: "
                   "5.7.1 message content rejected"]


def test_an_unknown_action_is_warned_about_and_ignored(tables):
    case = next(case for case in CASES if case.name == "unknown-action")
    _, _, log = run(case, tables)
    assert "warning: unknown command in header_checks map: BOGUS action" in log
