"""The SMTP/LMTP client's source address and host lookup, through the real daemon:
smtp_bind_address(6) and _enforce, smtp_address_preference, smtp_host_lookup,
smtp_dns_support_level (and their lmtp_ twins), as Postfix's smtp(8) has them.

Peers: smtp-sink (its dump files say which source address it saw: X-Client-Addr) and
dnsmasq. The lookup daemon runs in a private mount namespace (`unshare -m`) where
/etc/resolv.conf names a loopback address nothing answers on: getaddrinfo ("native")
then knows only /etc/hosts (its `vm` entry), and no query can leave the machine.
The machine's own /etc/resolv.conf and /etc/hosts are never changed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import sys
import time

import pytest

from mailferry.delivery.dns import HostLookup, NexthopResolver
from tests.integration.conftest import Daemon, base_main_cf, smtpd_master_cf, stop_daemons, world_readable_tempdir
from tests.integration.test_delivery import wait_for_line
from tests.peers import free_port, require_tool

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

HOSTS_ONLY_NAME = "vm"          # in this machine's /etc/hosts (127.0.0.1), unknown to the test's dnsmasq
DUAL = "dual.test"              # only dnsmasq knows it: A 127.0.0.5 and AAAA ::1
BALANCED = "bal.test"           # A 127.0.0.5, AAAA ::1 and ::ffff:127.0.0.6 (nothing listens on either)
NON_LOCAL = "192.0.2.1"         # TEST-NET-1: binding it fails (no packet is ever sent)


def send(daemon, recipient: str) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail("alice@example.test", [recipient], f"To: <{recipient}>\r\nSubject: t\r\n\r\nhi\r\n") == {}


def sunk_from(sink, recipient: str) -> str:
    """The source address smtp-sink saw for the message to `recipient`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            messages = sink.messages()
        except AssertionError:      # a dump smtp-sink is still writing: look again
            messages = []
        for message in messages:
            if recipient in message.recipients:
                return message.client_addr
        time.sleep(0.05)
    raise AssertionError(f"no message for {recipient} at the sink; it has {[m.recipients for m in sink.messages()]}")


def routes(table: dict[str, str]) -> str:
    return "inline:{ " + ", ".join(f"{domain}={route}" for domain, route in table.items()) + " }"


# smtp_bind_address, smtp_bind_address6, smtp_bind_address_enforce, lmtp_bind_address

def test_the_peer_sees_the_bound_source_address(daemon_factory, smtp_sink_factory):
    sink = smtp_sink_factory()
    lmtp_sink = smtp_sink_factory(lmtp=True)
    services = ("bound3 unix - - n - - smtp -o smtp_bind_address=127.0.0.3\n"
                f"nonlocal unix - - n - - smtp -o smtp_bind_address={NON_LOCAL}\n"
                f"enforced unix - - n - - smtp -o smtp_bind_address={NON_LOCAL} -o smtp_bind_address_enforce=yes\n"
                "wrong6 unix - - n - - smtp -o smtp_bind_address6=127.0.0.9\n")
    daemon = daemon_factory(
        extra_services=services, smtp_bind_address="127.0.0.2", lmtp_bind_address="[127.0.0.4]",
        transport_maps=routes({"main.example": f"smtp:{sink.nexthop}", "option.example": f"bound3:{sink.nexthop}",
                               "lmtp.example": f"lmtp:inet:{lmtp_sink.nexthop}",
                               "nonlocal.example": f"nonlocal:{sink.nexthop}",
                               "enforced.example": f"enforced:{sink.nexthop}",
                               "wrong6.example": f"wrong6:{sink.nexthop}"}),
        minimal_backoff_time="300s", maximal_backoff_time="600s").start()
    for domain in ("main", "option", "lmtp", "nonlocal", "enforced", "wrong6"):
        send(daemon, f"bob@{domain}.example")
    assert sunk_from(sink, "bob@main.example") == "127.0.0.2"          # main.cf
    assert sunk_from(sink, "bob@option.example") == "127.0.0.3"        # master.cf -o
    assert sunk_from(lmtp_sink, "bob@lmtp.example") == "127.0.0.4"     # lmtp_bind_address, [brackets] allowed
    # Not enforced: Postfix warns and connects from the system's choice of address.
    assert sunk_from(sink, "bob@nonlocal.example") == "127.0.0.1"
    wait_for_line(daemon, rf"mailferry/nonlocal\[\d+\]: warning: smtp_connect_addr: bind {re.escape(NON_LOCAL)}: "
                          r"Cannot assign requested address")
    # Enforced: the mail waits, Postfix's text.
    wait_for_line(daemon, r"to=<bob@enforced\.example>.*dsn=4\.4\.0, status=deferred \(server configuration error\)")
    # An IPv4 address in smtp_bind_address6 is a configuration error: that transport waits, the others work.
    line = wait_for_line(daemon, r"to=<bob@wrong6\.example>.*status=deferred \(mail transport unavailable: (.*)\)")
    assert "smtp_bind_address6" in line.group(1) and "127.0.0.9" in line.group(1)
    assert "bob@enforced.example" not in [r for m in sink.wait_for_messages(3) for r in m.recipients]


# Host lookup: a daemon that cannot reach any DNS server but the test's dnsmasq

@pytest.fixture
def lookup_dns(dns_server_factory):
    # BALANCED's second AAAA is an IPv4-mapped loopback address: a second IPv6 address that stays on this machine
    return dns_server_factory(a={DUAL: "127.0.0.5", BALANCED: "127.0.0.5"},
                              aaaa={DUAL: "::1", BALANCED: ["::1", "::ffff:127.0.0.6"]}, zones=("test", HOSTS_ONLY_NAME))


@pytest.fixture
def namespaced_daemon(lookup_dns):
    """A daemon in its own mount namespace whose /etc/resolv.conf points at a dead loopback address."""
    unshare = require_tool("unshare")
    directory = world_readable_tempdir("mailferry-lookup-")
    resolv = directory / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.254\noptions timeout:1 attempts:1\n")
    made = []

    def make(extra_services: str = "", **extra: str) -> Daemon:
        port = free_port()
        program = [unshare, "-m", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh",
                   sys.executable, "-m", "mailferry"]
        daemon = Daemon(directory / f"d{len(made)}", base_main_cf(directory / f"d{len(made)}", **extra),
                        smtpd_master_cf(port, "", extra_services), port, lookup_dns.nameserver, program=program)
        made.append(daemon)
        return daemon.start()
    yield make
    stop_daemons(made)
    shutil.rmtree(directory, ignore_errors=True)


def test_address_preference_host_lookup_and_dns_support_level(namespaced_daemon, smtp_sink_factory):
    v4_sink = smtp_sink_factory(host="127.0.0.5")            # dual.test's A record
    hosts_sink = smtp_sink_factory()                         # 127.0.0.1, what /etc/hosts says `vm` is
    dual = f"{DUAL}:{v4_sink.port}"                          # no brackets: MX lookup, then A/AAAA
    vm = f"[{HOSTS_ONLY_NAME}]:{hosts_sink.port}"
    one = "-o smtp_mx_address_limit=1"                       # only the first address is tried: the order shows
    services = (f"v6first unix - - n - - smtp -o smtp_address_preference=ipv6 {one}\n"
                f"v4first unix - - n - - smtp -o smtp_address_preference=ipv4 {one}\n"
                "native unix - - n - - smtp -o smtp_host_lookup=native\n"
                "both unix - - n - - smtp -o smtp_host_lookup=dns,native\n"
                "nodns unix - - n - - smtp -o smtp_dns_support_level=disabled\n"
                "dnssec unix - - n - - smtp -o smtp_dns_support_level=dnssec -o smtp_address_preference=ipv4\n"
                "lmtpnative unix - - n - - lmtp -o lmtp_host_lookup=native\n"
                "v6bal unix - - n - - smtp -o smtp_address_preference=ipv6 -o smtp_mx_address_limit=2\n"
                "v6nobal unix - - n - - smtp -o smtp_address_preference=ipv6 -o smtp_mx_address_limit=2 "
                "-o smtp_balance_inet_protocols=no\n")
    lmtp_sink = smtp_sink_factory(lmtp=True)
    daemon = namespaced_daemon(
        extra_services=services, minimal_backoff_time="300s", maximal_backoff_time="600s", inet_protocols="all",
        transport_maps=routes({
            "v6.example": f"v6first:{dual}", "v4.example": f"v4first:{dual}",
            "dnsonly.example": f"smtp:{vm}", "native.example": f"native:{vm}",
            "nativedual.example": f"native:[{DUAL}]:{v4_sink.port}", "both.example": f"both:{vm}",
            "nodns.example": f"nodns:{vm}", "nodnsdual.example": f"nodns:{dual}",
            "dnssec.example": f"dnssec:{dual}",
            "bal.example": f"v6bal:{BALANCED}:{v4_sink.port}", "nobal.example": f"v6nobal:{BALANCED}:{v4_sink.port}",
            "lmtp.example": f"lmtpnative:inet:[{HOSTS_ONLY_NAME}]:{lmtp_sink.port}"}))
    for domain in ("v6", "v4", "dnsonly", "native", "nativedual", "both", "nodns", "nodnsdual", "dnssec", "lmtp", "bal", "nobal"):
        send(daemon, f"bob@{domain}.example")

    # smtp_address_preference: ipv6 tries ::1 first (nothing listens there), ipv4 the sink.
    wait_for_line(daemon, rf"to=<bob@v6\.example>.*status=deferred \(connect to {DUAL}\[::1\]:{v4_sink.port}: "
                          r"Connection refused\)")
    sunk_from(v4_sink, "bob@v4.example")
    # smtp_host_lookup = dns (default): DNS does not know `vm`: Postfix's NXDOMAIN bounce.
    wait_for_line(daemon, rf"to=<bob@dnsonly\.example>.*dsn=5\.4\.4, status=bounced \(Host or domain name not "
                          rf"found\. Name service error for name={HOSTS_ONLY_NAME} type=(A|AAAA): Host not found\)")
    # native: /etc/hosts finds it; a name only DNS knows is not found (the resolver is unreachable).
    sunk_from(hosts_sink, "bob@native.example")
    wait_for_line(daemon, rf"to=<bob@nativedual\.example>.*dsn=4\.4\.4, status=deferred \(unable to look up "
                          rf"host {re.escape(DUAL)}: Temporary failure in name resolution\)")
    # dns, native: DNS says no such host, getaddrinfo finds it.
    sunk_from(hosts_sink, "bob@both.example")
    # smtp_dns_support_level = disabled: no DNS, native lookup, no MX lookup.
    sunk_from(hosts_sink, "bob@nodns.example")
    wait_for_line(daemon, rf"to=<bob@nodnsdual\.example>.*status=deferred \(unable to look up host "
                          rf"{re.escape(DUAL)}: Temporary failure in name resolution\)")
    # dnssec without a validating resolver: Postfix's two warnings, then mail flows as with `enabled`.
    sunk_from(v4_sink, "bob@dnssec.example")
    log = daemon.log()
    assert re.search(r"mailferry/dnssec\[\d+\]: warning: DNSSEC validation may be unavailable", log)
    assert re.search(r"mailferry/dnssec\[\d+\]: warning: reason: dnssec_probe 'ns:\.' received no response: ", log)
    assert log.count("DNSSEC validation may be unavailable") == 1
    # The LMTP twin.
    sunk_from(lmtp_sink, "bob@lmtp.example")
    # smtp_balance_inet_protocols: with a limit of 2 and IPv6 first, the default keeps one address of
    # each family, so the IPv4 sink gets the mail; without it, only the two IPv6 addresses are tried.
    sunk_from(v4_sink, "bob@bal.example")
    wait_for_line(daemon, r"to=<bob@nobal\.example>.*status=deferred \(connect to bal\.test\[(::1|::ffff:127\.0\.0\.6)\]")


# The resolver itself against dnsmasq: address order and inet_protocols

def targets(server, lookup: HostLookup, **options) -> list[str]:
    resolver = NexthopResolver(server.nameservers, timeout=2, **options)
    return [target.address for target in asyncio.run(resolver.targets(DUAL, 25, True, lookup))]


def test_address_preference_orders_families_within_inet_protocols(dns_server_factory):
    server = dns_server_factory(a={DUAL: ["127.0.0.5", "127.0.0.6"]}, aaaa={DUAL: ["::1", "::2"]})
    for _ in range(5):      # shuffled each time; the family order holds every time
        v6 = targets(server, HostLookup(preference="ipv6"))
        v4 = targets(server, HostLookup(preference="ipv4"))
        assert [":" in address for address in v6] == [True, True, False, False]
        assert [":" in address for address in v4] == [False, False, True, True]
    assert sorted(targets(server, HostLookup(preference="ipv6"), inet_protocols=("ipv4",))) == ["127.0.0.5",
                                                                                               "127.0.0.6"]
    assert sorted(targets(server, HostLookup(preference="ipv4"), inet_protocols=("ipv6",))) == ["::1", "::2"]
    assert sorted(targets(server, HostLookup())) == ["127.0.0.5", "127.0.0.6", "::1", "::2"]
