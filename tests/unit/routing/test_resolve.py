"""Transport values as transport(5) reads them, and the local/remote decision.

transport(5): a result is `transport:nexthop`; everything after the FIRST
colon is the next hop (which may itself contain colons: `[host]:port`,
`unix:/path`, error text). An empty next hop is allowed (`discard:`).
"""

import pytest

from mailferry.routing.resolve import Resolver, Route, parse_transport


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


@pytest.fixture
def resolver():
    return Resolver("lmtp:unix:/var/run/dovecot/lmtp", "smtp:[smtp.gmail.com]:587",
                    lambda domain: domain.lower() in LOCAL_DOMAINS)


def test_a_domain_of_ours_goes_to_local_transport(resolver):
    assert resolver.resolve("bob@example.com") == Route("lmtp", "unix:/var/run/dovecot/lmtp")
    assert resolver.resolve("bob@mx.example.com") == Route("lmtp", "unix:/var/run/dovecot/lmtp")


def test_any_other_domain_goes_to_default_transport(resolver):
    assert resolver.resolve("carol@example.org") == Route("smtp", "[smtp.gmail.com]:587")
    # A subdomain of ours is not ours: mydestination lists whole names.
    assert resolver.resolve("carol@sub.example.com") == Route("smtp", "[smtp.gmail.com]:587")


def test_a_bare_local_part_is_local(resolver):
    assert resolver.resolve("postmaster") == Route("lmtp", "unix:/var/run/dovecot/lmtp")


def test_the_domain_is_what_follows_the_last_at_sign():
    asked = []

    def is_local(domain):
        asked.append(domain)
        return domain == "example.com"

    resolver = Resolver("discard:", "smtp", is_local)
    assert resolver.resolve('"a@b"@example.com') == Route("discard", "")
    assert asked == ["example.com"]
