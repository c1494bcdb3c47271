"""NexthopResolver (mailferry.delivery.dns) against a real DNS server: dnsmasq on loopback.

Every resolver here is given its nameserver explicitly; no test reads /etc/resolv.conf.
"""

from __future__ import annotations

import asyncio
import socket

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from mailferry.delivery.dns import DnsError, NexthopResolver, Target, parse_nameservers
from tests.peers import free_port

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

IPV4 = ("ipv4",)
NXDOMAIN_A = "Host or domain name not found. Name service error for name={} type=A: Host not found"
TRY_AGAIN = "Host or domain name not found. Name service error for name={} type={}: Host not found, try again"


def lookup(resolver: NexthopResolver, host: str, use_mx: bool = True, port: int = 25) -> list[Target]:
    return asyncio.run(resolver.targets(host, port, use_mx))


def failure(resolver: NexthopResolver, host: str, use_mx: bool = True) -> DnsError:
    with pytest.raises(DnsError) as caught:
        lookup(resolver, host, use_mx)
    return caught.value


def resolver_for(server, **options) -> NexthopResolver:
    options.setdefault("timeout", 2)
    return NexthopResolver(server.nameservers, **options)


@pytest.fixture
def broken_dns(dns_server_factory):
    """A server where broken.test answers SERVFAIL and silent.test never answers."""
    return dns_server_factory(
        mx={"soft.test": [(10, "mx.broken.test"), (20, "gone.soft.test")],
            "partly.test": [(10, "mx.broken.test"), (20, "mx.partly.test")]},
        a={"mx.partly.test": "127.0.0.6"},
        servfail=("broken.test",), unanswered=("silent.test",))


# What dnsmasq itself answers (the module docstring of tests.peers.dns relies on these).

def ask(server, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), server.host, port=server.port, timeout=2)


def test_dnsmasq_answers_what_the_peer_documents(dns_server):
    assert ask(dns_server, "nothere.test", "MX").rcode() == dns.rcode.NXDOMAIN
    assert ask(dns_server, "outside.invalid", "MX").rcode() == dns.rcode.REFUSED
    plain = ask(dns_server, "plain.test", "MX")
    assert (plain.rcode(), plain.answer) == (dns.rcode.NOERROR, [])  # no data
    [null_mx] = ask(dns_server, "nullmx.test", "MX").answer
    assert [(record.preference, record.exchange.to_text()) for record in null_mx] == [(0, ".")]
    assert null_mx.ttl == 60


def test_dnsmasq_servfail_and_silence(broken_dns):
    assert ask(broken_dns, "broken.test", "MX").rcode() == dns.rcode.SERVFAIL
    assert ask(broken_dns, "mx.broken.test", "A").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("silent.test", "MX"), broken_dns.host, port=broken_dns.port,
                      timeout=0.5)


# MX lookups

def test_mx_hosts_in_preference_order(dns_server):
    for protocols in (IPV4, ("ipv4", "ipv6"), ("all",)):
        assert lookup(resolver_for(dns_server, inet_protocols=protocols), "example.test") == [
            Target("mx1.example.test", "127.0.0.3", 25, 10),
            Target("mx2.example.test", "127.0.0.4", 25, 20),
        ]


def test_names_are_case_insensitive_and_absolute(dns_server):
    targets = lookup(resolver_for(dns_server), "Example.TEST.", port=2525)
    assert [(target.hostname, target.port) for target in targets] == [("mx1.example.test", 2525),
                                                                       ("mx2.example.test", 2525)]


def test_no_mx_falls_back_to_the_domains_address(dns_server):
    assert lookup(resolver_for(dns_server), "plain.test") == [Target("plain.test", "127.0.0.5", 25, None)]


def test_without_mx_lookup_the_host_itself_is_used(dns_server):
    resolver = resolver_for(dns_server, inet_protocols=IPV4)
    assert lookup(resolver, "mx2.example.test", use_mx=False) == [
        Target("mx2.example.test", "127.0.0.4", 25, None)]
    error = failure(resolver, "example.test", use_mx=False)  # it has MX records, but no address
    assert (error.temporary, error.dsn) == (False, "5.4.4")
    assert error.text == ("Host or domain name not found. Name service error for name=example.test type=A: "
                          "Host found but no data record of requested type")


class RecordingNameserver:
    """A UDP and a TCP socket on one loopback port that never answer: they only keep what arrives."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen()
        for sock in (self.udp, self.tcp):
            sock.setblocking(False)

    def received(self) -> list[str]:
        """What reached it so far. On loopback a datagram or a connection is
        queued here before the sender's call returns."""
        arrived = []
        try:
            arrived.append(f"UDP {self.udp.recv(4096)!r}")
        except BlockingIOError:
            pass
        try:
            connection, _ = self.tcp.accept()
            connection.close()
            arrived.append("a TCP connection")
        except BlockingIOError:
            pass
        return arrived

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def test_ip_literal_needs_no_dns():
    nameserver = RecordingNameserver()
    try:
        nobody_answers = NexthopResolver([("127.0.0.1", nameserver.port)], timeout=0.5)
        assert lookup(nobody_answers, "127.0.0.9", port=587) == [Target("127.0.0.9", "127.0.0.9", 587, None)]
        assert lookup(nobody_answers, "::1", use_mx=False) == [Target("::1", "::1", 25, None)]
        # Both lookups have returned: any query they made would be waiting here.
        assert nameserver.received() == []
    finally:
        nameserver.close()


def test_ip_literal_of_a_disabled_protocol_is_refused():
    resolver = NexthopResolver([("127.0.0.1", free_port())], inet_protocols=IPV4, timeout=0.5)
    error = failure(resolver, "::1")
    assert (error.temporary, error.dsn) == (False, "5.4.4")


def test_address_families_follow_inet_protocols(dns_server_factory):
    server = dns_server_factory(a={"dual.test": "127.0.0.10", "v4.test": "127.0.0.11"}, aaaa={"dual.test": "::1"})
    addresses = {protocols: [target.address for target in lookup(resolver_for(server, inet_protocols=protocols),
                                                                  "dual.test")]
                 for protocols in (IPV4, ("ipv6",), ("all",))}
    assert addresses[IPV4] == ["127.0.0.10"]
    assert addresses[("ipv6",)] == ["::1"]
    assert sorted(addresses[("all",)]) == ["127.0.0.10", "::1"]
    error = failure(resolver_for(server, inet_protocols=("ipv6",)), "v4.test")
    assert (error.temporary, error.dsn) == (False, "5.4.4")
    assert error.text.endswith("name=v4.test type=AAAA: Host found but no data record of requested type")


# Permanent errors

def test_null_mx_bounces(dns_server):
    error = failure(resolver_for(dns_server), "nullmx.test")
    assert (error.temporary, error.dsn) == (False, "5.1.10")
    assert error.text == str(error) == "Domain nullmx.test does not accept mail (nullMX)"


def test_nxdomain_bounces(dns_server):
    error = failure(resolver_for(dns_server, inet_protocols=IPV4), "nothere.test")
    assert (error.temporary, error.dsn, error.text) == (False, "5.4.4", NXDOMAIN_A.format("nothere.test"))
    dual_stack = failure(resolver_for(dns_server), "nothere.test")
    assert dual_stack.text.endswith("name=nothere.test type=AAAA: Host not found")  # Postfix names the last type


def test_mx_host_without_address_is_skipped(dns_server_factory, broken_dns):
    server = dns_server_factory(mx={"mixed.test": [(5, "gone.mixed.test"), (10, "mx.mixed.test")]},
                                a={"mx.mixed.test": "127.0.0.7"})
    assert lookup(resolver_for(server), "mixed.test") == [Target("mx.mixed.test", "127.0.0.7", 25, 10)]
    assert lookup(resolver_for(broken_dns), "partly.test") == [Target("mx.partly.test", "127.0.0.6", 25, 20)]


def test_no_mx_host_with_an_address_bounces_as_postfix_does(dns_server):
    error = failure(resolver_for(dns_server, inet_protocols=IPV4), "noaddr.test")
    assert (error.temporary, error.dsn) == (False, "5.4.4")
    assert error.text == NXDOMAIN_A.format("nowhere.noaddr.test")
    deferring = resolver_for(dns_server, inet_protocols=IPV4, defer_if_no_mx_address_found=True)
    error = failure(deferring, "noaddr.test")
    assert (error.temporary, error.dsn) == (True, "4.4.4")


# Temporary errors

def test_servfail_waits(broken_dns):
    resolver = resolver_for(broken_dns, inet_protocols=IPV4)
    error = failure(resolver, "broken.test")
    assert (error.temporary, error.dsn, error.text) == (True, "4.4.3", TRY_AGAIN.format("broken.test", "MX"))
    error = failure(resolver, "mx.broken.test", use_mx=False)
    assert (error.temporary, error.dsn, error.text) == (True, "4.4.3", TRY_AGAIN.format("mx.broken.test", "A"))


def test_one_temporary_mx_failure_makes_the_whole_lookup_temporary(broken_dns):
    # mx.broken.test fails temporarily, gone.soft.test does not exist: Postfix defers (4.4.4)
    # with the last host's text.
    error = failure(resolver_for(broken_dns, inet_protocols=IPV4), "soft.test")
    assert (error.temporary, error.dsn, error.text) == (True, "4.4.4", NXDOMAIN_A.format("gone.soft.test"))


def test_refused_waits(dns_server):
    error = failure(resolver_for(dns_server), "outside.invalid")
    assert (error.temporary, error.dsn, error.text) == (True, "4.4.3", TRY_AGAIN.format("outside.invalid", "MX"))


def test_no_answer_waits_no_longer_than_the_timeout(broken_dns):
    """Two lookups of a name nobody answers: the one with the longer timeout
    starts first, yet the one with timeout=1 gives up while it still waits."""
    async def race():
        patient = asyncio.ensure_future(resolver_for(broken_dns, timeout=30).targets("silent.test", 25, True))
        await asyncio.sleep(0)                      # its lookup (and its lifetime) has begun
        hasty = asyncio.ensure_future(resolver_for(broken_dns, timeout=1).targets("silent.test", 25, True))
        done, _ = await asyncio.wait({patient, hasty}, return_when=asyncio.FIRST_COMPLETED)
        still_waiting = not patient.done()
        error = hasty.exception() if hasty.done() else None
        for lookup_task in (patient, hasty):
            lookup_task.cancel()
        return done == {hasty}, still_waiting, error

    only_hasty_done, patient_still_waiting, error = asyncio.run(race())
    assert only_hasty_done and patient_still_waiting
    assert isinstance(error, DnsError)
    assert (error.temporary, error.dsn, error.text) == (True, "4.4.3", TRY_AGAIN.format("silent.test", "MX"))


def test_no_server_listening_waits():
    error = failure(NexthopResolver([("127.0.0.1", free_port())], timeout=0.5), "example.test")
    assert (error.temporary, error.dsn) == (True, "4.4.3")


# Limits, order, cache

def test_mx_address_limit(dns_server_factory):
    server = dns_server_factory(
        mx={"many.test": [(10, "a.many.test"), (20, "b.many.test"), (30, "c.many.test")]},
        a={"a.many.test": ["127.0.1.1", "127.0.1.2"], "b.many.test": ["127.0.2.1", "127.0.2.2"],
           "c.many.test": ["127.0.3.1", "127.0.3.2"], "wide.test": ["127.0.4.1", "127.0.4.2", "127.0.4.3"]})
    limited = lookup(resolver_for(server, mx_address_limit=3), "many.test")
    assert [target.hostname for target in limited] == ["a.many.test", "a.many.test", "b.many.test"]
    assert [target.preference for target in limited] == [10, 10, 20]
    assert len(lookup(resolver_for(server), "many.test")) == 5  # Postfix's default
    assert len(lookup(resolver_for(server, mx_address_limit=0), "many.test")) == 6
    assert len(lookup(resolver_for(server, mx_address_limit=2), "wide.test")) == 2  # the limit is not MX-only


def test_equal_preferences_are_shuffled(dns_server_factory):
    server = dns_server_factory(mx={"equal.test": [(10, "one.equal.test"), (10, "two.equal.test"),
                                                   (20, "backup.equal.test")]},
                                a={"one.equal.test": "127.0.0.21", "two.equal.test": "127.0.0.22",
                                   "backup.equal.test": "127.0.0.23"})
    resolver = resolver_for(server)
    orders = set()
    for _ in range(40):
        targets = lookup(resolver, "equal.test")
        assert targets[-1].hostname == "backup.equal.test"
        orders.add(tuple(target.hostname for target in targets[:2]))
    assert orders == {("one.equal.test", "two.equal.test"), ("two.equal.test", "one.equal.test")}


def test_answers_are_cached(dns_server_factory):
    server = dns_server_factory(mx={"cached.test": [(10, "mx.cached.test")]}, a={"mx.cached.test": "127.0.0.8"})
    resolver = resolver_for(server, inet_protocols=IPV4, timeout=0.5)
    first = lookup(resolver, "cached.test")
    server.stop()
    assert lookup(resolver, "cached.test") == first == [Target("mx.cached.test", "127.0.0.8", 25, 10)]
    assert failure(resolver, "other.test").temporary  # not cached: the server is gone


# MAILFERRY_NAMESERVERS

def test_from_environment_uses_mailferry_nameservers(dns_server, monkeypatch):
    monkeypatch.setenv("MAILFERRY_NAMESERVERS", dns_server.nameserver)
    resolver = NexthopResolver.from_environment(inet_protocols=IPV4, timeout=2)
    assert [target.address for target in lookup(resolver, "example.test")] == ["127.0.0.3", "127.0.0.4"]
    explicit = NexthopResolver.from_environment({"MAILFERRY_NAMESERVERS": f" , {dns_server.nameserver} "},
                                                mx_address_limit=1, timeout=2)
    assert lookup(explicit, "example.test") == [Target("mx1.example.test", "127.0.0.3", 25, 10)]


def test_none_turns_dns_off_but_address_literals_still_work():
    resolver = NexthopResolver.from_environment({"MAILFERRY_NAMESERVERS": "None"}, inet_protocols=IPV4)
    with pytest.raises(DnsError) as failure:
        lookup(resolver, "example.test")
    assert failure.value.temporary and failure.value.dsn == "4.4.3"
    assert "MAILFERRY_NAMESERVERS=none" in failure.value.text
    assert lookup(resolver, "127.0.0.9") == [Target("127.0.0.9", "127.0.0.9", 25, None)]


def test_nameservers_syntax():
    assert parse_nameservers("127.0.0.1:5353 [::1]:53") == [("127.0.0.1", 5353), ("::1", 53)]
    assert parse_nameservers("127.0.0.1,127.0.0.2:54, [::1] ::1") == [
        ("127.0.0.1", 53), ("127.0.0.2", 54), ("::1", 53), ("::1", 53)]
    assert parse_nameservers(" ") == []
    for bad in ("localhost", "127.0.0.1:domain", "127.0.0.1:0", "[::1]:99999", "300.1.1.1"):
        with pytest.raises(ValueError):
            parse_nameservers(bad)
