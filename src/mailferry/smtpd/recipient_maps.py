"""reject_unlisted_recipient for virtual alias domains, at RCPT time.

With smtpd_reject_unlisted_recipient = yes (the default), a recipient that
passed the restrictions is checked once more, as Postfix's check_rcpt_maps:

- an address that recipient_canonical_maps, canonical_maps or
  virtual_alias_maps knows (in the address lookup order, tables/addresses.py)
  is accepted: cleanup will rewrite it;
- otherwise, an address in a virtual_alias_domains domain is refused:
  `550 5.1.1 <addr>: Recipient address rejected: User unknown in virtual alias
  table` (the code is unknown_virtual_alias_reject_code);
- a table that fails for now, in any of these steps, gives
  `451 4.3.0 <addr>: Temporary lookup failure`: never "unknown", and never an
  accept that cleanup could then not honour.

Other address classes (local_recipient_maps, relay_recipient_maps,
virtual_mailbox_maps) are not checked yet.

virtual_alias_domains is a domain list: names match exactly, `.name` its
subdomains, `!` excludes, and `type:table` entries are looked up with the
domain (its default, `$virtual_alias_maps`, makes a `domain.example  x`
line in the alias table declare the domain, as Postfix's virtual(5) shows).
"""

from __future__ import annotations

from collections.abc import Callable

from mailferry import refusals
from mailferry.config.config import Config
from mailferry.config.localdomains import LookupDeferred, VirtualAliasDomains, address_domain_matcher
from mailferry.refusals import Refusal
from mailferry.tables import Maps, open_maps
from mailferry.tables.addresses import lookup_address


class RecipientMaps:
    def __init__(self, maps: list[Maps], domains: VirtualAliasDomains, is_local: Callable[[str], bool],
                 delimiter: str, reject_code: int, enabled: bool, names: list[str] | None = None, observer=None):
        """`names`: the parameter each of `maps` comes from, for the observer
        (tables/trace.py, `mailferry trace`; None in the daemon)."""
        self._maps = maps
        self._names = names or ["recipient maps"] * len(maps)
        self._observer = observer
        self._domains = domains
        self._is_local = is_local
        self._delimiter = delimiter
        self._reject_code = reject_code
        self.enabled = enabled and bool(maps or domains)

    @classmethod
    def from_config(cls, config: Config, observer=None) -> RecipientMaps:
        names = [name for name in ("recipient_canonical_maps", "canonical_maps", "virtual_alias_maps")
                 if config.get(name).strip()]
        maps = [open_maps(config.get(name), observer=observer) for name in names]
        return cls(maps, VirtualAliasDomains(config.get("virtual_alias_domains"), observer),
                   address_domain_matcher(config),
                   config.get("recipient_delimiter"), config.integer("unknown_virtual_alias_reject_code"),
                   config.boolean("smtpd_reject_unlisted_recipient"), names, observer)

    async def check(self, address: str) -> Refusal | None:
        """None when `address` may pass; else the refusal."""
        try:
            for name, maps in zip(self._names, self._maps):
                match = await lookup_address(maps, address, self._is_local, self._delimiter)
                if match.result.tempfail:
                    raise LookupDeferred(match.result.reason)
                if match.result.found:
                    if self._observer is not None:
                        self._observer.step("recipient_maps", f"{name} knows {address} (key {match.key}):"
                                            " cleanup will rewrite it", map=name, key=match.key)
                    return None
            domain = address.rpartition("@")[2] if "@" in address else ""
            if domain and await self._domains.matches(domain):
                if self._observer is not None:
                    self._observer.step("recipient_maps", f"domain {domain} is in virtual_alias_domains and no"
                                        f" map knows {address}", domain=domain)
                return refusals.unknown_virtual_alias(self._reject_code, address)
        except LookupDeferred:
            return refusals.temporary_lookup_failure(address)
        return None
