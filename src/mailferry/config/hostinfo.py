"""Defaults that depend on the host: myhostname, mydomain, mynetworks.

They follow postconf(5): myhostname is the name from gethostname(), with
`.$mydomain` (else `.localdomain`) appended when it has no dot; mydomain is
$myhostname minus its first label; mynetworks lists the host's own
addresses (mynetworks_style = host), in the order Postfix lists them.
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
    """The networks to trust for a mynetworks_style, in Postfix's order (IPv4, then IPv6).

    `host` trusts the host's own addresses (127.0.0.1/32 included, as Postfix);
    `subnet` and `class` widen each to its interface network (mailferry does not
    distinguish class from subnet: classful networks have been obsolete since CIDR,
    see docs/parameters.md). Link-local IPv6 networks are listed too, as Postfix does.
    """
    networks = []
    for address, prefix in local_addresses():
        length = address.max_prefixlen if style == "host" else prefix
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        networks.append(str(network) if network.version == 4 else f"[{network.network_address}]/{length}")
    # Each entry followed by a space, the last one too, as Postfix's mynetworks.c builds it:
    # `$mynetworks, ...` in another value then expands as Postfix's does.
    return "".join(f"{network} " for network in dict.fromkeys(networks or LOOPBACK_NETWORKS))


def local_addresses() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    return _ipv4_addresses() + _ipv6_addresses()


def _ipv4_addresses() -> list[tuple[ipaddress.IPv4Address, int]]:
    """Local IPv4 addresses with their interface prefix lengths, from /proc/net/fib_trie.

    Each address is followed by lines naming what it is: `/32 host LOCAL` for an
    address of ours, `/24 link UNICAST` for an interface network (the trie's own
    `+-- 10.0.0.0/30` nodes are search structure, not networks). An address's prefix
    is that of the longest interface network that holds it; loopback is /8.
    """
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    ours: list[str] = []
    links: list[ipaddress.IPv4Network] = []
    address = ""
    for line in lines:
        text = line.strip().lstrip("|+-` ")
        if text and text[0].isdigit() and "/" not in text:
            address = text.split()[0]
        elif text.startswith("/") and address:
            length, *kind = text[1:].split()
            if kind[:2] == ["host", "LOCAL"] and length == "32":
                ours.append(address)
            elif kind[:2] == ["link", "UNICAST"]:
                links.append(ipaddress.ip_network(f"{address}/{length}", strict=False))
    found: list[tuple[ipaddress.IPv4Address, int]] = []
    for text in dict.fromkeys(ours):
        local = ipaddress.IPv4Address(text)
        lengths = [net.prefixlen for net in links if local in net]
        found.append((local, 8 if local.is_loopback else max(lengths, default=32)))
    found.sort(key=lambda item: not item[0].is_loopback)
    return found


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
        addresses.append((not address.is_loopback, int(row[1], 16), address, int(row[2], 16)))
    # Loopback first, then by interface and address: the order Postfix lists them in.
    return [(address, length) for _, _, address, length in sorted(addresses)]
