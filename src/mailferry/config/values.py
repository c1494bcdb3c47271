"""Typed readings of parameter values, as Postfix reads them.

Each function raises ValueError with a message meant for the operator; the
caller adds the file, line and parameter name.
"""

from __future__ import annotations

import re

_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME = re.compile(r"(\d+)([smhdw]?)")


def parse_time(value: str, default_unit: str = "s") -> int:
    """Seconds in a Postfix time value: `300s`, `5m`, `4000s`, `5d`, `1w`, or a bare number."""
    match = _TIME.fullmatch(value.strip())
    if not match:
        raise ValueError(
            f"bad time value {value!r}: expected a number with an optional unit "
            "s (seconds), m (minutes), h (hours), d (days) or w (weeks), e.g. 300s or 5d")
    number, unit = match.groups()
    return int(number) * _TIME_UNITS[unit or default_unit]


def parse_size(value: str) -> int:
    """A byte count. Postfix size parameters are plain non-negative integers."""
    text = value.strip()
    if not text.isdigit():
        raise ValueError(f"bad size value {value!r}: expected a whole number of bytes, e.g. 10240000")
    return int(text)


def parse_int(value: str) -> int:
    text = value.strip()
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"bad numerical value {value!r}: expected a whole number")
    return int(text)


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text == "yes":
        return True
    if text == "no":
        return False
    raise ValueError(f"bad boolean value {value!r}: expected yes or no")


# --- Enumerated values and fixed syntaxes (parameters_data's `kind:shape:choices` column)
#
# What Postfix accepts, from its own parsers (name_code/name_mask tables in Postfix's
# src/, postconf(5)): a value it would stop on at start-up or at first use is an error
# here, anything it takes is not. Words are compared without regard to case: some
# Postfix tables compare case-sensitively, but a miss is better than a false error.

def check_choices(name: str, shape: str, choices: tuple[str, ...], text: str) -> list[tuple[bool, str]]:
    """Problems with `text`, the expanded value of parameter `name`, as (is_error, message)."""
    text = text.strip()
    if not text or not shape:
        return []
    if shape == "one":
        return _check_one(name, choices, text)
    if shape == "soft":     # Postfix takes any value, and an unknown one means a fallback: say so
        return [(False, problem) for _, problem in _check_one(name, choices, text)]
    if shape == "some":
        return _check_some(choices, text)
    reader = _SYNTAXES.get(choices[0] if choices else "")
    return reader(text) if reader else []


def did_you_mean(word: str, candidates) -> str:
    """`; did you mean X?` for the closest candidate, or "". A dict maps lower case to the spelling shown."""
    import difflib   # only when a value is wrong
    close = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    if not close:
        return ""
    shown = candidates[close[0]] if isinstance(candidates, dict) else close[0]
    return f"; did you mean {shown}?"


def _allowed(choices: tuple[str, ...]) -> str:
    return ", ".join(choices)


# smtpd and postscreen take the client-side levels, warn, and use `encrypt` (Postfix's smtpd.c).
_SERVER_DEGRADED = {"fingerprint", "verify", "secure"}


def _check_one(name: str, choices: tuple[str, ...], text: str) -> list[tuple[bool, str]]:
    word = text.lower()
    if word not in choices:
        return [(True, f"unknown value {text}{did_you_mean(text, choices)}; allowed: {_allowed(choices)}")]
    if word in _SERVER_DEGRADED and name.endswith("_tls_security_level") and "smtp_" not in name \
            and "lmtp_" not in name and "client" not in name:
        return [(False, f"{text!r} is a client-side level: Postfix's server treats it as encrypt "
                        "(and warns); say encrypt")]
    return []


def _check_some(choices: tuple[str, ...], text: str) -> list[tuple[bool, str]]:
    unknown = [word for word in re.split(r"[\s,]+", text) if word and word.lower() not in choices]
    if not unknown:
        return []
    hints = "".join(did_you_mean(word, choices).replace("; did you mean", f"; for {word} did you mean")
                    for word in unknown if len(unknown) > 1) or did_you_mean(unknown[0], choices)
    listed = ", ".join(unknown)
    return [(True, f"unknown value{'s' if len(unknown) > 1 else ''} {listed}{hints}; "
                   f"allowed: {_allowed(choices)} (a list of these)")]


_TLS_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_TLS_VERSIONS = ("None", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _tls_protocols(text: str) -> list[tuple[bool, str]]:
    """`!SSLv2, !SSLv3`, `TLSv1.2 TLSv1.3`, `>=TLSv1.2`, `<=TLSv1.3` (separated by commas,
    spaces or colons), as Postfix's tls_proto_mask_lims() reads them."""
    problems = []
    lowered = {item.lower(): item for item in _TLS_PROTOCOLS}
    versions = {item.lower(): item for item in _TLS_VERSIONS}
    for token in re.split(r"[\s,:]+", text):
        if not token:
            continue
        if token.startswith((">=", "<=")):
            version = token[2:]
            if version.lower() in versions or re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", version):
                continue
            problems.append(f"{token!r}: unknown protocol version {version!r}"
                            f"{did_you_mean(version, versions)}")
            continue
        name = token[1:] if token.startswith("!") else token
        if name.lower() not in lowered:
            problems.append(f"{token!r}: unknown protocol {name!r}{did_you_mean(name, lowered)}")
    if not problems:
        return []
    return [(True, "; ".join(problems) + "; allowed: protocol names " + ", ".join(_TLS_PROTOCOLS)
             + " (each may start with ! to exclude it), or >=VERSION and <=VERSION bounds, e.g. >=TLSv1.2")]


def _compatibility_level(text: str) -> list[tuple[bool, str]]:
    if re.fullmatch(r"\d+(\.\d+){0,2}", text):
        return []
    return [(True, f"bad compatibility level {text!r}: expected 0, 1, 2, or a Postfix version such as 3.6")]


_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_PORT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def nexthop_problem(token: str) -> str | None:
    """What is wrong with one SMTP/LMTP destination (`[host]:port`, `host:port`, `host`,
    `[ipv6:2001:db8::1]`, `inet:host:port`, `unix:/path`), or None."""
    if token.startswith("unix:"):
        return None if len(token) > 5 else f"{token!r}: unix: needs a socket path"
    token = token.removeprefix("inet:")
    if token.startswith("["):
        close = token.find("]")
        if close < 0:
            host, _, port = token[1:].rpartition(":") if ":" in token and "ipv6:" not in token.lower() \
                else (token[1:], "", "")
            fixed = f"[{host}]:{port}" if port else f"[{token[1:]}]"
            return f"{token!r}: unclosed [; did you mean {fixed}?"
        host, rest = token[1:close], token[close + 1:]
        if not host:
            return f"{token!r}: empty [] host"
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            return f"{token!r}: after ] only :port may follow"
        return None
    if "]" in token:
        return f"{token!r}: ] without ["
    host, _, port = token.partition(":")
    if not _HOST.fullmatch(host):
        return f"{token!r}: {host!r} is not a host name or address"
    if _ and not _PORT.fullmatch(port):
        return f"{token!r}: {port!r} is not a port number or service name"
    return None


def _nexthops(text: str) -> list[tuple[bool, str]]:
    problems = [problem for token in re.split(r"[\s,]+", text) if token
                for problem in [nexthop_problem(token)] if problem]
    if not problems:
        return []
    return [(True, "; ".join(problems) + "; expected host, host:port, [host] or [host]:port "
                   "(brackets turn off MX lookups), e.g. [smtp.example.com]:587")]


_SYNTAXES = {"tls_protocols": _tls_protocols, "compatibility_level": _compatibility_level,
             "nexthops": _nexthops, "transport": lambda text: []}
