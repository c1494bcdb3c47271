"""Transport values as transport(5) reads them, and trivial-rewrite's route order:
transport_maps, local, relay_domains, default; relayhost for the last two.

transport(5): a result is `transport:nexthop`; everything after the FIRST
colon is the next hop (which may itself contain colons: `[host]:port`,
`unix:/path`, error text). An empty next hop is allowed (`discard:`).
"""

import asyncio

import pytest

from mailferry.config.localdomains import VirtualAliasDomains
from mailferry.routing.resolve import Resolver, Route, RoutingError, RoutingSettings, parse_transport
from mailferry.tables import open_maps


@pytest.mark.parametrize("value, expected", [
    ("smtp:[smtp.gmail.com]:587", Route("smtp", "[smtp.gmail.com]:587")),
    ("lmtp:unix:/var/run/dovecot/lmtp", Route("lmtp", "unix:/var/run/dovecot/lmtp")),
    ("lmtp:inet:[192.0.2.5]:24", Route("lmtp", "inet:[192.0.2.5]:24")),
    ("error:text with: colons", Route("error", "text with: colons")),
    ("error:5.1.1 mailbox unavailable", Route("error", "5.1.1 mailbox unavailable")),
    ("discard:", Route("discard", "")),
    ("smtp", Route("smtp", "")),
    ("local:mx.example.com", Route("local", "mx.example.com")),
    ("  relay:[mail.isp.example]  ", Route("relay", "[mail.isp.example]")),
])
def test_parse_transport(value, expected):
    assert parse_transport(value) == expected


LOCAL_DOMAINS = {"example.com", "mx.example.com"}


def resolver_for(transport_maps: str = "", **settings) -> Resolver:
    values = {"local_transport": "lmtp:unix:/var/run/dovecot/lmtp", "default_transport": "smtp",
              "relayhost": "[smtp.gmail.com]:587", **settings}
    maps = open_maps(transport_maps) if transport_maps else None
    return Resolver(RoutingSettings(**values), lambda domain: domain.lower() in LOCAL_DOMAINS, maps)


def alias_domain_resolver(domains: str, transport_maps: str = "", **settings) -> Resolver:
    values = {"default_transport": "smtp", "relayhost": "[smtp.gmail.com]:587", **settings}
    return Resolver(RoutingSettings(**values), lambda domain: domain.lower() in LOCAL_DOMAINS,
                    open_maps(transport_maps) if transport_maps else None,
                    virtual_alias_domains=VirtualAliasDomains(domains))


def resolve(resolver: Resolver, address: str) -> Route:
    return asyncio.run(resolver.resolve(address))


def test_a_domain_of_ours_goes_to_local_transport():
    resolver = resolver_for()
    assert resolve(resolver, "bob@example.com") == Route("lmtp", "unix:/var/run/dovecot/lmtp")
    assert resolve(resolver, "bob@MX.example.com") == Route("lmtp", "unix:/var/run/dovecot/lmtp")
    assert resolve(resolver, "postmaster") == Route("lmtp", "unix:/var/run/dovecot/lmtp")


def test_local_hands_mailboxes_to_mailbox_transport():
    resolver = resolver_for(local_transport="local:host.example", mailbox_transport="lmtp:inet:127.0.0.1:24")
    assert resolve(resolver, "bob@example.com") == Route("lmtp", "inet:127.0.0.1:24")
    resolver = resolver_for(local_transport="local:host.example")
    assert resolve(resolver, "bob@example.com") == Route("local", "host.example")


def test_other_domains_go_to_default_transport_via_relayhost():
    resolver = resolver_for()
    assert resolve(resolver, "carol@example.org") == Route("smtp", "[smtp.gmail.com]:587")
    # A subdomain of ours is not ours: mydestination lists whole names.
    assert resolve(resolver, "carol@sub.example.com") == Route("smtp", "[smtp.gmail.com]:587")


def test_without_relayhost_the_next_hop_is_the_recipient_domain():
    resolver = resolver_for(relayhost="")
    assert resolve(resolver, "carol@Example.ORG") == Route("smtp", "example.org")


def test_a_transport_nexthop_wins_over_relayhost():
    resolver = resolver_for(default_transport="smtp:[backup.example]:2525")
    assert resolve(resolver, "carol@example.org") == Route("smtp", "[backup.example]:2525")


def test_relay_domains_use_relay_transport():
    resolver = resolver_for(relay_domains="relayed.example", relayhost="")
    assert resolve(resolver, "a@relayed.example") == Route("relay", "relayed.example")
    assert resolve(resolver, "a@sub.relayed.example") == Route("relay", "sub.relayed.example")
    assert resolve(resolver, "a@other.example") == Route("smtp", "other.example")
    resolver = resolver_for(relay_domains="relayed.example")
    assert resolve(resolver, "a@relayed.example") == Route("relay", "[smtp.gmail.com]:587")


TRANSPORTS = ("inline:{ bob@example.org=lmtp:inet:127.0.0.1:24, example.org=smtp:[mx.example.org]:25, "
              ".sub.example.net=relay:[inner.example], { error.example = error:5.1.1 no such domain }, "
              "dropped.example=discard:, keepclass.example=:, nexthoponly.example=:[hop.example], "
              "transportonly.example=relay: }")


@pytest.mark.parametrize("address, expected", [
    ("bob@example.org", Route("lmtp", "inet:127.0.0.1:24")),
    ("bob+tag@example.org", Route("lmtp", "inet:127.0.0.1:24")),
    ("alice@example.org", Route("smtp", "[mx.example.org]:25")),
    ("x@a.sub.example.net", Route("relay", "[inner.example]")),
    # `.domain` matches subdomains only, not the domain itself
    ("x@sub.example.net", Route("smtp", "[smtp.gmail.com]:587")),
    ("x@error.example", Route("error", "5.1.1 no such domain")),
    ("x@dropped.example", Route("discard", "")),
    ("x@keepclass.example", Route("smtp", "[smtp.gmail.com]:587")),
    ("x@nexthoponly.example", Route("smtp", "[hop.example]")),
    ("x@transportonly.example", Route("relay", "transportonly.example")),
    # transport_maps also overrides local delivery
    ("x@example.com", Route("lmtp", "unix:/var/run/dovecot/lmtp")),
])
def test_transport_maps(address, expected):
    resolver = resolver_for(TRANSPORTS, recipient_delimiter="+")
    assert resolve(resolver, address) == expected


def test_transport_maps_wildcard_catches_the_rest():
    resolver = resolver_for("inline:{ *=smtp:[catchall.example], example.org=relay: }")
    assert resolve(resolver, "a@elsewhere.example") == Route("smtp", "[catchall.example]")
    assert resolve(resolver, "a@example.org") == Route("relay", "example.org")


@pytest.mark.parametrize("make, address, problem", [
    (resolver_for, "a@example.org", "transport_maps lookup of a@example.org failed"),
    (alias_domain_resolver, "a@x.example", "virtual_alias_domains lookup of x.example failed"),
])
def test_a_failing_routing_table_defers(unreachable_ldap, make, address, problem):
    with pytest.raises(RoutingError, match=problem):
        resolve(make(unreachable_ldap), address)


def resolve_from(resolver: Resolver, address: str, sender: str) -> Route:
    return asyncio.run(resolver.resolve(address, sender))


def test_sender_dependent_relayhost_overrides_relayhost():
    maps = open_maps("inline:{ alice@example.org=[smtp.alice.example]:587, @example.net=[isp.example], "
                     "carol@example.net=DUNNO, <>=[bounces.example] }")
    resolver = Resolver(RoutingSettings(default_transport="smtp", relayhost="[smtp.gmail.com]:587",
                                        relay_domains="relayed.example"),
                        lambda domain: False, sender_relayhost_maps=maps)
    assert resolve_from(resolver, "x@dest.example", "alice@example.org") == Route("smtp", "[smtp.alice.example]:587")
    assert resolve_from(resolver, "x@dest.example", "Bob@Example.NET") == Route("smtp", "[isp.example]")
    # DUNNO stops the search: the global relayhost applies, not the @domain entry
    assert resolve_from(resolver, "x@dest.example", "carol@example.net") == Route("smtp", "[smtp.gmail.com]:587")
    assert resolve_from(resolver, "x@dest.example", "dave@other.example") == Route("smtp", "[smtp.gmail.com]:587")
    assert resolve_from(resolver, "x@dest.example", "") == Route("smtp", "[bounces.example]")
    # relay domains take the sender's relayhost too (relay_transport has no next hop of its own)
    assert resolve_from(resolver, "x@relayed.example", "alice@example.org") == \
        Route("relay", "[smtp.alice.example]:587")


def test_a_transports_own_next_hop_wins_over_the_senders_relayhost():
    maps = open_maps("inline:{ alice@example.org=[smtp.alice.example]:587 }")
    resolver = Resolver(RoutingSettings(default_transport="smtp:[fixed.example]"), lambda domain: False,
                        sender_relayhost_maps=maps)
    assert resolve_from(resolver, "x@dest.example", "alice@example.org") == Route("smtp", "[fixed.example]")


def test_sender_dependent_default_transport():
    transports = open_maps("inline:{ @lists.example=bulk:, vip@example.org=smtp:[priority.example] }")
    resolver = Resolver(RoutingSettings(default_transport="smtp", relayhost="[smtp.gmail.com]:587"),
                        lambda domain: False, sender_transport_maps=transports)
    assert resolve_from(resolver, "x@dest.example", "news@lists.example") == Route("bulk", "[smtp.gmail.com]:587")
    assert resolve_from(resolver, "x@dest.example", "vip@example.org") == Route("smtp", "[priority.example]")
    assert resolve_from(resolver, "x@dest.example", "joe@example.org") == Route("smtp", "[smtp.gmail.com]:587")


def test_a_failing_sender_table_defers(unreachable_ldap):
    resolver = Resolver(RoutingSettings(), lambda domain: False,
                        sender_relayhost_maps=open_maps(unreachable_ldap))
    with pytest.raises(RoutingError, match="sender_dependent_relayhost_maps lookup of a@b.example failed"):
        resolve_from(resolver, "x@dest.example", "a@b.example")


def test_the_domain_is_what_follows_the_last_at_sign():
    asked = []

    def is_local(domain):
        asked.append(domain)
        return domain == "example.com"

    resolver = Resolver(RoutingSettings(local_transport="discard:"), is_local)
    assert resolve(resolver, '"a@b"@example.com') == Route("discard", "")
    assert asked == ["example.com"]


def test_an_address_left_in_a_virtual_alias_domain_bounces_as_user_unknown():
    """Cleanup expanded what the alias table knows: what is still in the domain has no alias."""
    resolver = alias_domain_resolver("!no.sub.example, virtual.example, .sub.example")  # first match decides
    unknown = Route("error", "User unknown in virtual alias table")
    assert resolve(resolver, "nobody@virtual.example") == unknown
    assert resolve(resolver, "nobody@VIRTUAL.example.") == unknown
    assert resolve(resolver, "x@a.sub.example") == unknown
    assert resolve(resolver, "x@no.sub.example") == Route("smtp", "[smtp.gmail.com]:587")
    assert resolve(resolver, "x@other.example") == Route("smtp", "[smtp.gmail.com]:587")


def test_a_local_domain_is_local_even_when_also_a_virtual_alias_domain():
    resolver = alias_domain_resolver("example.com", local_transport="lmtp:unix:/run/lmtp")
    assert resolve(resolver, "bob@example.com") == Route("lmtp", "unix:/run/lmtp")


def test_transport_maps_do_not_override_the_user_unknown_route():
    resolver = alias_domain_resolver("virtual.example", "inline:{ virtual.example=smtp:[hop.example], *=relay: }")
    assert resolve(resolver, "x@virtual.example") == Route("error", "User unknown in virtual alias table")
    assert resolve(resolver, "x@other.example") == Route("relay", "other.example")


def test_the_table_name_is_shown_only_with_show_user_unknown_table_name():
    resolver = alias_domain_resolver("virtual.example", show_user_unknown_table_name=False)
    assert resolve(resolver, "x@virtual.example") == Route("error", "User unknown")


def test_virtual_alias_domains_from_a_table():
    resolver = alias_domain_resolver("inline:{ virtual.example=anything }")
    assert resolve(resolver, "x@virtual.example") == Route("error", "User unknown in virtual alias table")
    assert resolve(resolver, "x@other.example") == Route("smtp", "[smtp.gmail.com]:587")


# parent_domain_matches_subdomains: transport_maps is not in it by default, so a subdomain is
# matched by a `.example.org` entry; listed, by `example.org` (transport.c MA_FIND_PDMS).
def test_transport_maps_match_subdomains_by_dot_entries_unless_in_the_parent_list():
    table = "inline:{ example.org=relay:[a.example], .example.net=relay:[b.example] }"
    by_default = resolver_for(table)
    assert resolve(by_default, "x@sub.example.org") == Route("smtp", "[smtp.gmail.com]:587")
    assert resolve(by_default, "x@sub.example.net") == Route("relay", "[b.example]")
    listed = resolver_for(table, transport_maps_parent=True)
    assert resolve(listed, "x@sub.example.org") == Route("relay", "[a.example]")
    assert resolve(listed, "x@sub.example.net") == Route("smtp", "[smtp.gmail.com]:587")


def test_relay_domains_follow_the_parent_style():
    assert resolve(resolver_for(relay_domains="example.org", relayhost=""), "x@sub.example.org") == Route(
        "relay", "sub.example.org")
    assert resolve(resolver_for(relay_domains="example.org", relayhost="", relay_domains_parent=False),
                   "x@sub.example.org") == Route("smtp", "sub.example.org")
