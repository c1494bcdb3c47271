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
