"""The golden rewriting cases (tests/golden/rewriting/cases.py) through
mailferry's cleanup: canonical maps, masquerading, append_dot_mydomain and
header rewriting. tests/integration/test_rewriting_postfix.py checks that the
real Postfix gives these same expectations."""

import asyncio
import email
import email.policy

import pytest

from mailferry.cleanup.rewrite import AddressRewriter
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import NewMessage, Recipient
from tests.golden.rewriting.cases import CASES, COMMON, VIRTUAL_CASES


def rewritten(case, tmp_path):
    settings = {**COMMON, "mydestination": "", "inet_interfaces": "loopback-only", **case.settings}
    text = "".join(f"{name} = {value}\n" for name, value in settings.items())
    rewriter = AddressRewriter.from_config(Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf"))))
    content = ("".join(f"{name}: {value}\r\n" for name, value in case.headers)
               + "Subject: golden\r\n\r\nbody\r\n").encode()
    message = NewMessage(sender=case.sender, recipients=[Recipient(r) for r in case.recipients], content=content)
    asyncio.run(rewriter.rewrite(message, True, lambda text: None))
    return message


@pytest.mark.parametrize("case", CASES + VIRTUAL_CASES, ids=[case.name for case in CASES + VIRTUAL_CASES])
def test_mailferry_rewrites_as_postfix_does(case, tmp_path):
    message = rewritten(case, tmp_path)
    assert message.sender == case.expected_sender
    assert sorted(r.address for r in message.recipients) == sorted(case.expected_recipients)
    parsed = email.message_from_bytes(message.content, policy=email.policy.compat32)
    assert [(name, " ".join(str(parsed[name]).split())) for name, _ in case.expected_headers] == \
        case.expected_headers
    assert message.content.endswith(b"Subject: golden\r\n\r\nbody\r\n")


def test_a_remote_clients_headers_are_left_alone(tmp_path):
    # Postfix rewrites headers only for local_header_rewrite_clients (or with
    # remote_header_rewrite_domain, which mailferry does not have yet).
    case = CASES[0]
    settings = {**COMMON, **case.settings}
    text = "".join(f"{name} = {value}\n" for name, value in settings.items())
    rewriter = AddressRewriter.from_config(Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf"))))
    content = b"From: Alice <alice@example.test>\r\n\r\nbody\r\n"
    message = NewMessage(sender=case.sender, recipients=[Recipient("bob@remote.test")], content=content)
    asyncio.run(rewriter.rewrite(message, False, lambda text: None))
    assert message.sender == "Alice.Smith@example.test" and message.content == content
