"""Which domains are "ours" for the `user` form of alias and login maps.

As Postfix's resolve_local: a domain listed in mydestination, or an address
literal ([192.0.2.1]) of one of inet_interfaces or proxy_interfaces. Table
entries in mydestination (`hash:/etc/mailferry/domains`) are looked up too.
"""

from __future__ import annotations

from collections.abc import Callable

from mailferry.config.config import Config


def local_domain_matcher(config: Config) -> Callable[[str], bool]:
    names: set[str] = set()
    tables = []
    for item in config.list("mydestination"):
        if ":" in item and not item.startswith("["):
            from mailferry.tables import open_table
            tables.append(open_table(item))
        else:
            names.add(item.lower().rstrip("."))
    literals = set(_interface_addresses(config))

    def is_local(domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        if domain in names or domain in literals:
            return True
        return any(table.lookup_now(domain).found for table in tables)

    return is_local


def _interface_addresses(config: Config) -> list[str]:
    """Address literals (`[192.0.2.1]`, `[ipv6:::1]`) of the interfaces we receive mail on."""
    import ipaddress

    from mailferry.config.hostinfo import local_addresses
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in ("inet_interfaces", "proxy_interfaces"):
        for item in config.list(name):
            item = item.lower()
            if item in ("all", "loopback-only"):
                addresses += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
                if item == "all":
                    addresses += [address for address, _ in local_addresses()]
                continue
            try:
                addresses.append(ipaddress.ip_address(item.strip("[]")))
            except ValueError:
                continue  # a host name: mailferry does not resolve names here
    return [f"[{a}]" if a.version == 4 else f"[ipv6:{a}]" for a in addresses]
