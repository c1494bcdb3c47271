"""Addresses in From:/To:-style header values (protocol/header_addresses.py),
found as Postfix's tok822 finds them: the address in `<...>`, or a bare
addr-spec; not a display name, a comment, a group's name or a quoted string."""

import asyncio

import pytest

from mailferry.protocol.header_addresses import address_spans, rewrite_address_headers


def found(value):
    return [value[start:stop] for start, stop in address_spans(value)]


@pytest.mark.parametrize("value, addresses", [
    (" alice@example.com", ["alice@example.com"]),
    (" Alice <alice@example.com>", ["alice@example.com"]),
    (' "Smith, Alice" <alice@example.com>, bob@example.org', ["alice@example.com", "bob@example.org"]),
    (" bob@example.org (Bob Jones)", ["bob@example.org"]),
    (" friends: a@x.example, b@y.example;", ["a@x.example", "b@y.example"]),
    (" undisclosed-recipients:;", []),
    (' "not@an.address" <real@example.com>', ["real@example.com"]),
    (" (comment, with comma) carol@example.net", ["carol@example.net"]),
    (" <>", [""]),
])
def test_the_addresses_are_found(value, addresses):
    assert found(value) == addresses


def rewrite_all(content, mapping):
    async def rewrite(address, kind):
        return mapping.get((address, kind), address)
    return asyncio.run(rewrite_address_headers(content, rewrite))


def test_sender_and_recipient_headers_are_rewritten_and_the_rest_left_byte_for_byte():
    content = (b"From: Alice <alice@a.example>\r\nTo: bob@b.example,\r\n\tcarol@c.example\r\n"
               b"Subject: alice@a.example\r\nX-Other: bob@b.example\r\n\r\nFrom: alice@a.example\r\n")
    out = rewrite_all(content, {("alice@a.example", "sender"): "A@new.example",
                                ("carol@c.example", "recipient"): "C@new.example"})
    assert out == (b"From: Alice <A@new.example>\r\nTo: bob@b.example,\r\n\tC@new.example\r\n"
                   b"Subject: alice@a.example\r\nX-Other: bob@b.example\r\n\r\nFrom: alice@a.example\r\n")


def test_a_message_without_a_header_end_is_left_alone():
    assert rewrite_all(b"From: a@x.example", {("a@x.example", "sender"): "b@x.example"}) == b"From: a@x.example"


def test_an_empty_address_is_never_handed_to_the_rewriter():
    asked = []

    async def rewrite(address, kind):
        asked.append(address)
        return "x@y.example"
    assert asyncio.run(rewrite_address_headers(b"Errors-To: <>\r\n\r\n", rewrite)) == b"Errors-To: <>\r\n\r\n"
    assert asked == []
