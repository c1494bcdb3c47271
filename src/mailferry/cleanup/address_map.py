"""One address through one `*_maps` parameter, as Postfix's mail_addr_map().

The keys are tried in tables/addresses.py's order (`user+ext@domain`,
`user@domain`, `user+ext`, `user` for our own domains, `@domain`). What
Postfix then does with the value, and so do we:

- the value may hold several addresses, separated by commas or white space
  (a virtual alias that fans out);
- a bare `user` in the value is qualified with `@$myorigin`;
- a value of `@otherdomain` keeps the local part, less its extension;
- when the match was on a key without the extension (`user@domain` for
  `user+ext@domain`) and `propagate_unmatched_extensions` lists the map's
  class, the extension goes on to each result: `user+ext@domain` → `u+ext@x`.

A temporary failure of any table raises MapDeferred: the caller must not
guess ("not found" would lose or misroute the mail).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry.tables import Maps
from mailferry.tables.addresses import address_keys
from mailferry.tables.result import NOT_FOUND


class MapDeferred(Exception):
    """A table failed for now; the message is not accepted, try again later."""


@dataclass(frozen=True, slots=True)
class AddressMaps:
    """A `*_maps` parameter, opened, with what its lookups need to know."""

    title: str                             # the parameter's name, for log lines
    maps: Maps
    is_local_domain: Callable[[str], bool]  # mydestination, interface literals, myorigin
    myorigin: str
    recipient_delimiter: str = ""
    propagate: bool = True                 # propagate_unmatched_extensions names this class

    async def map(self, address: str) -> list[str] | None:
        """The addresses `address` maps to, or None when no key matched."""
        for key, partial in address_keys(address, self.is_local_domain, self.recipient_delimiter):
            result = await self.maps.lookup(key, partial)
            if result.status == NOT_FOUND:
                continue
            if result.tempfail:
                raise MapDeferred(result.reason or "lookup failed")
            return self._results(address, key, result.value or "")
        return None

    def _results(self, address: str, key: str, value: str) -> list[str]:
        local, at, _ = address.rpartition("@")
        if not at:
            local = address
        extension = _unmatched_extension(local, key)
        if value.startswith("@"):
            bare = local[:len(local) - len(extension)] if extension else local
            value = bare + value
            extension = ""
        addresses = [self._qualify(item) for item in split_addresses(value)]
        if not addresses:
            raise MapDeferred(f"{self.title} lookup of {address} returns non-address result \"{value}\"")
        if extension and self.propagate:
            addresses = [_with_extension(item, extension) for item in addresses]
        return addresses

    def _qualify(self, address: str) -> str:
        return address if "@" in address else f"{address}@{self.myorigin}"


def _unmatched_extension(local: str, key: str) -> str:
    """`+ext` when `key` matched `local` only without its extension, else ""."""
    key_local = key.rpartition("@")[0] if "@" in key else key
    if key.startswith("@") or len(key_local) >= len(local) or not local.lower().startswith(key_local.lower()):
        return ""
    return local[len(key_local):]


def _with_extension(address: str, extension: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local}{extension}@{domain}" if at else address + extension


def split_addresses(value: str) -> list[str]:
    """`a@x, b@y c@z` → three addresses; `<a@x>` loses its brackets; a quoted
    local part keeps its commas and spaces."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if not quoted and (char == "," or char.isspace()):
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip().removeprefix("<").removesuffix(">") for item in items if item.strip(" <>")]
