"""Which transport delivers a recipient, and to what next hop (trivial-rewrite's resolve).

The order is Postfix's:
1. `transport_maps`, when it has an entry for the address or its domain;
2. a domain of ours (mydestination): `local_transport`, or `mailbox_transport`
   when local delivery is left to the `local` service;
2a. a domain in `virtual_alias_domains`: cleanup found no alias for the
   address, so it bounces: `error:User unknown in virtual alias table` (the
   table's name only with show_user_unknown_table_name); transport_maps
   cannot override this, as in Postfix's resolve.c;
2b. a domain in `virtual_mailbox_domains`: `virtual_transport` (virtual(8)),
   the next hop the recipient domain unless the transport names one;
3. a domain in `relay_domains`: `relay_transport`;
4. anything else: `default_transport`, or the sender's entry in
   `sender_dependent_default_transport_maps`.
For 3 and 4 the next hop is the transport's own (`smtp:[host]`), else the
sender's entry in `sender_dependent_relayhost_maps`, else `relayhost`, else
the recipient domain (then looked up in DNS for MX).

transport(5) values are `transport:nexthop`; an empty transport keeps the
one the address class would use, an empty next hop means the recipient
domain, and `:` alone changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry.config.localdomains import VirtualAliasDomains, local_domain_matcher
from mailferry.routing.classes import LOCAL, RELAY, VIRTUAL_ALIAS, VIRTUAL_MAILBOX, AddressClasses, ClassLookupFailed
from mailferry.tables import open_maps


@dataclass(frozen=True, slots=True)
class Route:
    transport: str   # a master.cf service name: smtp, relay, lmtp, discard, error, ...
    nexthop: str     # what follows the colon: a host, [host]:port, unix:/path, or error text


class RoutingError(Exception):
    """The route cannot be decided now (a transport table failed): defer, 4.3.0."""


def parse_transport(value: str) -> Route:
    """`smtp:[smtp.gmail.com]:587` → Route("smtp", "[smtp.gmail.com]:587"), as transport(5) reads it."""
    transport, _, nexthop = value.strip().partition(":")
    return Route(transport, nexthop)


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    local_transport: str = "local:$myhostname"
    mailbox_transport: str = ""
    relay_transport: str = "relay"
    virtual_transport: str = "virtual"
    default_transport: str = "smtp"
    relayhost: str = ""
    relay_domains: str = ""
    relay_domains_parent: bool = True     # relay_domains is in parent_domain_matches_subdomains
    transport_maps_parent: bool = False   # transport_maps is (not by default): `example.com`, not `.example.com`
    recipient_delimiter: str = ""
    show_user_unknown_table_name: bool = True

    @classmethod
    def from_config(cls, config) -> RoutingSettings:
        return cls(local_transport=config.get("local_transport"),
                   mailbox_transport=config.get("mailbox_transport"),
                   relay_transport=config.get("relay_transport"),
                   virtual_transport=config.get("virtual_transport"),
                   default_transport=config.get("default_transport"),
                   relayhost=config.get("relayhost"),
                   relay_domains=config.get("relay_domains"),
                   relay_domains_parent="relay_domains" in config.list("parent_domain_matches_subdomains"),
                   transport_maps_parent="transport_maps" in config.list("parent_domain_matches_subdomains"),
                   recipient_delimiter=config.get("recipient_delimiter"),
                   show_user_unknown_table_name=config.boolean("show_user_unknown_table_name"))


class Resolver:
    def __init__(self, settings: RoutingSettings, is_local_domain: Callable[[str], bool],
                 transport_maps=None, sender_relayhost_maps=None, sender_transport_maps=None, observer=None,
                 virtual_alias_domains: VirtualAliasDomains | None = None,
                 virtual_mailbox_domains: VirtualAliasDomains | None = None):
        """The maps are tables.Maps, or None when their parameter is empty:
        transport_maps, sender_dependent_relayhost_maps and
        sender_dependent_default_transport_maps. `observer` (tables/trace.py,
        for `mailferry trace`) is told each decision and why; None in the daemon."""
        self._observer = observer
        self._settings = settings
        self._classes = AddressClasses(is_local_domain, virtual_alias_domains, virtual_mailbox_domains,
                                       settings.relay_domains, settings.relay_domains_parent)
        self._virtual = parse_transport(settings.virtual_transport)
        self._unknown_alias = Route("error", "User unknown in virtual alias table"
                                    if settings.show_user_unknown_table_name else "User unknown")
        self._maps = transport_maps
        self._sender_relayhosts = sender_relayhost_maps
        self._sender_transports = sender_transport_maps
        self._delimiters = settings.recipient_delimiter
        self._local = _local_route(settings)
        self._relay = parse_transport(settings.relay_transport)
        self._default = parse_transport(settings.default_transport)
        self._relayhost = settings.relayhost.strip()

    @classmethod
    def from_config(cls, config, observer=None) -> Resolver:
        maps = {name: _maps_of(config, name, observer) for name in (
            "transport_maps", "sender_dependent_relayhost_maps", "sender_dependent_default_transport_maps")}
        alias_domains = VirtualAliasDomains(config.get("virtual_alias_domains"), observer)
        # virtual_mailbox_domains is a list of the same kind (names, !names, type:table entries)
        mailbox_domains = VirtualAliasDomains(config.get("virtual_mailbox_domains"), observer)
        return cls(RoutingSettings.from_config(config), local_domain_matcher(config), maps["transport_maps"],
                   maps["sender_dependent_relayhost_maps"], maps["sender_dependent_default_transport_maps"],
                   observer, alias_domains or None, mailbox_domains or None)

    async def resolve(self, address: str, sender: str = "") -> Route:
        domain = address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""
        observer = self._observer
        try:
            address_class = await self._classes.of(domain)
        except ClassLookupFailed as problem:
            raise RoutingError(str(problem)) from None
        if address_class == LOCAL:
            route = self._local_class(domain)
            if observer is not None:
                self._tell_local(address, domain)
        elif address_class == VIRTUAL_ALIAS:
            if observer is not None:
                observer.step("address_class", f"address class: virtual alias (domain {domain} matches "
                              f"virtual_alias_domains) with no alias for {address}: "
                              f"error:{self._unknown_alias.nexthop}", address_class="virtual alias",
                              reason=f"domain {domain} matches virtual_alias_domains")
            return self._unknown_alias
        elif address_class == VIRTUAL_MAILBOX:
            route = Route(self._virtual.transport, self._virtual.nexthop or domain)
            if observer is not None:
                observer.step("address_class", f"address class: virtual mailbox (domain {domain} matches "
                              f"virtual_mailbox_domains); virtual_transport = "
                              f"{self._settings.virtual_transport.strip()}", address_class="virtual mailbox",
                              reason=f"domain {domain} matches virtual_mailbox_domains")
        else:
            route = await self._remote_class(domain, sender, address_class == RELAY)
        if self._maps is None:
            return route
        found = await self._transport_entry(address, domain)
        if found is None:
            if observer is not None:
                observer.step("transport_maps", "transport_maps: no entry for the address or its domain",
                              found=False)
            return route
        key, value = found
        entry_route = _apply_entry(value, route, domain)
        if observer is not None:
            observer.step("transport_maps", f"transport_maps: key {key} = {value}, which decides over the"
                          f" address class: {entry_route.transport}:{entry_route.nexthop}", found=True, key=key,
                          value=value)
        return entry_route

    def _tell_local(self, address: str, domain: str) -> None:
        reason = f"domain {domain} matches mydestination" if domain else f"{address} has no domain"
        if parse_transport(self._settings.local_transport).transport == "local" \
                and self._settings.mailbox_transport.strip():
            via = f"local delivery, via mailbox_transport = {self._settings.mailbox_transport.strip()}"
        else:
            via = f"local delivery, via local_transport = {self._settings.local_transport.strip()}"
        self._observer.step("address_class", f"address class: local ({reason}); {via}",
                            address_class="local", reason=reason)

    def _local_class(self, domain: str) -> Route:
        if self._local.nexthop or not domain or self._local.transport in ("error", "discard", "retry"):
            return self._local
        return Route(self._local.transport, domain)   # `local_transport = smtp`: the domain is the hop

    async def _remote_class(self, domain: str, sender: str, relay: bool) -> Route:
        """relay_transport or default_transport (or the sender's), and the next hop in
        Postfix's precedence: the transport's own, the sender's relayhost, relayhost, the domain."""
        observer = self._observer
        transport = self._relay if relay else self._default
        if observer is not None:
            if relay:
                observer.step("address_class", f"address class: relay (domain {domain} matches relay_domains);"
                              f" relay_transport = {self._settings.relay_transport.strip()}",
                              address_class="relay", reason=f"domain {domain} matches relay_domains")
            else:
                observer.step("address_class", f"address class: default (domain {domain} is in none of"
                              " mydestination, virtual_mailbox_domains, relay_domains); default_transport ="
                              f" {self._settings.default_transport.strip()}", address_class="default",
                              reason=f"domain {domain} is in none of mydestination, virtual_mailbox_domains,"
                                     " relay_domains")
        if not relay and self._sender_transports is not None:
            found = await _sender_entry(self._sender_transports, sender, "sender_dependent_default_transport_maps")
            if found:
                transport = parse_transport(found)
                if observer is not None:
                    observer.step("sender_transport", f"sender_dependent_default_transport_maps: {found}",
                                  value=found)
        nexthop = transport.nexthop
        source = "transport"
        if not nexthop and self._sender_relayhosts is not None:
            found = await _sender_entry(self._sender_relayhosts, sender, "sender_dependent_relayhost_maps")
            nexthop = found or ""
            source = "sender_dependent_relayhost_maps"
        if not nexthop:
            nexthop, source = (self._relayhost, "relayhost") if self._relayhost else (domain, "domain")
        if observer is not None:
            observer.step("nexthop", _nexthop_reason(source, nexthop, transport), source=source, nexthop=nexthop)
        return Route(transport.transport, nexthop)

    async def _transport_entry(self, address: str, domain: str) -> tuple[str, str] | None:
        """transport(5)'s search: user+ext@domain, user@domain, domain, .parent
        domains (parent domains without the dot when parent_domain_matches_subdomains
        names transport_maps), then `*`. The first entry found decides: (its key, its value)."""
        for key, partial in self._transport_keys(address, domain):
            result = await self._maps.lookup(key, partial=partial)
            if result.tempfail:
                raise RoutingError(f"transport_maps lookup of {key} failed: {result.reason}")
            if result.found:
                return key, result.value or ""
        return None

    def _transport_keys(self, address: str, domain: str) -> list[tuple[str, bool]]:
        keys: list[tuple[str, bool]] = []
        if "@" in address:
            keys.append((address.lower(), False))
            local = address.rpartition("@")[0]
            base = _strip_extension(local, self._delimiters)
            if base != local:
                keys.append((f"{base}@{domain}".lower(), False))
        if domain:
            keys.append((domain, True))
            labels = domain.split(".")
            dot = "" if self._settings.transport_maps_parent else "."
            keys += [(dot + ".".join(labels[index:]), True) for index in range(1, len(labels))]
        keys.append(("*", True))
        return keys


def _maps_of(config, name: str, observer=None):
    if not config.get(name).strip():
        return None
    return open_maps(config.get(name), observer=observer)


def _nexthop_reason(source: str, nexthop: str, transport: Route) -> str:
    if source == "transport":
        return f"next hop {nexthop}: the transport's own ({transport.transport}:{transport.nexthop})"
    if source == "sender_dependent_relayhost_maps":
        return f"next hop {nexthop}: the sender's entry in sender_dependent_relayhost_maps"
    if source == "relayhost":
        return f"next hop {nexthop}: relayhost"
    return f"next hop {nexthop}: the recipient domain (MX lookup)"


async def _sender_entry(maps, sender: str, parameter: str) -> str | None:
    """The sender's entry: its address, then @domain; `<>` for the null sender
    (empty_address_*_lookup_key). DUNNO ends the search with no answer."""
    if sender:
        keys = [sender.lower()]
        if "@" in sender:
            keys.append("@" + sender.rpartition("@")[2].lower())
    else:
        keys = ["<>"]
    for key in keys:
        result = await maps.lookup(key, partial=key.startswith("@"))
        if result.tempfail:
            raise RoutingError(f"{parameter} lookup of {key} failed: {result.reason}")
        if result.found:
            value = result.value.strip()
            return None if value.upper() == "DUNNO" else value
    return None


def _local_route(settings: RoutingSettings) -> Route:
    route = parse_transport(settings.local_transport)
    # local(8) hands mailboxes to mailbox_transport when it is set (Dovecot LMTP, Cyrus).
    if route.transport == "local" and settings.mailbox_transport.strip():
        return parse_transport(settings.mailbox_transport)
    return route


def _apply_entry(value: str, route: Route, domain: str) -> Route:
    entry = parse_transport(value)
    transport = entry.transport or route.transport
    if entry.nexthop:
        return Route(transport, entry.nexthop)
    if not entry.transport:          # ":" alone: the address class decides everything
        return route
    if transport in ("error", "discard", "retry"):
        return Route(transport, "")
    return Route(transport, domain or route.nexthop)


def _strip_extension(local: str, delimiters: str) -> str:
    for index, character in enumerate(local):
        if character in delimiters:
            return local[:index]
    return local
