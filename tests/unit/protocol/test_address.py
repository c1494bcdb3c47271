from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from mailferry.protocol.address import (
    NULL_PATH, RECIPIENT, SENDER, AddressError, Path, parse_path, quote_local_part, split_path,
    unquote_local_part,
)


def parse(text: str, *, role: str = SENDER, smtputf8: bool = False, strict: bool = False) -> Path:
    return parse_path(text, allow_smtputf8=smtputf8, role=role, strict=strict)


def refused(text: str, **options) -> AddressError:
    with pytest.raises(AddressError) as caught:
        parse(text, **options)
    return caught.value


# --- What is accepted, and how it is read -------------------------------------------------------

@pytest.mark.parametrize("text, local, domain", [
    ("<user@example.com>", "user", "example.com"),
    ("<User.Name+tag@Example.COM>", "User.Name+tag", "Example.COM"),
    ('<"john smith"@example.com>', '"john smith"', "example.com"),
    ('<"a\\"b"@example.com>', '"a\\"b"', "example.com"),
    ('<""@example.com>', '""', "example.com"),
    ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
    ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
    ("<user@[ipv6:::ffff:192.0.2.1]>", "user", "[ipv6:::ffff:192.0.2.1]"),
    ("<user@123.example>", "user", "123.example"),
    ("<user@ex--ample.com>", "user", "ex--ample.com"),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", "!#$%&'*+-/=?^_`{|}~", "example.com"),
    # Postfix's default leniency.
    ("user@example.com", "user", "example.com"),
    ('"john smith"@example.com', '"john smith"', "example.com"),
    ("<first..last.@example.com>", "first..last.", "example.com"),
    ("<.lead@example.com>", ".lead", "example.com"),
    ("<user@under_score.example>", "user", "under_score.example"),
    ("<user@example.com.>", "user", "example.com"),
    ("<unqualified>", "unqualified", ""),
    ("<" + "l" * 100 + "@example.com>", "l" * 100, "example.com"),
])
def test_accepted(text, local, domain):
    path = parse(text)
    assert (path.local, path.domain) == (local, domain)
    assert not path.had_source_route


def test_address_is_local_at_domain_with_quotes_kept():
    assert parse('<"john smith"@example.com>').address == '"john smith"@example.com'
    assert parse("<postmaster>", role=RECIPIENT).address == "postmaster"
    assert parse("<a@example.com>").bracketed() == "<a@example.com>"


def test_null_path_is_for_senders_only():
    assert parse("<>") is NULL_PATH
    assert NULL_PATH.is_null and NULL_PATH.address == "" and NULL_PATH.bracketed() == "<>"
    error = refused("<>", role=RECIPIENT)
    assert (error.code, error.enhanced, error.text) == (501, "5.1.3", "Bad recipient address syntax")


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>"])
def test_postmaster_needs_no_domain_even_when_strict(text):
    path = parse(text, role=RECIPIENT, strict=True)
    assert path.is_postmaster and path.domain == ""


def test_errors_carry_postfix_replies():
    sender = refused("<a b@example.com>")
    assert (sender.code, sender.enhanced, sender.text) == (501, "5.1.7", "Bad sender address syntax")
    assert sender.reply.code == 501
    recipient = refused("<a b@example.com>", role=RECIPIENT)
    assert (recipient.code, recipient.enhanced) == (501, "5.1.3")


# --- Source routes and routing operators --------------------------------------------------------

@pytest.mark.parametrize("text, mailbox", [
    ("<@a.example:user@c.example>", "user@c.example"),
    ("<@a.example,@b.example:user@c.example>", "user@c.example"),
    ("<@[IPv6:::1],@[192.0.2.1]:user@c.example>", "user@c.example"),
    ('<@a.example:"x:y"@c.example>', '"x:y"@c.example'),
])
def test_source_route_is_dropped_and_remembered(text, mailbox):
    path = parse(text)
    assert path.address == mailbox
    assert path.had_source_route and path.is_routed


@pytest.mark.parametrize("text", [
    "<@:user@c.example>", "<@a.example,b.example:user@c.example>", "<@a.example:>",
    "<@a.example>", "<@-bad.example:user@c.example>", "<@a.example,:user@c.example>",
    # found by the atheris target: the mailbox left after the route would read back as a route
    "<@a.example:@b@c.example>",
])
def test_broken_source_routes(text):
    refused(text)


@pytest.mark.parametrize("text, routed", [
    ("<user@example.com>", False),
    ("<user%other.example@example.com>", True),
    ("<other.example!user@example.com>", True),
    ("<user@other.example@example.com>", True),
    ('<"user%other.example"@example.com>', True),      # quoting does not hide it
    ('<"user@other"@example.com>', True),
    ('<"plain"@example.com>', False),
])
def test_routing_operators(text, routed):
    assert parse(text).is_routed is routed


def test_unquoting():
    assert unquote_local_part('"a\\"b\\\\c"') == 'a"b\\c'
    assert unquote_local_part("plain") == "plain"
    assert parse('<"john smith"@example.com>').local_unquoted == "john smith"


# --- What is refused ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "", "<", "<a@example.com", "a@example.com>", "<<a@example.com>>", "<a@example.com>>",
    "<a b@example.com>", "<a(comment)@example.com>", "<a\\b@example.com>", "<@example.com>",
    '<"unterminated@example.com>', '<"a"b@example.com>', '<a"b"@example.com>', "<a@>",
    "<a@-bad.example>", "<a@bad-.example>", "<a@example..com>", "<a@.example>",
    "<a@exa mple.com>", "<a@1.2.3.4>", "<a@123>", "<a@[999.0.0.1]>", "<a@[1.2.3]>", "<a@[]>",
    "<a@[IPv6:zz]>", "<a@[tag:foo]>", "<a@[IPv6:::1]x>", "<a@" + "l" * 64 + ".example>",
    "<a@" + ".".join(["d" * 60] * 5) + ">", "<a@exa$mple.com>", "<a\t@example.com>",
    "<a\x00@example.com>", '<"a\x01"@example.com>',
])
def test_refused(text):
    refused(text)
    refused(text, role=RECIPIENT)


def test_long_domain_up_to_255_octets():
    domain = ".".join(["d" * 60] * 4)
    assert parse(f"<a@{domain}>").domain == domain


# --- Strict mode: RFC 5321 to the letter --------------------------------------------------------

@pytest.mark.parametrize("text", [
    "a@example.com", "<first..last@example.com>", "<.a@example.com>", "<a.@example.com>",
    "<unqualified>", "<a@b@example.com>", "<a@under_score.example>", "<a@example.com.>",
    "<" + "l" * 65 + "@example.com>", "<" + "l" * 64 + "@" + ".".join(["d" * 60] * 4) + ">",
])
def test_strict_refuses_what_lenient_takes(text):
    parse(text)
    refused(text, strict=True)


def test_strict_accepts_rfc_5321_paths():
    assert parse("<" + "l" * 64 + "@example.com>", strict=True).local == "l" * 64
    assert parse('<"a..b"@example.com>', strict=True).local == '"a..b"'
    assert parse("<@a.example:u@b.example>", strict=True).had_source_route


# --- SMTPUTF8 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["<jürgen@example.com>", "<a@exämple.com>", '<"zoë"@example.com>'])
def test_utf8_needs_smtputf8(text):
    refused(text)
    assert parse(text, smtputf8=True)


def test_utf8_must_be_valid():
    # Command lines are decoded with surrogateescape: bad bytes become surrogates.
    bad = b"<\xff@example.com>".decode("utf-8", "surrogateescape")
    refused(bad, smtputf8=True)


def test_utf8_label_length_counts_octets():
    refused("<a@" + "ä" * 32 + ".example>", smtputf8=True)    # 64 octets
    assert parse("<a@" + "ä" * 31 + ".example>", smtputf8=True)


# --- Splitting a command argument ---------------------------------------------------------------

@pytest.mark.parametrize("argument, path, params", [
    ("<a@b.example>", "<a@b.example>", ""),
    ("<a@b.example> SIZE=10 BODY=8BITMIME", "<a@b.example>", "SIZE=10 BODY=8BITMIME"),
    ("  <a@b.example>   SIZE=10  ", "<a@b.example>", "SIZE=10"),
    ("a@b.example SIZE=10", "a@b.example", "SIZE=10"),
    ('"a b"@c.example SIZE=10', '"a b"@c.example', "SIZE=10"),
    ('<"a> b"@c.example> SIZE=10', '<"a> b"@c.example>', "SIZE=10"),
    ("<a@b.example>SIZE=10 X", "<a@b.example>SIZE=10", "X"),
    ("<>", "<>", ""),
    ("", "", ""),
])
def test_split_path(argument, path, params):
    assert split_path(argument) == (path, params)


# --- Round trip ---------------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted_content = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
local_parts = st.one_of(dot_strings, quoted_content)
labels = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?", fullmatch=True)
domains = st.tuples(st.lists(labels, min_size=0, max_size=3),
                    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}[A-Za-z0-9]", fullmatch=True)) \
    .map(lambda parts: ".".join([*parts[0], parts[1]]))


@given(local_parts, domains)
def test_round_trip(local, domain):
    text = f"<{quote_local_part(local)}@{domain}>"
    path = parse(text, role=RECIPIENT)
    assert path.local_unquoted == local
    assert path.domain == domain
    assert path.bracketed() == text
    assert parse(path.bracketed(), role=RECIPIENT) == path
    assert path.is_routed == any(char in local for char in "%!@")


@given(dot_strings, domains)
def test_round_trip_strict(local, domain):
    text = f"<{local}@{domain}>"
    path = parse(text, strict=True)
    assert (path.local, path.domain) == (local, domain)


def test_a_numeric_domain_is_accepted_only_with_resolve_numeric_domain():
    from mailferry.protocol.address import RECIPIENT, AddressError, parse_path
    with pytest.raises(AddressError):
        parse_path("<u@192.0.2.1>", allow_smtputf8=False, role=RECIPIENT)
    assert parse_path("<u@192.0.2.1>", allow_smtputf8=False, role=RECIPIENT, numeric_domain=True).address == \
        "u@192.0.2.1"
    with pytest.raises(AddressError):   # not an address: still a bad domain
        parse_path("<u@192.0.2.300>", allow_smtputf8=False, role=RECIPIENT, numeric_domain=True)
