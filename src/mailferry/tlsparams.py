"""Postfix's TLS parameter vocabulary, in Python's `ssl` terms, for both sides.

Protocol lists (`>=TLSv1.2`, `!SSLv2, !SSLv3`), cipher grades (`high`,
`medium`, `low`, `export`, `null`, each an OpenSSL cipher string from
`tls_<grade>_cipherlist`) with exclusions, `tls_ssl_options`, the EECDH
grade and the TLS log level. smtpd, the SMTP/LMTP client and `check` read
the same functions, so a value that `check` passes is the one that works.

What Python's `ssl` cannot do is said here once (`LIMITS`), and `check`
and docs/tls.md repeat it:
- TLS 1.3 cipher suites cannot be chosen (no SSL_CTX_set_ciphersuites):
  grades and exclusions apply to TLS 1.2 and older only.
- Only one EECDH curve can be set (`strong`, `ultra`); `auto` keeps
  OpenSSL's own group list, whatever tls_eecdh_auto_curves says.
- No session lifetime can be set; sessions live in the process's memory.
"""

from __future__ import annotations

import re
import ssl
import warnings

# Postfix's separators for protocol and match lists: whitespace, commas, colons.
LIST_SEPARATORS = re.compile(r"[\s,:]+")

# --- protocol versions -----------------------------------------------------------------

# Postfix's protocol names in order, with their wire numbers; SSLv2 has no TLSVersion.
_PROTOCOLS = (
    ("SSLv2", 0x0002, ssl.TLSVersion.MINIMUM_SUPPORTED),
    ("SSLv3", 0x0300, ssl.TLSVersion.SSLv3),
    ("TLSv1", 0x0301, ssl.TLSVersion.TLSv1),
    ("TLSv1.1", 0x0302, ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", 0x0303, ssl.TLSVersion.TLSv1_2),
    ("TLSv1.3", 0x0304, ssl.TLSVersion.TLSv1_3),
)
_BY_NAME = {name.lower(): index for index, (name, _, _) in enumerate(_PROTOCOLS)}
_BY_NUMBER = {number: index for index, (_, number, _) in enumerate(_PROTOCOLS)}
_HEX = re.compile(r"(?:0x)?([0-9a-f]{1,4})", re.IGNORECASE)
_NAMES = ", ".join(name for name, _, _ in _PROTOCOLS)


def protocol_bounds(text: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """(minimum, maximum) TLS version from a Postfix protocol list.

    Accepts ">=version" / "<=version" (names or hex such as 0x0303) and the older
    inclusion/exclusion lists ("!SSLv2, !SSLv3"). As with OpenSSL, an excluded version
    above the lowest enabled one also disables every version above it. An empty list
    allows everything this OpenSSL can do. Raises ValueError for the operator.
    """
    lower, upper = 0, len(_PROTOCOLS) - 1
    upper_given = False
    included: set[int] = set()
    excluded: set[int] = set()
    for item in (item for item in LIST_SEPARATORS.split(text) if item):
        if item.startswith(">="):
            lower = max(lower, _bound(item[2:], item, is_upper=False))
        elif item.startswith("<="):
            index = _bound(item[2:], item, is_upper=True)
            if index is not None:
                upper, upper_given = min(upper, index), True
        elif item.startswith("!"):
            excluded.add(_named(item[1:], item))
        else:
            included.add(_named(item, item))
    enabled = [index for index in range(lower, upper + 1)
               if (not included or index in included) and index not in excluded]
    if not enabled:
        raise ValueError(f"{text!r} leaves no TLS protocol version enabled")
    low = high = enabled[0]
    while high + 1 in enabled:
        high += 1
    newest = len(_PROTOCOLS) - 1
    minimum = _PROTOCOLS[low][2]
    open_ended = high == newest and not upper_given and not included
    maximum = ssl.TLSVersion.MAXIMUM_SUPPORTED if open_ended else _PROTOCOLS[high][2]
    return minimum, maximum


def _named(name: str, item: str) -> int:
    index = _BY_NAME.get(name.lower())
    if index is None:
        raise ValueError(f"unknown TLS protocol {item!r}: use {_NAMES}")
    return index


def _bound(version: str, item: str, *, is_upper: bool) -> int | None:
    """Index of a bound; None for an upper bound above every version known here (no limit)."""
    index = _BY_NAME.get(version.lower())
    if index is not None:
        return index
    hex_match = _HEX.fullmatch(version)
    if hex_match is None:
        raise ValueError(f"unknown TLS protocol version in {item!r}: use {_NAMES}, or a number such as 0x0303")
    number = int(hex_match.group(1), 16)
    if number in _BY_NUMBER:
        return _BY_NUMBER[number]
    if is_upper and number > _PROTOCOLS[-1][1]:
        return None
    raise ValueError(f"TLS protocol version {item!r} is unknown to this OpenSSL")


def set_versions(context: ssl.SSLContext, text: str) -> None:
    """Apply a protocol list to a context; ValueError as protocol_bounds."""
    minimum, maximum = protocol_bounds(text)
    # The operator asked for these versions (Postfix's default is ">=TLSv1"); the stdlib's
    # deprecation warning for TLS 1.0/1.1 would only repeat that choice on every start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum


# --- cipher grades ---------------------------------------------------------------------

CIPHER_GRADES = ("high", "medium", "low", "export", "null")
# Where each grade's OpenSSL cipher string is configured.
CIPHERLIST_PARAMETERS = {"high": "tls_high_cipherlist", "medium": "tls_medium_cipherlist",
                         "low": "tls_low_cipherlist", "export": "tls_export_cipherlist",
                         "null": "tls_null_cipherlist"}


def cipher_string(grade: str, exclusions: list[str], cipherlists: dict[str, str]) -> str:
    """The OpenSSL cipher string for a Postfix grade: `tls_<grade>_cipherlist`, then
    `:!name` for each exclusion, as Postfix builds it. `cipherlists` maps grade ->
    that parameter's value. ValueError names the grade to use instead."""
    grade = grade.strip().lower()
    if grade not in CIPHER_GRADES:
        raise ValueError(f"unknown cipher grade {grade!r}: use {', '.join(CIPHER_GRADES)}")
    text = cipherlists[grade].strip()
    for name in exclusions:
        text += f":!{name}"
    return text


def set_ciphers(context: ssl.SSLContext, text: str) -> None:
    """ValueError when OpenSSL selects no cipher from `text`."""
    try:
        context.set_ciphers(text)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL selects no TLS 1.2 cipher from {text!r}") from None


# --- tls_ssl_options -----------------------------------------------------------------------

# The names Postfix accepts (tls_ssl_options in postconf(5)), with OpenSSL 3's values where
# Python's ssl module has no constant for them.
SSL_OPTION_NAMES = {
    "ENABLE_MIDDLEBOX_COMPAT": ssl.OP_ENABLE_MIDDLEBOX_COMPAT,
    "LEGACY_SERVER_CONNECT": 0x4,
    "NO_TICKET": ssl.OP_NO_TICKET,
    "NO_COMPRESSION": ssl.OP_NO_COMPRESSION,
    "NO_RENEGOTIATION": ssl.OP_NO_RENEGOTIATION,
    "NO_SESSION_RESUMPTION_ON_RENEGOTIATION": 0x10000,
    "PRIORITIZE_CHACHA": 0x200000,
    "ENABLE_KTLS": 0x8,
    "IGNORE_UNEXPECTED_EOF": ssl.OP_IGNORE_UNEXPECTED_EOF,
}


def ssl_options(text: str) -> int:
    """tls_ssl_options: names (case-insensitive) or hex bit masks, OR-ed together."""
    bits = 0
    for item in (item for item in LIST_SEPARATORS.split(text) if item):
        value = SSL_OPTION_NAMES.get(item.upper())
        if value is None:
            if not re.fullmatch(r"0x[0-9a-f]+", item, re.IGNORECASE):
                raise ValueError(f"unknown SSL option {item!r}: use {', '.join(SSL_OPTION_NAMES)} "
                                 "or a hexadecimal bit mask such as 0x4000")
            value = int(item, 16)
        bits |= value
    return bits


# --- EECDH -------------------------------------------------------------------------------

EECDH_GRADES = ("auto", "strong", "ultra")


def eecdh_curve(grade: str, strong_curve: str, ultra_curve: str) -> str | None:
    """The one curve to set for `strong`/`ultra`; None for `auto` (OpenSSL's own list)."""
    grade = grade.strip().lower()
    if grade not in EECDH_GRADES:
        raise ValueError(f"unknown EECDH grade {grade!r}: use {', '.join(EECDH_GRADES)}")
    return {"auto": None, "strong": strong_curve.strip(), "ultra": ultra_curve.strip()}[grade]


# --- log level ---------------------------------------------------------------------------

_LOG_LEVEL_NAMES = {"none": 0, "routine": 1, "summary": 1, "debug": 2, "verbose": 2, "cache": 2,
                    "ssl-expert": 3, "ssl-developer": 4}


def log_level(text: str) -> int:
    """smtpd_tls_loglevel / smtp_tls_loglevel: 0-9 or Postfix's names, as 0 to 4."""
    text = text.strip().lower()
    if text.isdigit():
        return min(int(text), 4)
    level = 0
    for item in (item for item in LIST_SEPARATORS.split(text) if item):
        if item not in _LOG_LEVEL_NAMES:
            raise ValueError(f"unknown TLS log level {item!r}: use 0 to 4, or "
                             f"{', '.join(_LOG_LEVEL_NAMES)}")
        level = max(level, _LOG_LEVEL_NAMES[item])
    return level
