"""The address lookup order of alias and login maps (Postfix's mail_addr_find).

For `user+ext@domain`, with recipient_delimiter `+`, the keys are:

  1. user+ext@domain, then user@domain
  2. user+ext, then user      only when domain is one of ours
  3. @domain

Pattern tables (regexp) see only the full address. A temporary failure
stops the search at once.

AddressMaps.map() is Postfix's mail_addr_map() on top of that order: what
is done with the value found (see its docstring). cleanup uses it for
canonical and virtual alias maps, the SMTP client for smtp_generic_maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry.tables import Maps
from mailferry.tables.result import MISSING, NOT_FOUND, LookupResult


@dataclass(frozen=True, slots=True)
class AddressMatch:
    result: LookupResult
    key: str | None  # the key that answered, None when nothing did


def address_keys(address: str, is_local_domain: Callable[[str], bool],
                 recipient_delimiter: str = "") -> list[tuple[str, bool]]:
    """The keys to try, in order, each with whether it is a partial key."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    bare_local = _strip_extension(local, recipient_delimiter)
    keys: list[tuple[str, bool]] = []
    if domain:
        keys.append((address, False))
        if bare_local != local:
            keys.append((f"{bare_local}@{domain}", True))
    if not domain or is_local_domain(domain.lower()):
        keys.append((local, bool(domain)))
        if bare_local != local:
            keys.append((bare_local, True))
    if domain:
        keys.append((f"@{domain}", True))
    return keys


def _strip_extension(local: str, delimiters: str) -> str:
    """`user+ext` → `user`; recipient_delimiter may list several characters."""
    if not delimiters or local in ("postmaster", "mailer-daemon"):
        return local
    cut = min((local.find(char) for char in delimiters if char in local[1:]), default=-1)
    return local[:cut] if cut > 0 else local


async def lookup_address(maps: Maps, address: str, is_local_domain: Callable[[str], bool],
                         recipient_delimiter: str = "") -> AddressMatch:
    for key, partial in address_keys(address, is_local_domain, recipient_delimiter):
        result = await maps.lookup(key, partial)
        if result.status != NOT_FOUND:
            return AddressMatch(result, key)
    return AddressMatch(MISSING, None)


class MapDeferred(Exception):
    """A table failed for now; the message is not accepted, try again later."""


@dataclass(frozen=True, slots=True)
class AddressMaps:
    """A `*_maps` parameter, opened, with what its lookups need to know.

    What Postfix's mail_addr_map() does with the value found, and so do we:
    - the value may hold several addresses, separated by commas or white
      space (a virtual alias that fans out);
    - a bare `user` in the value is qualified with `@$myorigin`;
    - a value of `@otherdomain` keeps the local part, less its extension;
    - when the match was on a key without the extension (`user@domain` for
      `user+ext@domain`) and `propagate` is set (propagate_unmatched_extensions
      names the map's class), the extension goes on to each result.
    A temporary failure of any table raises MapDeferred: the caller must not
    guess ("not found" would lose or misroute the mail).
    """

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
