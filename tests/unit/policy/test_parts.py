"""The engine's smaller parts: address resolution, host name syntax, access keys,
the client name, policy service endpoints, the DNSBL reply template."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.policy import dns
from mailferry.policy.access import AccessOrder, address_keys
from mailferry.routing.addresses import Canonicalizer
from mailferry.policy.client_name import client_name
from mailferry.policy.facts import NAME_FORGED, NAME_OK, NAME_TEMPFAIL, NAME_UNKNOWN
from mailferry.policy.hostnames import is_fqdn, is_valid_hostaddr, is_valid_hostname
from mailferry.policy.policy_service import PolicyClient, PolicyServiceError, PolicyServiceSettings
from mailferry.policy.restrictions import _address_matches, expand_template
from tests.unit.policy.test_golden import FakeDns

OURS = {"example.com", "mx.example.com"}
RESOLVE = Canonicalizer(lambda domain: domain in OURS, "mx.example.com", "example.com")


@pytest.mark.parametrize("address, resolved, routed", [
    ("user@example.com", "user@example.com", False),
    ("User@Example.COM", "User@Example.COM", False),
    ("user@elsewhere.example", "user@elsewhere.example", False),
    ("victim%elsewhere.example@example.com", "victim@elsewhere.example", False),
    ("victim%example.com@example.com", "victim@example.com", False),
    ("a%b%example.com@example.com", "a@b", False),     # each percent in turn, while the domain is ours
    ("elsewhere.example!victim@example.com", "victim@elsewhere.example", False),
    ("victim%elsewhere.example@relay.example", "victim%elsewhere.example@relay.example", True),
    ("victim@elsewhere.example@example.com", "victim@elsewhere.example", False),
    ("user", "user@mx.example.com", False),
    ("user@example.com.", "user@example.com", False),
    ('"victim@elsewhere.example"@example.com', "victim@elsewhere.example", False),   # resolve_dequoted_address
    ('"victim%elsewhere.example"@mx.example.com', "victim@elsewhere.example", False),
    ('"first last"@example.com', '"first last"@example.com', False),
    ('"a@b"@elsewhere.example', '"a@b"@elsewhere.example', True),
])
def test_resolve_strips_our_domains_and_undoes_the_percent_hack(address, resolved, routed):
    result = RESOLVE.resolve(address)
    assert (result.address, result.routed) == (resolved, routed)


def test_without_the_percent_hack_a_percent_stays_routed():
    plain = Canonicalizer(lambda domain: domain in OURS, "mx.example.com", "example.com", percent_hack=False)
    assert plain.resolve("victim%elsewhere.example@example.com").address == "victim%elsewhere.example@example.com"


@pytest.mark.parametrize("name, valid", [
    ("mail.example.com", True), ("localhost", True), ("under_score.example", True), ("a-b.example", True),
    ("-bad.example", False), ("bad-.example", False), ("bad..example", False), ("bad!name", False),
    ("1.2.3.4", False), ("x" * 64 + ".example", False), ("", False),
])
def test_hostnames(name, valid):
    assert is_valid_hostname(name) is valid


def test_fqdn_and_addresses():
    assert is_fqdn("mail.example.com") and not is_fqdn("localhost")
    assert is_valid_hostaddr("192.0.2.1") and is_valid_hostaddr("IPv6:2001:db8::1")
    assert not is_valid_hostaddr("999.1.1.1") and not is_valid_hostaddr("IPv6:192.0.2.1")


def test_access_keys_in_access5_order():
    order = AccessOrder(parent_matches_subdomains=True, recipient_delimiter="+")
    assert [key for key, _ in order.mail_keys("User+Ext@Mail.Example.COM")] == [
        "user+ext@mail.example.com", "user@mail.example.com", "mail.example.com", "example.com", "com",
        "user+ext@", "user@"]
    dotted = AccessOrder(parent_matches_subdomains=False)
    assert [key for key, _ in dotted.domain_keys("a.b.example")] == ["a.b.example", ".b.example", ".example"]
    assert [key for key, _ in address_keys("192.0.2.1")] == ["192.0.2.1", "192.0.2", "192.0", "192"]
    assert [key for key, partial in order.domain_keys("192.0.2.1")] == ["192.0.2.1"]


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_client_name_must_resolve_back_to_the_address():
    fake = FakeDns()
    fake.add("PTR", "2.2.0.192.in-addr.arpa", "good.example")
    fake.add("A", "good.example", "192.0.2.2")
    fake.add("PTR", "3.2.0.192.in-addr.arpa", "forged.example")
    fake.add("A", "forged.example", "192.0.2.99")
    fake.add("PTR", "4.2.0.192.in-addr.arpa", "gone.example")
    fake.failing.add("5.2.0.192.in-addr.arpa")
    good = run(client_name(fake, "192.0.2.2"))
    assert (good.name, good.name_status, good.reverse_name) == ("good.example", NAME_OK, "good.example")
    forged = run(client_name(fake, "192.0.2.3"))
    assert (forged.name, forged.name_status, forged.reverse_name) == ("unknown", NAME_FORGED, "forged.example")
    assert forged.warning == "hostname forged.example does not resolve to address 192.0.2.3"
    gone = run(client_name(fake, "192.0.2.4"))
    assert (gone.name, gone.name_status, gone.reverse_status) == ("unknown", NAME_UNKNOWN, NAME_OK)
    failing = run(client_name(fake, "192.0.2.5"))
    assert (failing.name, failing.name_status, failing.reverse_status) == ("unknown", NAME_TEMPFAIL, NAME_TEMPFAIL)
    none = run(client_name(fake, "192.0.2.6"))
    assert (none.name, none.name_status) == ("unknown", NAME_UNKNOWN)


def test_dns_turned_off_fails_every_question_for_now():
    client = dns.DnsClient.from_environment({"MAILFERRY_NAMESERVERS": "none"})
    assert run(client.query("example.com", "A")).status == dns.TEMPFAIL


def test_dnsbl_query_names():
    assert dns.dnsbl_query_name("192.0.2.1", "zen.example") == "1.2.0.192.zen.example"
    assert dns.dnsbl_query_name("2001:db8::1", "zen.example").startswith("1.0.0.0.")


def test_dnsbl_reply_filters():
    assert _address_matches("127.0.0.2", "127.0.0.2")
    assert _address_matches("127.0.0.3", "127.0.0.[2..4]")
    assert not _address_matches("127.0.0.5", "127.0.0.[2..4]")
    assert _address_matches("127.0.0.4", "127.0.0.[2;4]") and not _address_matches("127.0.0.3", "127.0.0.[2;4]")


def test_the_rbl_reply_template():
    variables = {"rbl_code": "554", "rbl_class": "Client host", "rbl_what": "192.0.2.1",
                 "rbl_domain": "zen.example", "rbl_reason": ""}
    template = ("$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain"
                "${rbl_reason?; $rbl_reason}")
    assert expand_template(template, variables) == \
        "554 Service unavailable; Client host [192.0.2.1] blocked using zen.example"
    assert expand_template(template, {**variables, "rbl_reason": "why"}).endswith("zen.example; why")


def test_a_braced_policy_endpoint_carries_its_own_settings():
    client = PolicyClient.from_spec("{ inet:127.0.0.1:9998, timeout=10s, default_action=DUNNO, try_limit=1 }",
                                    PolicyServiceSettings())
    assert client.endpoint == "inet:127.0.0.1:9998"
    assert (client.settings.timeout, client.settings.default_action, client.settings.try_limit) == (10, "DUNNO", 1)
    with pytest.raises(ValueError):
        PolicyClient.from_spec("{ inet:127.0.0.1:9998, colour=blue }", PolicyServiceSettings())


def test_an_unreachable_policy_server_is_an_error_after_its_tries():
    client = PolicyClient("unix:/nonexistent/policy", PolicyServiceSettings(try_limit=2, retry_delay=0))
    with pytest.raises(PolicyServiceError, match="problem talking to server unix:/nonexistent/policy"):
        run(client.query({"request": "smtpd_access_policy"}))


def test_a_silent_policy_server_times_out():
    async def scenario():
        async def silent(reader, writer):
            await reader.read()   # never answers
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PolicyClient(f"inet:127.0.0.1:{port}", PolicyServiceSettings(timeout=0.2, try_limit=1))
        try:
            with pytest.raises(PolicyServiceError):
                await client.query({"request": "smtpd_access_policy"})
        finally:
            client.close()
            server.close()
    run(scenario())


def test_starttls_forgets_the_helo_name_and_the_login():
    from mailferry.policy.session import SessionPolicy
    from mailferry.policy.facts import SessionFacts
    policy = SessionPolicy(engine=None, facts=SessionFacts("192.0.2.1", helo_name="client.example",
                                                           sasl_method="PLAIN", sasl_username="alice"))
    policy.tls_started()
    assert policy.facts.helo_name is None
    assert (policy.facts.sasl_method, policy.facts.sasl_username) == ("", "")


def test_without_resolve_dequoted_address_a_quoted_local_part_stays_and_is_routed():
    # resolve.c: RESOLVE_FLAG_ROUTED for any `@`, `!` or `%` in the local part, quoted or not.
    closed = Canonicalizer(lambda domain: domain in OURS, "mx.example.com", "example.com", dequote=False)
    result = closed.resolve('"victim@elsewhere.example"@example.com')
    assert (result.address, result.routed) == ('"victim@elsewhere.example"@example.com', True)


def test_routing_operators_count_whatever_the_hacks_say():
    plain = Canonicalizer(lambda domain: domain in OURS, "mx.example.com", "example.com", percent_hack=False,
                          swap_bangpath=False)
    assert plain.resolve("victim%elsewhere.example@example.com").routed
    assert plain.resolve("elsewhere.example!victim@example.com").routed


def test_resolve_numeric_domain_brackets_an_ipv4_domain():
    numeric = Canonicalizer(lambda domain: domain in OURS | {"[192.0.2.1]"}, "mx.example.com", "example.com",
                            numeric_domain=True)
    assert (numeric.resolve("u@192.0.2.1").address, numeric.resolve("u@192.0.2.9").address) == (
        "u@[192.0.2.1]", "u@[192.0.2.9]")
    assert RESOLVE.resolve("u@192.0.2.9").address == "u@192.0.2.9"
