"""access(5) lookups: which keys an access table is asked, in which order.

Each function returns the first Match (the value and the key that found
it), None when nothing matched, or raises LookupFailed when a table failed
for now (the caller answers `451 4.3.0 <name>: Temporary lookup failure`,
or with a table error, `451 4.3.5 Server configuration error`).

Keys are folded to lower case, as Postfix folds them. Partial keys (a parent
domain, an address without its extension, `user@`) are not shown to pattern
tables (regexp), which see only the whole string, as Postfix's
DICT_FLAG_FIXED does.

Orders (access(5)):
- host names (check_helo_access, the client name): the name, then each
  parent domain, as `example.com` when parent_domain_matches_subdomains
  lists smtpd_access_maps (the default), else as `.example.com`;
- client addresses: `1.2.3.4`, `1.2.3`, `1.2`, `1` (IPv6: by `:` groups);
- check_client_access: the name first, then the address;
- e-mail addresses: `user+ext@domain`, `user@domain`, then `domain` and its
  parents as above, then `user+ext@`, `user@`. The null sender is looked up
  as smtpd_null_access_lookup_key (`<>`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry.tables import Maps


class LookupFailed(Exception):
    """A table could not answer for now."""


@dataclass(frozen=True, slots=True)
class Match:
    value: str
    key: str


@dataclass(frozen=True, slots=True)
class AccessOrder:
    parent_matches_subdomains: bool = True   # smtpd_access_maps in parent_domain_matches_subdomains
    recipient_delimiter: str = ""

    async def exact(self, maps: Maps, key: str) -> Match | None:
        return await _first(maps, [(key.lower(), False)])

    async def domain(self, maps: Maps, name: str) -> Match | None:
        return await _first(maps, self.domain_keys(name))

    async def address(self, maps: Maps, address: str) -> Match | None:
        return await _first(maps, address_keys(address))

    async def client(self, maps: Maps, name: str, address: str) -> Match | None:
        return await self.domain(maps, name) or await self.address(maps, address)

    async def mail(self, maps: Maps, address: str) -> Match | None:
        return await _first(maps, self.mail_keys(address))

    def domain_keys(self, name: str, first_partial: bool = False) -> list[tuple[str, bool]]:
        name = name.lower().rstrip(".")
        if not name:
            return []
        keys = [(name, first_partial)]
        if _looks_numeric(name):
            return keys
        labels = name.split(".")
        for index in range(1, len(labels)):
            parent = ".".join(labels[index:])
            keys.append((parent if self.parent_matches_subdomains else f".{parent}", True))
        return keys

    def mail_keys(self, address: str) -> list[tuple[str, bool]]:
        local, at, domain = address.lower().rpartition("@")
        if not at:
            local, domain = address.lower(), ""
        bare = _strip_extension(local, self.recipient_delimiter)
        keys: list[tuple[str, bool]] = []
        if domain:
            keys.append((f"{local}@{domain}", False))
            if bare != local:
                keys.append((f"{bare}@{domain}", True))
            keys += self.domain_keys(domain, first_partial=True)
        keys.append((f"{local}@", True))
        if bare != local:
            keys.append((f"{bare}@", True))
        return keys


def address_keys(address: str) -> list[tuple[str, bool]]:
    address = address.lower()
    separator = ":" if ":" in address else "."
    keys = [(address, False)]
    parts = address.split(separator)
    for end in range(len(parts) - 1, 0, -1):
        prefix = separator.join(parts[:end])
        if prefix:
            keys.append((prefix, True))
    return keys


async def _first(maps: Maps, keys: list[tuple[str, bool]]) -> Match | None:
    for key, partial in keys:
        result = await maps.lookup(key, partial)
        if result.tempfail:
            raise LookupFailed(result.reason)
        if result.found:
            return Match(result.value or "", key)
    return None


def _strip_extension(local: str, delimiters: str) -> str:
    if not delimiters:
        return local
    cut = min((local.find(char) for char in delimiters if char in local[1:]), default=-1)
    return local[:cut] if cut > 0 else local


def _looks_numeric(name: str) -> bool:
    """An address as a name (`1.2.3.4`, or IPv6): no parent domains to try."""
    return ":" in name or all(char.isdigit() or char == "." for char in name)
