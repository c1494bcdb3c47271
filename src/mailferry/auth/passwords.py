"""Password hashes in the formats `doveadm pw -s SCHEME` writes, for the built-in backend.

    {SHA512-CRYPT}$6$salt$hash              glibc's SHA-512 crypt (rounds=N$ allowed)
    {BLF-CRYPT}$2y$05$...                   bcrypt (the `bcrypt` package)
    {ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$salt$hash   (the `argon2-cffi` package)

SHA-512 crypt is written out here (Ulrich Drepper's published algorithm): Python's `crypt`
module is deprecated and gone in 3.13. Verification is CPU-bound (ARGON2ID takes tens of
milliseconds by design): the daemon runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import bcrypt
from argon2 import PasswordHasher, exceptions

SCHEMES = ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT")
DEFAULT_SCHEME = "ARGON2ID"

_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA512_DEFAULT_ROUNDS = 5000
_SHA512_MIN_ROUNDS, _SHA512_MAX_ROUNDS = 1000, 999_999_999


class HashFormatError(ValueError):
    """A stored hash mailferry cannot read: an unknown {SCHEME} or a damaged value."""


def split_scheme(stored: str) -> tuple[str, str]:
    """`{SCHEME}rest` -> ("SCHEME", "rest")."""
    if not stored.startswith("{") or "}" not in stored:
        raise HashFormatError("the hash does not start with {SCHEME}, as `mailferry pw` writes it")
    scheme, _, rest = stored[1:].partition("}")
    return scheme.upper(), rest


def verify(password: str, stored: str) -> bool:
    """Does `password` match `stored` ({SCHEME}hash)? HashFormatError when it cannot be read."""
    scheme, rest = split_scheme(stored)
    secret = password.encode("utf-8")
    if scheme == "SHA512-CRYPT":
        return _verify_sha512_crypt(secret, rest)
    if scheme == "BLF-CRYPT":
        return _verify_bcrypt(secret, rest)
    if scheme == "ARGON2ID":
        return _verify_argon2id(secret, rest)
    raise HashFormatError(f"unknown password scheme {{{scheme}}}: use one of "
                          + ", ".join("{" + name + "}" for name in SCHEMES))


def make(password: str, scheme: str = DEFAULT_SCHEME) -> str:
    """A new `{SCHEME}hash` of `password`, with a fresh salt and doveadm's default costs."""
    scheme = scheme.upper()
    secret = password.encode("utf-8")
    if scheme == "SHA512-CRYPT":
        salt = "".join(secrets.choice(_CRYPT_ALPHABET) for _ in range(16))
        return "{SHA512-CRYPT}" + sha512_crypt(secret, salt)
    if scheme == "BLF-CRYPT":
        # $2y$ as doveadm writes it: the same algorithm as $2b$, which is all `bcrypt` will generate.
        hashed = bcrypt.hashpw(secret, bcrypt.gensalt(5)).decode("ascii")
        return "{BLF-CRYPT}$2y$" + hashed[len("$2b$"):]
    if scheme == "ARGON2ID":
        # doveadm pw's defaults: m=65536 KiB, t=3, p=1.
        return "{ARGON2ID}" + PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1).hash(secret)
    raise HashFormatError(f"unknown password scheme {scheme!r}: use one of {', '.join(SCHEMES)}")


# --- the schemes ---------------------------------------------------------------------------------

# bcrypt panics (a BaseException from Rust) on a malformed hash: check the shape first.
_BCRYPT_SHAPE = re.compile(r"\$2[abxy]\$[0-3][0-9]\$[./A-Za-z0-9]{53}")


def _verify_bcrypt(secret: bytes, rest: str) -> bool:
    """bcrypt reads only the first 72 bytes of a password (in Dovecot too)."""
    if not _BCRYPT_SHAPE.fullmatch(rest):
        raise HashFormatError("a BLF-CRYPT hash is $2y$NN$ and 53 characters of salt and hash")
    try:
        return bcrypt.checkpw(secret, rest.encode("ascii"))
    except ValueError as error:
        raise HashFormatError(f"damaged BLF-CRYPT hash: {error}") from None


def _verify_argon2id(secret: bytes, rest: str) -> bool:
    if not rest.startswith("$argon2id$"):
        raise HashFormatError("an ARGON2ID hash starts with $argon2id$")
    try:
        return PasswordHasher().verify(rest, secret)
    except exceptions.VerifyMismatchError:
        return False
    except (exceptions.InvalidHashError, exceptions.VerificationError) as error:
        raise HashFormatError(f"damaged ARGON2ID hash: {error}") from None


def _verify_sha512_crypt(secret: bytes, rest: str) -> bool:
    if not rest.startswith("$6$"):
        raise HashFormatError("a SHA512-CRYPT hash starts with $6$")
    settings, _, _ = rest.rpartition("$")
    expected = sha512_crypt(secret, settings[3:])
    return hmac.compare_digest(expected.encode("ascii"), rest.encode("ascii"))


def sha512_crypt(secret: bytes, salt_spec: str) -> str:
    """glibc's `$6$` crypt. `salt_spec` is the salt, optionally after "rounds=N$"."""
    rounds, explicit = _SHA512_DEFAULT_ROUNDS, False
    if salt_spec.startswith("rounds="):
        number, _, salt_spec = salt_spec[len("rounds="):].partition("$")
        if not number.isdigit():
            raise HashFormatError("SHA512-CRYPT: rounds= is not a number")
        rounds = min(max(int(number), _SHA512_MIN_ROUNDS), _SHA512_MAX_ROUNDS)
        explicit = True
    salt = salt_spec.split("$", 1)[0][:16].encode("ascii")
    digest = _sha512_crypt_digest(secret, salt, rounds)
    prefix = f"$6$rounds={rounds}$" if explicit else "$6$"
    return prefix + salt.decode("ascii") + "$" + _crypt_base64(digest)


def _sha512_crypt_digest(secret: bytes, salt: bytes, rounds: int) -> bytes:
    length = len(secret)
    alternate = hashlib.sha512(secret + salt + secret).digest()
    context = hashlib.sha512(secret + salt)
    context.update(_repeat(alternate, length))
    bits = length
    while bits:
        context.update(alternate if bits & 1 else secret)
        bits >>= 1
    result = context.digest()
    p_bytes = _repeat(hashlib.sha512(secret * length).digest(), length)
    s_bytes = _repeat(hashlib.sha512(salt * (16 + result[0])).digest(), len(salt))
    for round_number in range(rounds):
        odd = round_number & 1
        context = hashlib.sha512(p_bytes if odd else result)
        if round_number % 3:
            context.update(s_bytes)
        if round_number % 7:
            context.update(p_bytes)
        context.update(result if odd else p_bytes)
        result = context.digest()
    return result


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _crypt_base64(digest: bytes) -> str:
    """The digest's bytes in the order SHA-512 crypt prints them, six bits a character."""
    out = []
    for index in range(21):
        group = (index, index + 21, index + 42)
        turn = index % 3
        first, second, third = group[turn:] + group[:turn]
        out.append(_b64_from_24bit(digest[first], digest[second], digest[third], 4))
    out.append(_b64_from_24bit(0, 0, digest[63], 2))
    return "".join(out)


def _b64_from_24bit(high: int, middle: int, low: int, count: int) -> str:
    word = (high << 16) | (middle << 8) | low
    chars = []
    for _ in range(count):
        chars.append(_CRYPT_ALPHABET[word & 0x3F])
        word >>= 6
    return "".join(chars)
