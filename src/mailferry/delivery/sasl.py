"""The client side of SMTP AUTH: whose password to send, which mechanism, and the exchange.

Credentials come from smtp_sasl_password_maps in Postfix's order (sender, remote host,
next hop). The mechanism is the one left after three cuts: the server's AUTH list,
smtp_sasl_mechanism_filter, and the security options in force (the *_tls_* ones once
TLS is up), with Cyrus SASL's meaning. When nothing is left, NoMechanism says which cut
removed what and which parameter to change, in place of Cyrus' "No worthy mechs found".

The exchange is sans-IO: bytes in, bytes out; the caller does base64 and the socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailferry.delivery import oauth2
from mailferry.tables.result import LookupResult

SUPPORTED = ("PLAIN", "LOGIN")
# For an entry whose password is `oauth2:/settings/file` (delivery/oauth2.py, a mailferry addition).
OAUTH2_SUPPORTED = ("XOAUTH2", "OAUTHBEARER")
DEFAULT_SECURITY_OPTIONS = ("noplaintext", "noanonymous")

# The security properties each mechanism provides in Cyrus SASL (its plugin flags). An
# option such as "noplaintext" forbids every mechanism that lacks that property.
_CYRUS_PROPERTIES = {
    "PLAIN": {"noanonymous"},
    "LOGIN": {"noanonymous"},
    "ANONYMOUS": {"noplaintext"},
    "CRAM-MD5": {"noplaintext", "noanonymous"},
    "DIGEST-MD5": {"noplaintext", "noanonymous", "mutual_auth"},
    "NTLM": {"noplaintext", "noanonymous"},
    "OTP": {"noplaintext", "noanonymous"},
    "EXTERNAL": {"noplaintext", "nodictionary", "noanonymous"},
    "GSSAPI": {"noplaintext", "noactive", "noanonymous", "mutual_auth"},
    "SCRAM-SHA-1": {"noplaintext", "noactive", "noanonymous", "mutual_auth"},
    "SCRAM-SHA-256": {"noplaintext", "noactive", "noanonymous", "mutual_auth"},
    "SRP": {"noplaintext", "noactive", "nodictionary", "noanonymous", "mutual_auth"},
    # A bearer token crosses the network as readable as a password: sasl-xoauth2, the Cyrus
    # plugin Postfix sites use, flags XOAUTH2 noanonymous and pass-credentials only.
    "XOAUTH2": {"noanonymous"},
    "OAUTHBEARER": {"noanonymous"},
}
# Why each option forbids a mechanism, in the operator's words.
SECURITY_OPTIONS = {
    "noplaintext": "plaintext passwords",
    "noactive": "open to active attack",
    "nodictionary": "open to dictionary attack",
    "noanonymous": "anonymous login",
    "mutual_auth": "no mutual authentication",
}


# --- credentials -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    @property
    def oauth2_settings(self) -> str | None:
        """The OAuth2 settings file an `oauth2:/path` password names, else None."""
        return oauth2.settings_path(self.password)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms these credentials can be used with, best first."""
        return OAUTH2_SUPPORTED if self.oauth2_settings is not None else SUPPORTED


class SaslLookupError(Exception):
    """smtp_sasl_password_maps failed temporarily: the delivery must be deferred, not sent unauthenticated."""

    def __init__(self, parameter: str, tables: str, key: str, reason: str):
        super().__init__(f"{parameter} ({tables}): lookup of {key!r} failed temporarily: {reason}")
        self.parameter = parameter
        self.tables = tables
        self.key = key
        self.reason = reason


def credential_keys(*, sender: str, sender_dependent: bool, hostname: str, nexthop: str) -> list[tuple[str, bool]]:
    """The keys to look up, in Postfix's order, each with whether it is a partial key."""
    candidates: list[tuple[str, bool]] = []
    if sender_dependent and sender:
        candidates.append((sender, False))
        local, at, domain = sender.rpartition("@")
        if at and domain:
            candidates.append((f"@{domain}", True))
    candidates.append((hostname.strip(), False))
    candidates.append((nexthop.strip(), False))
    candidates.append((_bare_nexthop(nexthop), False))
    keys: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for key, partial in candidates:
        if key and key.lower() not in seen:
            seen.add(key.lower())
            keys.append((key, partial))
    return keys


def _bare_nexthop(nexthop: str) -> str:
    """"[smtp.gmail.com]:587" -> "smtp.gmail.com"; "relay.example.com:25" -> "relay.example.com"."""
    text = nexthop.strip()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


class PasswordMaps(Protocol):
    """smtp_sasl_password_maps: a tables.Maps."""

    async def lookup(self, key: str, partial: bool = False) -> LookupResult: ...


async def find_credentials(maps: PasswordMaps, *, sender: str, sender_dependent: bool, hostname: str, nexthop: str,
                           parameter: str = "smtp_sasl_password_maps") -> Credentials | None:
    """The first "user:password" found, or None (then the client does not authenticate).

    Raises SaslLookupError when a table fails temporarily: answering from a later key could
    log in with the wrong account.
    """
    found = await find_credentials_entry(maps, sender=sender, sender_dependent=sender_dependent,
                                         hostname=hostname, nexthop=nexthop, parameter=parameter)
    return None if found is None else found[1]


async def find_credentials_entry(maps: PasswordMaps, *, sender: str, sender_dependent: bool, hostname: str,
                                 nexthop: str, parameter: str = "smtp_sasl_password_maps"
                                 ) -> tuple[str, Credentials] | None:
    """find_credentials, with the key that matched (for relay-check and the OAuth2 status)."""
    for key, partial in credential_keys(sender=sender, sender_dependent=sender_dependent,
                                        hostname=hostname, nexthop=nexthop):
        result = await (maps.lookup(key, partial=True) if partial else maps.lookup(key))
        if result.tempfail:
            raise SaslLookupError(parameter, _describe_tables(maps), key, result.reason or "temporary failure")
        if result.found:
            username, _, password = (result.value or "").partition(":")
            return key, Credentials(username, password)
    return None


def _describe_tables(maps: PasswordMaps) -> str:
    specs = [_safe_spec(table) for table in getattr(maps, "tables", ())]
    if not specs:
        return "lookup table"
    return specs[0] if len(specs) == 1 else "one of " + ", ".join(specs)


def _safe_spec(table) -> str:
    """The table's name, except that an inline table's text (user:password pairs) stays out of logs."""
    if "{" in table.name:
        return f"{table.type_name}:{{...}}"
    return table.spec


# --- mechanism choice ---------------------------------------------------------------------

class NoMechanism(Exception):
    """No mechanism is left to authenticate with; str() is the one-line explanation."""


def choose_mechanism(offered: tuple[str, ...], *, mechanism_filter: list[str], security_options: list[str],
                     options_parameter: str, filter_parameter: str = "smtp_sasl_mechanism_filter",
                     supported: tuple[str, ...] = SUPPORTED) -> str:
    """The first of `supported` (PLAIN, LOGIN; or XOAUTH2, OAUTHBEARER for an OAuth2 entry)
    that survives the filter and the security options.

    Raises NoMechanism with the reason, and ValueError for a security option that does
    not exist (a typo would otherwise change what is allowed).
    """
    options = check_security_options(security_options, options_parameter)
    offered = _unique(mechanism.upper() for mechanism in offered)
    if not offered:
        raise NoMechanism("the server offers no AUTH mechanism (no AUTH in its EHLO reply)")
    usable_filter, ignored = _split_filter(mechanism_filter)
    after_filter = [mechanism for mechanism in offered if _filter_allows(usable_filter, mechanism)]
    forbidden = {mechanism: _forbidding(mechanism, options) for mechanism in after_filter}
    after_options = [mechanism for mechanism in after_filter if not forbidden[mechanism]]
    for mechanism in supported:
        if mechanism in after_options:
            return mechanism
    raise NoMechanism(_explain(offered, mechanism_filter, ignored, after_filter, forbidden, after_options,
                               options, options_parameter, filter_parameter, supported))


def mechanism_verdicts(offered: tuple[str, ...], *, mechanism_filter: list[str], security_options: list[str],
                       options_parameter: str, filter_parameter: str = "smtp_sasl_mechanism_filter",
                       supported: tuple[str, ...] = SUPPORTED) -> list[tuple[str, str]]:
    """Each offered mechanism with why it is excluded ("" when choose_mechanism may take it),
    by the same three cuts as choose_mechanism: the filter, the security options, `supported`
    (PLAIN and LOGIN; XOAUTH2 and OAUTHBEARER for an OAuth2 entry)."""
    options = check_security_options(security_options, options_parameter)
    usable_filter, _ = _split_filter(mechanism_filter)
    verdicts = []
    for mechanism in _unique(mechanism.upper() for mechanism in offered):
        if not _filter_allows(usable_filter, mechanism):
            why = f"removed by {filter_parameter} = {', '.join(mechanism_filter)}"
        elif forbidding := _forbidding(mechanism, options):
            why = (f"forbidden by {options_parameter} = {', '.join(options)} "
                   f"({', '.join(SECURITY_OPTIONS[option] for option in forbidding)})")
        elif mechanism not in supported:
            kind = " for an OAuth2 entry" if supported == OAUTH2_SUPPORTED else ""
            why = f"not supported by mailferry's SASL client{kind} ({' and '.join(supported)})"
        else:
            why = ""
        verdicts.append((mechanism, why))
    return verdicts


def _unique(items) -> list[str]:
    result: list[str] = []
    for item in items:
        if item and item not in result:
            result.append(item)
    return result


def check_security_options(options: list[str], parameter: str) -> list[str]:
    """The options, lower-case; ValueError naming `parameter` for one Cyrus does not define."""
    normalized = [option.strip().lower() for option in options if option.strip()]
    unknown = [option for option in normalized if option not in SECURITY_OPTIONS]
    if unknown:
        raise ValueError(f"{parameter}: unknown security option {unknown[0]!r}: "
                         f"use {', '.join(SECURITY_OPTIONS)}")
    return normalized


def _split_filter(items: list[str]) -> tuple[list[str], list[str]]:
    """(mechanism patterns, ignored items): tables and /file/names are not read here."""
    usable: list[str] = []
    ignored: list[str] = []
    for item in (item.strip() for item in items):
        if not item:
            continue
        name = item[1:] if item.startswith("!") else item
        if ":" in name or name.startswith("/"):
            ignored.append(item)
        else:
            usable.append(item.upper())
    return usable, ignored


def _filter_allows(patterns: list[str], mechanism: str) -> bool:
    """Postfix match-list semantics: the first pattern that names the mechanism decides."""
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.startswith("!"):
            if pattern[1:] == mechanism:
                return False
        elif pattern == mechanism:
            return True
    return False


def _forbidding(mechanism: str, options: list[str]) -> list[str]:
    properties = _CYRUS_PROPERTIES.get(mechanism)
    if properties is None:
        return []  # properties unknown: only the SUPPORTED cut can speak about it
    return [option for option in options if option not in properties]


def _explain(offered, mechanism_filter, ignored, after_filter, forbidden, after_options,
             options, options_parameter, filter_parameter, supported=SUPPORTED) -> str:
    names = " and ".join(supported)
    for_kind = " for an OAuth2 entry (oauth2:FILE)" if supported == OAUTH2_SUPPORTED else ""
    none_supported = not any(mechanism in supported for mechanism in offered)
    parts = [f"the server offers {' '.join(offered)}{' only' if none_supported else ''}"]
    removed_by_filter = [mechanism for mechanism in offered if mechanism not in after_filter]
    if removed_by_filter:
        parts.append(f"{filter_parameter} = {', '.join(mechanism_filter)} removes {' '.join(removed_by_filter)}")
    if ignored:
        parts.append(f"{filter_parameter} items {', '.join(ignored)} are ignored "
                     "(mailferry reads only mechanism names there, not tables or files)")
    removed_by_options = [mechanism for mechanism in after_filter if forbidden[mechanism]]
    if removed_by_options:
        reasons = _unique(SECURITY_OPTIONS[option] for mechanism in removed_by_options
                          for option in forbidden[mechanism])
        parts.append(f"{options_parameter} = {', '.join(options)} forbids {' '.join(removed_by_options)} "
                     f"({', '.join(reasons)})")
    unsupported = [mechanism for mechanism in after_options if mechanism not in supported]
    if none_supported:
        parts.append(f"mailferry's SASL client supports {names}{for_kind}")
        return "; ".join(parts)
    if unsupported:
        parts.append(f"mailferry's SASL client does not support {' '.join(unsupported)}{for_kind} (only {names})")
    supported_forbidden = [m for m in removed_by_options if m in supported]
    if supported_forbidden:
        parts.append(_options_advice(supported_forbidden, forbidden, options, options_parameter))
    elif any(mechanism in supported for mechanism in removed_by_filter):
        supported_filtered = [m for m in removed_by_filter if m in supported]
        parts.append(f"to use {' or '.join(supported_filtered)}, add it to {filter_parameter} "
                     "or leave that parameter empty")
    return "; ".join(parts)


def _options_advice(mechanisms: list[str], forbidden, options: list[str], options_parameter: str) -> str:
    blocking = {option for mechanism in mechanisms for option in forbidden[mechanism]}
    kept = [option for option in options if option not in blocking]
    setting = f"{options_parameter} = {', '.join(kept)}".rstrip()
    if "_tls_" in options_parameter:
        return f"to allow them over TLS, set {setting}"
    prefix = options_parameter.split("_", 1)[0]
    tls_setting = f"{prefix}_sasl_tls_security_options = {', '.join(kept)}".rstrip()
    return (f"this session has no TLS, so the password would cross the network readable; "
            f"require TLS ({prefix}_tls_security_level = encrypt) and set {tls_setting}, "
            f"or to allow them without TLS, set {setting}")


# --- the exchange -------------------------------------------------------------------------

class SaslExchange:
    """One AUTH exchange for PLAIN or LOGIN: give it each 334 challenge (decoded), send what it answers."""

    def __init__(self, mechanism: str, credentials: Credentials):
        mechanism = mechanism.upper()
        if mechanism not in SUPPORTED:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}: mailferry supports PLAIN and LOGIN")
        if mechanism == "PLAIN" and ("\0" in credentials.username or "\0" in credentials.password):
            raise ValueError("a PLAIN username or password cannot contain a NUL character")
        self.mechanism = mechanism
        self._username = credentials.username.encode("utf-8")
        self._password = credentials.password.encode("utf-8")
        self._answers = 0

    def initial_response(self) -> bytes | None:
        """Sent with the AUTH command (RFC 4954); LOGIN has none."""
        return self._plain() if self.mechanism == "PLAIN" else None

    def answer(self, challenge: bytes) -> bytes:
        self._answers += 1
        if self.mechanism == "PLAIN":
            if self._answers > 1 or challenge:
                raise ValueError(f"unexpected PLAIN challenge {challenge[:40]!r}: PLAIN takes no challenge")
            return self._plain()  # the server did not take the initial response
        if self._answers == 1:
            return self._username
        if self._answers == 2:
            return self._password
        raise ValueError(f"unexpected third LOGIN challenge {challenge[:40]!r}: "
                         "LOGIN asks only for username and password")

    def _plain(self) -> bytes:
        return b"\0" + self._username + b"\0" + self._password
