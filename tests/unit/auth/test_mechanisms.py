"""PLAIN (RFC 4616) and LOGIN, server side, sans-IO."""

from __future__ import annotations

import base64

import pytest

from mailferry.auth.mechanisms import LOGIN, PLAIN, Challenge, Credentials, Exchange, Malformed


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_plain_with_initial_response():
    assert Exchange(PLAIN).start(b64("\0user1\0secret")) == Credentials("", "user1", "secret")


def test_plain_with_authzid():
    assert Exchange(PLAIN).start(b64("admin\0user1\0secret")) == Credentials("admin", "user1", "secret")


def test_plain_without_initial_response_asks_with_an_empty_challenge():
    exchange = Exchange(PLAIN)
    assert exchange.start(None) == Challenge("")
    assert exchange.next(b64("\0user1\0pw")) == Credentials("", "user1", "pw")


def test_plain_with_equals_sign_is_an_empty_initial_response():
    # "AUTH PLAIN =": the core hands over "", which is no valid PLAIN response.
    assert isinstance(Exchange(PLAIN).start(""), Malformed)


@pytest.mark.parametrize("response", ["not base64!", b64("user1\0secret"), b64("\0\0secret"),
                                      base64.b64encode(b"\0\xff\0pw").decode()])
def test_plain_malformed_responses(response):
    step = Exchange(PLAIN).start(response)
    assert isinstance(step, Malformed)


def test_login_asks_username_then_password():
    exchange = Exchange(LOGIN)
    assert exchange.start(None) == Challenge(b64("Username:"))
    assert exchange.next(b64("user1")) == Challenge(b64("Password:"))
    assert exchange.next(b64("secret")) == Credentials("", "user1", "secret")


def test_login_with_the_username_as_initial_response():
    exchange = Exchange(LOGIN)
    assert exchange.start(b64("user1")) == Challenge(b64("Password:"))
    assert exchange.next(b64("pw")) == Credentials("", "user1", "pw")
    assert exchange.username_seen == "user1"


def test_login_refuses_bad_base64():
    exchange = Exchange(LOGIN)
    exchange.start(None)
    assert isinstance(exchange.next("%%%"), Malformed)


def test_credentials_never_show_the_password():
    credentials = Credentials("", "user1", "hunter2")
    assert "hunter2" not in repr(credentials) and "hunter2" not in str(credentials)


def test_plain_response_round_trips():
    credentials = Credentials("a", "user1", "pw")
    assert Exchange(PLAIN).start(credentials.plain_response()) == credentials
