"""Matching a client address against mynetworks-style lists.

Entries: `192.0.2.0/24`, `192.0.2.7`, `[2001:db8::]/32`, `[::1]`, a table
(`hash:/etc/mailferry/network_table`, looked up with the client address), and
`!entry` to exclude, as Postfix's match lists allow. The first entry that
matches decides.
"""

from __future__ import annotations

import ipaddress

from mailferry.syntax import split_list


class NetworkList:
    def __init__(self, value: str):
        self._entries: list[tuple[bool, object]] = []
        # Tables in the list may change answers between reloads, not within one configuration.
        self._seen: dict[str, bool] = {}
        for item in split_list(value):
            negated = item.startswith("!")
            self._entries.append((negated, _entry(item[1:] if negated else item)))

    def matches(self, address: str) -> bool:
        known = self._seen.get(address)
        if known is None:
            known = self._seen[address] = self._match(address)
            if len(self._seen) > 4096:
                self._seen.clear()  # bounded: a busy MX sees many addresses
        return known

    def _match(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for negated, entry in self._entries:
            if _entry_matches(entry, ip):
                return not negated
        return False


def _entry(text: str):
    from mailferry.tables import SUPPORTED_TYPES, open_table
    if text.partition(":")[0].lower() in SUPPORTED_TYPES:
        return open_table(text)
    cleaned = text.replace("[", "").replace("]", "")
    try:
        return ipaddress.ip_network(cleaned, strict=False)
    except ValueError:
        raise ValueError(f"bad network {text!r} in mynetworks: expected address/prefix, "
                         "e.g. 192.0.2.0/24 or [2001:db8::]/32") from None


def _entry_matches(entry, ip) -> bool:
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return ip.version == entry.version and ip in entry
    return entry.lookup_now(str(ip)).found
