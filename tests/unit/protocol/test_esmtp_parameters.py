"""MAIL FROM / RCPT TO parameters on their own, without a session: what is
read, what is refused with which reply, and what an extension switched off
turns into (an unknown keyword, 555)."""

from __future__ import annotations

import pytest

from mailferry.protocol import replies
from mailferry.protocol.esmtp_parameters import (
    LARGEST_SIZE, MailParameters, RcptParameters, mail_parameters, rcpt_parameters,
)
from mailferry.protocol.replies import ReplyError

OFFERED = {"smtputf8": True, "dsn": True, "size_limit": 1000}


def refusal(call, *args, **kwargs):
    with pytest.raises(ReplyError) as raised:
        call(*args, **kwargs)
    return raised.value.reply


def test_every_mail_parameter_is_read():
    params = mail_parameters("SIZE=999 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=a+2Bb AUTH=<>",
                             **OFFERED)
    assert params == MailParameters(size=999, body="8BITMIME", smtputf8=True, ret="HDRS",
                                    envid="a+b", auth="<>")


def test_no_parameters_is_the_default_record():
    assert mail_parameters("", **OFFERED) == MailParameters()
    assert rcpt_parameters("", dsn=True) == RcptParameters()


@pytest.mark.parametrize("text, expected", [
    ("SIZE=1001", replies.SIZE_EXCEEDS_LIMIT),
    (f"SIZE={LARGEST_SIZE + 1}", replies.SIZE_EXCEEDS_FILE_SYSTEM),
    ("SIZE=12k", replies.BAD_SIZE_SYNTAX),
    ("RET=ALL", replies.BAD_RET_SYNTAX),
    ("RET=FULL RET=HDRS", replies.BAD_RET_SYNTAX),
    ("ENVID=a+ZZ", replies.BAD_ENVID_SYNTAX),
    ("BODY=BINARYMIME", replies.unsupported_option("BODY=BINARYMIME")),
    ("SMTPUTF8=yes", replies.unsupported_option("SMTPUTF8=yes")),
])
def test_mail_parameter_refusals(text, expected):
    assert refusal(mail_parameters, text, **OFFERED) == expected


def test_size_limit_zero_means_no_limit():
    assert mail_parameters("SIZE=123456789", smtputf8=True, dsn=True, size_limit=0).size == 123456789


def test_an_extension_that_is_not_offered_makes_its_keywords_unknown():
    off = {"smtputf8": False, "dsn": False, "size_limit": 0}
    assert refusal(mail_parameters, "SMTPUTF8", **off) == replies.unsupported_option("SMTPUTF8")
    assert refusal(mail_parameters, "RET=FULL", **off) == replies.unsupported_option("RET=FULL")
    assert refusal(rcpt_parameters, "NOTIFY=NEVER", dsn=False) == replies.unsupported_option("NOTIFY=NEVER")


def test_rcpt_parameters_are_read():
    params = rcpt_parameters("notify=success,delay ORCPT=rfc822;bob+2Bx@example.com", dsn=True)
    assert params == RcptParameters(notify="SUCCESS,DELAY", orcpt="rfc822;bob+x@example.com")


@pytest.mark.parametrize("text, expected", [
    ("NOTIFY=NEVER,SUCCESS", replies.BAD_NOTIFY_SYNTAX),
    ("NOTIFY=", replies.BAD_NOTIFY_SYNTAX),
    ("NOTIFY=NEVER NOTIFY=NEVER", replies.BAD_NOTIFY_SYNTAX),
    ("ORCPT=bob@example.com", replies.BAD_ORCPT_SYNTAX),
    ("ORCPT=rfc822;bob+ZZ", replies.BAD_ORCPT_SYNTAX),
    ("ORCPT=rfc_822;bob", replies.BAD_ORCPT_SYNTAX),
    ("ORCPT=rfc822;a ORCPT=rfc822;b", replies.BAD_ORCPT_SYNTAX),
    ("FOO=bar", replies.unsupported_option("FOO=bar")),
])
def test_rcpt_parameter_refusals(text, expected):
    assert refusal(rcpt_parameters, text, dsn=True) == expected
