"""Which domains are "ours" for the `user` form of alias and login maps.

As Postfix's resolve_local: a domain listed in mydestination, or an address
literal ([192.0.2.1]) of one of inet_interfaces or proxy_interfaces. Table
entries in mydestination (`hash:/etc/mailferry/domains`) are looked up too.

The matching is tables/match_lists.py's; what is read from main.cf and the
host (the interfaces' addresses) is decided here; so is virtual_alias_domains.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from mailferry.config.config import Config
from mailferry.config.hostinfo import local_addresses
from mailferry.tables import Table, open_maps, open_table
from mailferry.tables.addresses import AddressMaps
from mailferry.tables.match_lists import LocalDomainList, list_items


def local_domain_matcher(config: Config) -> Callable[[str], bool]:
    return LocalDomainList(config.get("mydestination"), _interface_addresses(config)).matches


def address_domain_matcher(config: Config) -> Callable[[str], bool]:
    """Where an address map looks up the bare `user` (mail_addr_find): our
    domains as above, and $myorigin."""
    is_ours = local_domain_matcher(config)
    myorigin = config.get("myorigin").lower()
    return lambda domain: domain == myorigin or is_ours(domain)


def open_address_maps(config: Config, name: str, propagate_class: str,
                      is_local: Callable[[str], bool] | None = None, observer=None) -> AddressMaps | None:
    """The `*_maps` parameter `name` opened for address lookups, or None when
    it is empty. `propagate_class` is its word in propagate_unmatched_extensions
    (canonical, virtual, generic...). `observer`: see tables/trace.py."""
    value = config.get(name)
    if not value.strip():
        return None
    return AddressMaps(name, open_maps(value, observer=observer), is_local or address_domain_matcher(config), config.get("myorigin"),
                       config.get("recipient_delimiter"),
                       propagate_class in config.list("propagate_unmatched_extensions"))


def _interface_addresses(config: Config) -> list[str]:
    """Address literals (`[192.0.2.1]`, `[ipv6:::1]`) of the interfaces we receive mail on."""
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


class LookupDeferred(Exception):
    """A table in a domain list failed for now."""


class VirtualAliasDomains:
    """virtual_alias_domains, a domain list: names match exactly, `.name` its subdomains, `!`
    excludes, and `type:table` entries are looked up with the domain (its default,
    `$virtual_alias_maps`, makes a `domain.example  x` line in the alias table declare the
    domain, as Postfix's virtual(5) shows). Used at RCPT time and by the router."""

    def __init__(self, value: str, observer=None):
        self._entries: list[tuple[bool, str | Table]] = []
        for item in list_items(value):   # a /file/name item is the domains in that file
            negated = item.startswith("!")
            item = item[1:] if negated else item
            entry: str | Table = open_table(item, observer=observer) if ":" in item else item.lower().rstrip(".")
            self._entries.append((negated, entry))

    def __bool__(self) -> bool:
        return bool(self._entries)

    async def matches(self, domain: str) -> bool:
        """Raises LookupDeferred when a table fails for now."""
        domain = domain.lower().rstrip(".")
        for negated, entry in self._entries:
            if isinstance(entry, str):
                hit = domain.endswith(entry) if entry.startswith(".") else domain == entry
            else:
                result = await entry.lookup(domain)
                if result.tempfail:
                    raise LookupDeferred(result.reason)
                hit = result.found
            if hit:
                return not negated
        return False
