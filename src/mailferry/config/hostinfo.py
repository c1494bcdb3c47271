"""Defaults that depend on the host: myhostname, mydomain, mynetworks.

They follow postconf(5): myhostname is the name from gethostname(), with
`.$mydomain` (else `.localdomain`) appended when it has no dot; mydomain is
$myhostname minus its first label; mynetworks lists the host's own
addresses (mynetworks_style = host).
"""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NETWORKS = ("127.0.0.0/8", "[::1]/128")


def default_myhostname(explicit_mydomain: str | None) -> str:
    name = socket.gethostname()
    if "." in name:
        return name
    return f"{name}.{explicit_mydomain or 'localdomain'}"


def default_mydomain(myhostname: str) -> str:
    _, dot, rest = myhostname.partition(".")
    return rest if dot and rest else "localdomain"


def default_mynetworks(style: str) -> str:
    """The networks to trust for a mynetworks_style.

    `host` trusts the host's own addresses; `subnet` and `class` widen each to
    its interface network (mailferry does not distinguish class from subnet:
    classful networks have been obsolete since CIDR, see docs/parameters.md).
    """
    networks = list(LOOPBACK_NETWORKS)
    for address, prefix in local_addresses():
        if address.is_loopback:
            continue
        length = address.max_prefixlen if style == "host" else prefix
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        networks.append(str(network) if network.version == 4 else f"[{network.network_address}]/{length}")
    return " ".join(dict.fromkeys(networks))


def local_addresses() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    return _ipv4_addresses() + _ipv6_addresses()


def _ipv4_addresses() -> list[tuple[ipaddress.IPv4Address, int]]:
    """Local IPv4 addresses with their prefix lengths, from /proc/net/fib_trie.

    The trie lists each network (`+-- 10.0.0.0/24`) before the host entries
    inside it (`|-- 10.0.0.5` followed by `/32 host LOCAL`).
    """
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found: dict[str, int] = {}
    prefix = 32
    for index, line in enumerate(lines):
        text = line.strip().lstrip("|+-` ")
        if "/" in text and not text.startswith("/"):
            prefix = int(text.split()[0].split("/")[1])
        elif text and text[0].isdigit() and index + 1 < len(lines) and "host LOCAL" in lines[index + 1]:
            found.setdefault(text, prefix)
    return [(ipaddress.IPv4Address(address), length) for address, length in found.items()]


def _ipv6_addresses() -> list[tuple[ipaddress.IPv6Address, int]]:
    """Local IPv6 addresses from /proc/net/if_inet6 (hex address, …, prefix length, scope)."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as handle:
            rows = [line.split() for line in handle]
    except OSError:
        return []
    addresses = []
    for row in rows:
        address = ipaddress.IPv6Address(int(row[0], 16))
        if address.is_link_local:
            continue
        addresses.append((address, int(row[2], 16)))
    return addresses
