"""The SASL mechanisms mailferry's SMTP server speaks, sans-IO: PLAIN (RFC 4616) and LOGIN.

An exchange is fed the AUTH command's initial response, then each line the client sends
after a 334; each step answers with a challenge (`Challenge`), the credentials to verify
(`Credentials`), or why the exchange failed (`Malformed`, a 535 in Postfix's words).
What verifies the credentials is a backend's business (dovecot.py, table.py, ldap_bind.py).

PLAIN and LOGIN are both "plaintext" mechanisms in SASL's security options (noplaintext
hides them); neither is anonymous, active-attack-proof, dictionary-proof or mutual.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

PLAIN = "PLAIN"
LOGIN = "LOGIN"
MECHANISMS = (PLAIN, LOGIN)
# SASL security properties each mechanism lacks (Dovecot's and Cyrus's flags for them).
PLAINTEXT_MECHANISMS = frozenset(MECHANISMS)

# The LOGIN challenges every client expects, base64 of "Username:" and "Password:".
_USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str           # base64, "" for an empty challenge


@dataclass(frozen=True, slots=True)
class Credentials:
    authzid: str        # the identity to act as; "" for "the same as username"
    username: str       # the authentication identity
    password: str = ""

    def __repr__(self) -> str:     # never a password in a traceback or a log
        return f"Credentials(authzid={self.authzid!r}, username={self.username!r}, password=<hidden>)"

    def plain_response(self) -> str:
        """The same credentials as a PLAIN response (base64), e.g. for Dovecot's auth server."""
        raw = "\0".join((self.authzid, self.username, self.password)).encode("utf-8")
        return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Malformed:
    reason: str


Step = Challenge | Credentials | Malformed


class Exchange:
    """One AUTH exchange. `start(initial)` with the initial response (None when the client
    sent none, "" for `=`), then `next(line)` for each line the client sends after 334."""

    def __init__(self, mechanism: str):
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None
        self.username_seen = ""     # for the log of a failure: who tried

    def start(self, initial: str | None) -> Step:
        if self.mechanism == PLAIN:
            return Challenge("") if initial is None else self._plain(initial)
        if initial is None or initial == "":
            return Challenge(_USERNAME_PROMPT)
        return self._login_username(initial)

    def next(self, line: str) -> Step:
        if self.mechanism == PLAIN:
            return self._plain(line)
        if self._username is None:
            return self._login_username(line)
        decoded = _decode(line)
        if decoded is None:
            return Malformed("Invalid base64 data in continued response")
        return Credentials("", self._username, decoded)

    def _plain(self, response: str) -> Step:
        decoded = _decode(response)
        if decoded is None:
            return Malformed("Invalid base64 data in initial response")
        parts = decoded.split("\0")
        if len(parts) != 3:
            return Malformed("invalid PLAIN response: expected authzid NUL username NUL password")
        authzid, username, password = parts
        self.username_seen = username
        if not username:
            return Malformed("invalid PLAIN response: no username")
        return Credentials(authzid, username, password)

    def _login_username(self, response: str) -> Step:
        decoded = _decode(response)
        if decoded is None:
            return Malformed("Invalid base64 data in initial response")
        if not decoded or "\0" in decoded:
            return Malformed("invalid LOGIN username")
        self._username = self.username_seen = decoded
        return Challenge(_PASSWORD_PROMPT)


def _decode(text: str) -> str | None:
    """Strict base64 to UTF-8 text; None when it is not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
