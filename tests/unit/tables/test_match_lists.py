"""Match lists. First, mynetworks-style client lists, as postconf(5) `mynetworks` describes them.

"Specify a list of network addresses or network/netmask patterns ... You
can also specify "/file/name" or "type:table" patterns ... a "type:table"
lookup table is matched when a table entry matches a lookup string (the
lookup result is ignored). The list is matched left to right, and the
search stops on the first match. Specify "!pattern" to exclude an address
or network block from the list. ... IP version 6 address information must
be specified inside []." Postfix compares an IPv4-mapped IPv6 client
(::ffff:192.0.2.1) in its native IPv4 form (match_ops.c).
"""

import asyncio

import pytest

from mailferry.tables.match_lists import DomainList, LocalDomainList, NetworkList


@pytest.mark.parametrize("value, client, matches", [
    # IPv4 network/prefix and bare addresses
    ("127.0.0.0/8 192.0.2.0/24", "127.0.0.1", True),
    ("127.0.0.0/8 192.0.2.0/24", "192.0.2.200", True),
    ("127.0.0.0/8 192.0.2.0/24", "192.0.3.1", False),
    ("127.0.0.0/8, 192.0.2.0/24", "10.0.0.1", False),
    ("192.0.2.7", "192.0.2.7", True),
    ("192.0.2.7", "192.0.2.8", False),
    ("192.0.2.0/28", "192.0.2.15", True),
    ("192.0.2.0/28", "192.0.2.16", False),
    ("0.0.0.0/0", "198.51.100.1", True),
    # IPv6, bracketed
    ("[::1]/128", "::1", True),
    ("[::1]/128", "::2", False),
    ("[::1]/128", "127.0.0.1", False),
    ("[::1]", "::1", True),
    ("[::1]", "0:0:0:0:0:0:0:1", True),  # another spelling of the same address
    ("[2001:db8::]/32", "2001:db8:1::5", True),
    ("[2001:db8::]/32", "2001:db9::1", False),
    ("[2001:DB8::]/32", "2001:db8::1", True),
    ("127.0.0.0/8", "::1", False),
    # An IPv4-mapped IPv6 client is its IPv4 address.
    ("192.0.2.0/24", "::ffff:192.0.2.9", True),
    ("192.0.2.0/24", "::ffff:198.51.100.9", False),
    # A scope (zone) suffix does not hide a link-local client.
    ("[fe80::]/10", "fe80::1%eth0", True),
    # Exclusions: first match wins.
    ("!192.0.2.7, 192.0.2.0/24", "192.0.2.7", False),
    ("!192.0.2.7, 192.0.2.0/24", "192.0.2.8", True),
    ("192.0.2.0/24, !192.0.2.7", "192.0.2.7", True),
    ("!192.0.2.0/25 192.0.2.0/24", "192.0.2.200", True),
    ("!192.0.2.0/25 192.0.2.0/24", "192.0.2.100", False),
    ("![::1] [::]/0", "::1", False),
    ("![::1] [::]/0", "::2", True),
    # Anything that is not an address never matches.
    ("0.0.0.0/0 [::]/0", "unknown", False),
    ("0.0.0.0/0 [::]/0", "", False),
    ("", "127.0.0.1", False),
])
def test_matches(value, client, matches):
    assert NetworkList(value).matches(client) is matches


@pytest.fixture
def network_table(tmp_path):
    path = tmp_path / "network_table"
    # The lookup result is ignored: any value, even REJECT, is a match.
    path.write_text("# trusted relays\n192.0.2.9 OK\n198.51.100.4 REJECT\n")
    return path


def test_a_texthash_table_matches_the_listed_client_addresses(network_table):
    networks = NetworkList(f"texthash:{network_table}")
    assert networks.matches("192.0.2.9")
    assert networks.matches("198.51.100.4")
    assert not networks.matches("192.0.2.10")


def test_a_table_is_looked_up_with_the_ipv4_form_of_a_mapped_client(network_table):
    assert NetworkList(f"texthash:{network_table}").matches("::ffff:192.0.2.9")


def test_a_table_combines_with_networks_and_exclusions(network_table):
    networks = NetworkList(f"!texthash:{network_table}, 192.0.2.0/24")
    assert not networks.matches("192.0.2.9")
    assert networks.matches("192.0.2.10")
    assert not networks.matches("203.0.113.1")


def test_an_inline_table_is_a_type_table_too():
    networks = NetworkList("127.0.0.0/8 inline:{ 192.0.2.9=trusted }")
    assert networks.matches("192.0.2.9")
    assert not networks.matches("192.0.2.10")


@pytest.mark.parametrize("entry", ["192.0.2.300", "192.0.2.0/33", "not-a-network", "[2001:db8::]/129"])
def test_a_bad_entry_is_refused_with_a_message_that_names_it_and_shows_the_syntax(entry):
    with pytest.raises(ValueError) as caught:
        NetworkList(f"127.0.0.0/8 {entry}")
    message = str(caught.value)
    assert repr(entry) in message
    assert "mynetworks" in message
    assert "192.0.2.0/24" in message and "[2001:db8::]/32" in message


# Domain lists (relay_domains): postconf(5) "parent_domain_matches_subdomains": a name
# matches its subdomains for relay_domains (by default in that list), and then ".name"
# matches nothing, as in Postfix's match_hostname: Postfix 3.7 here, relay_domains =
# .example.com, relays for neither mx.example.com nor example.com (checked with RCPT TO).
@pytest.mark.parametrize("value, domain, matches", [
    ("example.com", "example.com", True),
    ("example.com", "mx.example.com", True),
    ("example.com", "badexample.com", False),
    ("Example.COM.", "example.com", True),
    (".example.com", "mx.example.com", False),
    (".example.com", "example.com", False),
    ("!mx.example.com, example.com", "mx.example.com", False),
    ("!mx.example.com, example.com", "www.example.com", True),
    ("example.com, !mx.example.com", "mx.example.com", True),
    ("", "example.com", False),
])
def test_domain_list(value, domain, matches):
    assert DomainList(value).matches(domain) is matches


# Without the parent style (relay_domains taken out of parent_domain_matches_subdomains): Postfix
# 3.7 here relays for mx.example.com with .example.com and for example.org only with example.org.
@pytest.mark.parametrize("value, domain, matches", [
    ("example.com", "example.com", True),
    ("example.com", "mx.example.com", False),
    (".example.com", "mx.example.com", True),
    (".example.com", "a.b.example.com", True),
    (".example.com", "example.com", False),
    ("!.bad.example.com, .example.com", "x.bad.example.com", False),
])
def test_domain_list_without_the_parent_style(value, domain, matches):
    assert DomainList(value, parent=False).matches(domain) is matches


def test_a_table_is_asked_for_dotted_parents_without_the_parent_style():
    assert not DomainList("inline:{ example.net=OK }", parent=False).matches("mx.example.net")
    assert DomainList("inline:{ .example.net=OK }", parent=False).matches("mx.example.net")
    assert not DomainList("inline:{ .example.net=OK }", parent=False).matches("example.net")
    assert asyncio.run(DomainList("inline:{ .example.net=OK }", parent=False).matches_async("a.example.net"))
    assert not asyncio.run(DomainList("inline:{ example.net=OK }", parent=False).matches_async("a.example.net"))


def test_a_domain_list_looks_up_the_domain_and_each_parent_in_a_table():
    domains = DomainList("inline:{ example.net=OK }")
    assert domains.matches("example.net")
    assert domains.matches("mx.example.net")
    assert not domains.matches("example.org")


def test_local_domains_match_names_exactly_and_address_literals():
    local = LocalDomainList("localhost, Example.COM.", ["[192.0.2.7]"])
    assert local.matches("example.com") and local.matches("EXAMPLE.com.") and local.matches("localhost")
    assert local.matches("[192.0.2.7]")
    assert not local.matches("mx.example.com") and not local.matches("[192.0.2.8]")


def test_local_domains_look_up_table_entries_with_the_domain():
    local = LocalDomainList("inline:{ example.net=OK }, [192.0.2.7]")
    assert local.matches("example.net") and local.matches("[192.0.2.7]")
    assert not local.matches("mx.example.net")


def test_domain_list_asks_tables_asynchronously_and_reports_a_temporary_failure():
    import asyncio

    from mailferry.tables.match_lists import DomainList
    domains = DomainList("example.org, inline:{relay.test=OK}, !unionmap:{inline:{bad.test=x}}, fail:down")
    answers = [asyncio.run(domains.matches_async(domain))
               for domain in ("example.org", "sub.relay.test", "bad.test", "other.test")]
    assert answers == [True, True, False, None]  # other.test reaches fail:, which fails for now
