"""Postfix's match lists: lists of patterns, some of them `type:table` lookups.

As Postfix's `match_list`, `namadr_list` and `domain_list`, they match
strings that are already expanded (no `$name` is left; the caller reads the
parameter), and they open the tables they name. Three kinds:

- `NetworkList`: client addresses against mynetworks-style lists;
- `DomainList`: domains against relay_domains-style lists;
- `LocalDomainList`: "is this domain ours", mydestination's test.

A `/file/name` item stands for the patterns in that file (list_items).
Every mailferry user of these lists reads main.cf through config/, which
imports this module; nothing here imports config/.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from mailferry.syntax import split_list
from mailferry.tables import SUPPORTED_TYPES, Table, TableError, open_table

from mailferry.tables.base import TableError

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def list_items(value: str) -> list[str]:
    """The items of a match list, with each `/file/name` item replaced by the patterns in
    that file, as postconf(5) documents for mynetworks, relay_domains and the other match
    lists: whitespace- or comma-separated, `#` lines are comments, files may name files."""
    items: list[str] = []
    for item in split_list(value):
        if not item.startswith("/"):
            items.append(item)
            continue
        try:
            with open(item, encoding="utf-8", errors="surrogateescape") as handle:
                text = " ".join(line for line in handle.read().splitlines()
                                if not line.lstrip().startswith("#"))
        except FileNotFoundError:
            raise TableError("no such file; create it, or fix the list that names it", item) from None
        except OSError as exc:
            raise TableError(f"cannot read this file: {exc.strerror}", item) from None
        items.extend(list_items(text))
    return items


class NetworkList:
    """Matching a client address against a mynetworks-style list.

    Entries: `192.0.2.0/24`, `192.0.2.7`, `[2001:db8::]/32`, `[::1]`, a table
    (`hash:/etc/mailferry/network_table`, looked up with the client address),
    and `!entry` to exclude, as Postfix's match lists allow. The first entry
    that matches decides.
    """

    def __init__(self, value: str):
        self._entries: list[tuple[bool, _Network | Table]] = []
        # Tables in the list may change answers between reloads, not within one configuration.
        self._seen: dict[str, bool] = {}
        for item in list_items(value):
            negated = item.startswith("!")
            self._entries.append((negated, _network_entry(item[1:] if negated else item)))

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
            if _network_entry_matches(entry, ip):
                return not negated
        return False


def _network_entry(text: str) -> _Network | Table:
    if text.partition(":")[0].lower() in SUPPORTED_TYPES:
        return answering_now(open_table(text))
    cleaned = text.replace("[", "").replace("]", "")
    try:
        return ipaddress.ip_network(cleaned, strict=False)
    except ValueError:
        raise ValueError(f"bad network {text!r} in mynetworks: expected address/prefix, "
                         "e.g. 192.0.2.0/24 or [2001:db8::]/32") from None


def answering_now(table: Table) -> Table:
    """`table`, which a list read without waiting (mynetworks, mydestination) can ask; a table
    that answers over the network (socketmap:, a composite with one) is refused when opened."""
    if not table.answers_now:
        table.close()
        raise TableError(f"table {table.spec}: a {table.type_name} table answers over the network, and "
                         "mailferry reads this list without waiting for one; use cidr:, an indexed or a "
                         "texthash: table here")
    return table


def _network_entry_matches(entry: _Network | Table, ip: _Address) -> bool:
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return ip.version == entry.version and ip in entry
    return entry.lookup_now(str(ip)).found


class DomainList:
    """A Postfix domain match list such as relay_domains (match_ops.c match_hostname), read
    left to right, the first match deciding; `!` excludes. With `parent` (the list's name is
    in parent_domain_matches_subdomains, as relay_domains is by default), a name matches
    itself and its subdomains, and a `type:table` is looked up with the domain, then each
    parent (`sub.example.com`, `example.com`, `com`). Without it, a name matches only
    itself, `.example.com` matches the subdomains, and a table is looked up with the
    domain, then `.example.com`, `.com`. A pattern table (regexp:, pcre:) sees only the
    domain.

    Used by smtpd's relay control and by routing, which sends relay domains
    to relay_transport."""

    def __init__(self, value: str, parent: bool = True):
        self._entries: list[tuple[bool, str | Table]] = []
        self._parent = parent
        for item in list_items(value):
            negated = item.startswith("!")
            item = item[1:] if negated else item
            if ":" in item:
                self._entries.append((negated, open_table(item)))
            else:
                self._entries.append((negated, item.lower().rstrip(".")))

    def matches(self, domain: str) -> bool:
        for negated, entry in self._entries:
            if self._entry_matches(entry, domain):
                return not negated
        return False

    async def matches_async(self, domain: str) -> bool | None:
        """As `matches`, but tables answer through their async lookup, so a network table
        (socketmap:, SQL, a unionmap of them) never holds the event loop and may be listed
        at all. None when a table failed for now: the caller defers (4xx), as Postfix does."""
        for negated, entry in self._entries:
            if isinstance(entry, str):
                hit: bool | None = self._name_matches(entry, domain)
            else:
                hit = await self._table_matches(entry, domain)
            if hit is None:
                return None
            if hit:
                return not negated
        return False

    def _keys(self, table: Table, domain: str) -> list[str]:
        """The keys a table is asked, in order."""
        if table.is_pattern:
            return [domain]
        labels = domain.split(".")
        parents = [".".join(labels[index:]) for index in range(1, len(labels))]
        return [domain] + (parents if self._parent else ["." + parent for parent in parents])

    async def _table_matches(self, table: Table, domain: str) -> bool | None:
        for key in self._keys(table, domain):
            result = await table.lookup(key)
            if result.tempfail:
                return None
            if result.found:
                return True
        return False

    def _name_matches(self, entry: str, domain: str) -> bool:
        if domain == entry:
            return True
        if self._parent:
            return domain.endswith("." + entry)
        return entry.startswith(".") and domain.endswith(entry)

    def _entry_matches(self, entry: str | Table, domain: str) -> bool:
        if isinstance(entry, str):
            return self._name_matches(entry, domain)
        return any(entry.lookup_now(key).found for key in self._keys(entry, domain))


class LocalDomainList:
    """Which domains are "ours", as Postfix's resolve_local decides.

    A domain listed in `mydestination` (names match exactly; `type:table`
    entries are looked up with the domain), or one of `address_literals`
    (`[192.0.2.1]`, `[ipv6:::1]`): the caller computes those from the
    interfaces mail is received on, which needs the host's addresses.
    """

    def __init__(self, mydestination: str, address_literals: Iterable[str] = ()):
        self._names: set[str] = set()
        self._tables: list[Table] = []
        for item in list_items(mydestination):
            if ":" in item and not item.startswith("["):
                self._tables.append(answering_now(open_table(item)))
            else:
                self._names.add(item.lower().rstrip("."))
        self._literals = set(address_literals)

    def matches(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        if domain in self._names or domain in self._literals:
            return True
        return any(table.lookup_now(domain).found for table in self._tables)
