"""The address class of a recipient domain, in Postfix's order (resolve.c).

    local            mydestination (and our interfaces' address literals), or no domain
    virtual alias    virtual_alias_domains
    virtual mailbox  virtual_mailbox_domains
    relay            relay_domains
    default          anything else

The first list that names the domain decides, so a domain listed twice
(Postfix warns of that) goes where the earlier list sends it. The router
(resolve.py) and smtpd's RCPT-time check (smtpd/recipient_maps.py) both ask
here, so the two can never disagree about which table knows a recipient.
"""

from __future__ import annotations

from collections.abc import Callable

from mailferry.config.localdomains import LookupDeferred, VirtualAliasDomains, local_domain_matcher
from mailferry.tables.match_lists import DomainList

LOCAL = "local"
VIRTUAL_ALIAS = "virtual alias"
VIRTUAL_MAILBOX = "virtual mailbox"
RELAY = "relay"
DEFAULT = "default"


class ClassLookupFailed(Exception):
    """A table in a domain list failed for now: the class is not known, the caller defers."""


class AddressClasses:
    def __init__(self, is_local_domain: Callable[[str], bool], alias_domains: VirtualAliasDomains | None = None,
                 mailbox_domains: VirtualAliasDomains | None = None, relay_domains: str = "",
                 relay_domains_parent: bool = True):
        self._is_local = is_local_domain
        # virtual_mailbox_domains is a list of the same kind as virtual_alias_domains:
        # names, `.name` for subdomains, `!` exclusions, and type:table entries looked up with the domain.
        self._lists = ((VIRTUAL_ALIAS, "virtual_alias_domains", alias_domains or None),
                       (VIRTUAL_MAILBOX, "virtual_mailbox_domains", mailbox_domains or None))
        # relay_domains_parent: relay_domains is in parent_domain_matches_subdomains
        self._relay_domains = DomainList(relay_domains, relay_domains_parent)

    @classmethod
    def from_config(cls, config, observer=None) -> AddressClasses:
        return cls(local_domain_matcher(config), VirtualAliasDomains(config.get("virtual_alias_domains"), observer),
                   VirtualAliasDomains(config.get("virtual_mailbox_domains"), observer), config.get("relay_domains"),
                   "relay_domains" in config.list("parent_domain_matches_subdomains"))

    async def of(self, domain: str) -> str:
        """The class of `domain` (lower case, no trailing dot; "" for an address without one).
        Raises ClassLookupFailed when a table in a list fails for now."""
        if not domain or self._is_local(domain):
            return LOCAL
        for address_class, parameter, domains in self._lists:
            if domains is None:
                continue
            try:
                if await domains.matches(domain):
                    return address_class
            except LookupDeferred as problem:
                raise ClassLookupFailed(f"{parameter} lookup of {domain} failed: {problem}") from None
        relay = await self._relay_domains.matches_async(domain)
        if relay is None:
            raise ClassLookupFailed(f"relay_domains lookup of {domain} failed")
        return RELAY if relay else DEFAULT
