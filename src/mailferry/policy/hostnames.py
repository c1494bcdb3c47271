"""Postfix's valid_hostname and valid_hostaddr, for the HELO and domain checks.

A host name is labels of letters, digits, `-` and `_` (Postfix accepts the
underscore), no label empty, longer than 63 or starting or ending with `-`,
at most 255 characters, and not all digits and dots (that is an address).
"""

from __future__ import annotations

import ipaddress

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def is_valid_hostname(name: str) -> bool:
    if not name or len(name) > 255:
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not set(label) <= _LABEL_CHARS:
            return False
    return not all(char.isdigit() or char == "." for char in name)


def is_valid_hostaddr(text: str) -> bool:
    """An IPv4 address, or an IPv6 one with or without the `IPv6:` tag."""
    if text[:5].lower() == "ipv6:":
        text = text[5:]
        try:
            return ipaddress.ip_address(text).version == 6
        except ValueError:
            return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_fqdn(name: str) -> bool:
    """reject_non_fqdn_*: a valid name with a dot in it."""
    return is_valid_hostname(name) and "." in name.rstrip(".")
