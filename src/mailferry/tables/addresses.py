"""The address lookup order of alias and login maps (Postfix's mail_addr_find).

For `user+ext@domain`, with recipient_delimiter `+`, the keys are:

  1. user+ext@domain, then user@domain
  2. user+ext, then user      only when domain is one of ours
  3. @domain

Pattern tables (regexp) see only the full address. A temporary failure
stops the search at once.
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
