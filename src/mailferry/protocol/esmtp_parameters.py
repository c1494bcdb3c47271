"""The ESMTP parameters of MAIL FROM and RCPT TO, read as Postfix reads them.

MAIL: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET and ENVID
(RFC 3461), AUTH= (RFC 4954). RCPT: NOTIFY and ORCPT (RFC 3461). A keyword
whose extension is off (dsn, smtputf8) is an unknown keyword. Each refusal
is raised as a ReplyError carrying Postfix's reply; a new parameter is one
more branch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailferry.protocol import replies
from mailferry.protocol.replies import ReplyError

# The largest count SIZE= or BDAT may state (Postfix's off_t).
LARGEST_SIZE = 2 ** 63 - 1

_XTEXT = re.compile(r"(?:[!-*,-~]|\+[0-9A-Fa-f]{2})*")
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9-]+")


@dataclass(frozen=True, slots=True)
class MailParameters:
    size: int | None = None       # SIZE=, as declared
    body: str | None = None       # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None        # DSN RET: "FULL" or "HDRS"
    envid: str | None = None      # DSN ENVID, xtext-decoded
    auth: str | None = None       # AUTH=, xtext-decoded ("<>" for none); None if absent or unreadable


@dataclass(frozen=True, slots=True)
class RcptParameters:
    notify: str | None = None     # "NEVER", or e.g. "SUCCESS,FAILURE" (upper case)
    orcpt: str | None = None      # "rfc822;user@example.com", the address xtext-decoded


def mail_parameters(text: str, *, smtputf8: bool, dsn: bool, size_limit: int) -> MailParameters:
    """The parameters after MAIL FROM:<path>. `smtputf8` and `dsn`: whether
    those extensions are offered; `size_limit`: message_size_limit (0 = none)."""
    fields: dict[str, object] = {}
    for word in text.split():
        keyword, equals, value = word.partition("=")
        keyword = keyword.upper()
        if keyword == "SIZE" and equals:
            fields["size"] = declared_size(value, size_limit)
        elif keyword == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
            fields["body"] = value.upper()
        elif keyword == "SMTPUTF8" and not equals and smtputf8:
            fields["smtputf8"] = True
        elif keyword == "RET" and equals and dsn:
            if "ret" in fields or value.upper() not in ("FULL", "HDRS"):
                raise ReplyError(replies.BAD_RET_SYNTAX)
            fields["ret"] = value.upper()
        elif keyword == "ENVID" and equals and dsn:
            envid = decode_xtext(value)
            if "envid" in fields or not envid or not envid.isprintable():
                raise ReplyError(replies.BAD_ENVID_SYNTAX)
            fields["envid"] = envid
        elif keyword == "AUTH" and equals:
            # RFC 4954 5: a server that does not trust it simply ignores it.
            fields["auth"] = decode_xtext(value)
        else:
            raise ReplyError(replies.unsupported_option(word))
    return MailParameters(**fields)


def declared_size(value: str, size_limit: int) -> int:
    if not value.isascii() or not value.isdigit():
        raise ReplyError(replies.BAD_SIZE_SYNTAX)
    size = int(value)
    if size > LARGEST_SIZE:
        raise ReplyError(replies.SIZE_EXCEEDS_FILE_SYSTEM)
    if size_limit and size > size_limit:
        raise ReplyError(replies.SIZE_EXCEEDS_LIMIT)
    return size


def rcpt_parameters(text: str, *, dsn: bool) -> RcptParameters:
    """The parameters after RCPT TO:<path>; `dsn`: whether DSN is offered."""
    fields: dict[str, str] = {}
    for word in text.split():
        keyword, equals, value = word.partition("=")
        keyword = keyword.upper()
        if keyword == "NOTIFY" and equals and dsn:
            if "notify" in fields:
                raise ReplyError(replies.BAD_NOTIFY_SYNTAX)
            fields["notify"] = _notify_value(value)
        elif keyword == "ORCPT" and equals and dsn:
            if "orcpt" in fields:
                raise ReplyError(replies.BAD_ORCPT_SYNTAX)
            fields["orcpt"] = _orcpt_value(value)
        else:
            raise ReplyError(replies.unsupported_option(word))
    return RcptParameters(**fields)


def decode_xtext(text: str) -> str | None:
    """RFC 3461 xtext -> text; None if malformed. Lower-case hex and a bare
    "=" are let through, as Postfix lets them through (SRS addresses in ORCPT
    are often sent unencoded)."""
    if not _XTEXT.fullmatch(text):
        return None
    return _XTEXT_HEX.sub(lambda match: chr(int(match.group(1), 16)), text)


def _notify_value(value: str) -> str:
    words = value.upper().split(",")
    if words == ["NEVER"] or (value and all(word in _NOTIFY_WORDS for word in words)):
        return ",".join(words)
    raise ReplyError(replies.BAD_NOTIFY_SYNTAX)


def _orcpt_value(value: str) -> str:
    address_type, semicolon, xtext = value.partition(";")
    address = decode_xtext(xtext)
    if not semicolon or not _ADDRESS_TYPE.fullmatch(address_type) or address is None:
        raise ReplyError(replies.BAD_ORCPT_SYNTAX)
    return f"{address_type};{address}"
