"""Password hashes against real `doveadm pw` (Debian's dovecot-core), both ways."""

from __future__ import annotations

import subprocess

import pytest

from mailferry.auth import passwords
from tests.peers import require_tool

SECRET = "sécret pass phrase that is longer than sixty-four bytes, to cross SHA-512's block"


def doveadm_pw(*args: str) -> str:
    out = subprocess.run([require_tool("doveadm"), "pw", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def dovecot_hashes() -> dict[str, str]:
    return {scheme: doveadm_pw("-s", scheme, "-p", SECRET) for scheme in passwords.SCHEMES}


@pytest.mark.parametrize("scheme", passwords.SCHEMES)
def test_hashes_made_by_doveadm_verify(dovecot_hashes, scheme):
    stored = dovecot_hashes[scheme]
    assert stored.startswith("{" + scheme + "}")
    assert passwords.verify(SECRET, stored)
    assert not passwords.verify("S" + SECRET[1:], stored)
    assert not passwords.verify("", stored)


@pytest.mark.parametrize("scheme", passwords.SCHEMES)
def test_our_hashes_verify_in_doveadm(scheme):
    stored = passwords.make(SECRET, scheme)
    assert stored.startswith("{" + scheme + "}")
    assert doveadm_pw("-t", stored, "-p", SECRET).endswith("(verified)")
    assert passwords.verify(SECRET, stored)


def test_sha512_crypt_with_rounds_from_doveadm():
    stored = doveadm_pw("-s", "SHA512-CRYPT", "-r", "7000", "-p", "pw")
    assert "$rounds=7000$" in stored
    assert passwords.verify("pw", stored) and not passwords.verify("pW", stored)


@pytest.mark.parametrize("stored", ["secret", "{MD5}abc", "{SHA512-CRYPT}$1$x$y", "{ARGON2ID}$argon2i$v=19$x",
                                    "{BLF-CRYPT}$2y$05$short",
                                    "{BLF-CRYPT}$2y$05$" + "!" * 53])
def test_unreadable_hashes_are_errors_not_mismatches(stored):
    with pytest.raises(passwords.HashFormatError):
        passwords.verify("pw", stored)


def test_salts_differ():
    assert passwords.make("pw", "SHA512-CRYPT") != passwords.make("pw", "SHA512-CRYPT")
