"""`mailferry trace` against real peers.

The seed's directory (issue 9, "Done when" 6): the real command, the seed's ldap-aliases.cf
(server_host pointed at the two slapd peers), each of John Smith's five addresses shown with its
LDAP lookup and its final route; an unknown address shown refused with 550 5.1.1; both
directories down shown as a temporary failure and a 451 4.3.0. And `--mx` asking the DNS server
that MAILFERRY_NAMESERVERS names (dnsmasq)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import seed_file, write
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

# Mailboxes over LMTP: local(8)'s passwd and aliases do not know them, so the RCPT-time check is off.
LOCAL = ("myhostname = mail1.internal\nmydestination = $myhostname\nmailbox_transport = lmtp:unix:/run/dovecot/lmtp\n"
         "local_recipient_maps =\n")
GATEWAY = "myhostname = gateway.example.com\nmydestination = $myhostname\n"


@pytest.fixture
def ldap_file(slapd_pair_restored, tmp_path) -> Path:
    first, second = slapd_pair_restored
    return write(tmp_path / "ldap-aliases.cf", seed_file("ldap-aliases.cf").replace(
        "ldap://ldap1.internal/ ldap://ldap2.internal/", f"{first.url} {second.url}"), 0o644)


def configure(directory: Path, ldap_file: Path, main_cf: str) -> Path:
    write(directory / "main.cf", main_cf + "mynetworks = 127.0.0.0/8\nvirtual_alias_domains = example.com\n"
          f"virtual_alias_maps = ldap:{ldap_file}\n")
    write(directory / "master.cf", "")
    return directory


def lookup_line(ldap_file: Path, key: str, result: str) -> re.Pattern:
    return re.compile(rf"^  lookup ldap:{re.escape(str(ldap_file))} key {re.escape(key)}: {re.escape(result)}"
                      r" \(\d+\.\d ms\)$", re.M)


@pytest.mark.parametrize("address", SEED_ADDRESSES)
def test_each_seed_address_shows_the_ldap_lookup_and_local_delivery_via_the_mailbox_transport(
        address, ldap_file, tmp_path, mailferry):
    (tmp_path / "local").mkdir()
    config = configure(tmp_path / "local", ldap_file, LOCAL)
    result = mailferry("trace", address, config_dir=config)
    assert result.code == 0, result.out + result.err
    assert lookup_line(ldap_file, address, f"found {SEED_ROUTING_ADDRESS}").search(result.out), result.out
    assert f"virtual_alias_maps: {address} -> {SEED_ROUTING_ADDRESS}\n" in result.out
    assert ("address class: local (domain mail1.internal matches mydestination); local delivery, via"
            " mailbox_transport = lmtp:unix:/run/dovecot/lmtp\n") in result.out
    assert f"route: {SEED_ROUTING_ADDRESS} -> transport lmtp, next hop unix:/run/dovecot/lmtp\n" in result.out


@pytest.mark.parametrize("address", SEED_ADDRESSES)
def test_on_another_host_each_seed_address_is_relayed_to_the_mailbox_host(address, ldap_file, tmp_path, mailferry):
    (tmp_path / "gateway").mkdir()
    config = configure(tmp_path / "gateway", ldap_file, GATEWAY)
    result = mailferry("trace", "--json", address, config_dir=config)
    assert result.code == 0, result.err
    events = json.loads(result.out)["events"]
    found = [event for event in events if event["kind"] == "lookup" and event["status"] == "found"]
    assert (found[0]["table"], found[0]["key"], found[0]["value"]) == (
        f"ldap:{ldap_file}", address, SEED_ROUTING_ADDRESS)
    route = [event for event in events if event["kind"] == "route"]
    assert [(event["address"], event["transport"], event["nexthop"]) for event in route] == [
        (SEED_ROUTING_ADDRESS, "smtp", "mail1.internal")]
    dns = [event for event in events if event["kind"] == "dns"]
    assert [(event["host"], event["mx"], event["queried"]) for event in dns] == [("mail1.internal", True, False)]


def test_with_a_relayhost_the_mailbox_host_is_reached_through_it(ldap_file, tmp_path, mailferry):
    (tmp_path / "gateway").mkdir()
    config = configure(tmp_path / "gateway", ldap_file, GATEWAY + "relayhost = [smarthost.example.com]:587\n")
    result = mailferry("trace", SEED_ADDRESSES[0], config_dir=config)
    assert "next hop [smarthost.example.com]:587: relayhost\n" in result.out
    assert f"route: {SEED_ROUTING_ADDRESS} -> transport smtp, next hop [smarthost.example.com]:587\n" in result.out


def test_an_unknown_address_says_it_would_be_rejected_with_550(ldap_file, tmp_path, mailferry):
    (tmp_path / "local").mkdir()
    config = configure(tmp_path / "local", ldap_file, LOCAL)
    result = mailferry("trace", "nobody@example.com", config_dir=config)
    assert result.code == 1
    assert lookup_line(ldap_file, "nobody@example.com", "not found").search(result.out), result.out
    assert result.out.rstrip().splitlines()[-1] == (
        "smtpd_reject_unlisted_recipient: RCPT TO would be rejected: 550 5.1.1 <nobody@example.com>:"
        " Recipient address rejected: User unknown in virtual alias table")


def test_both_directories_down_shows_the_temporary_failure_and_the_451(
        ldap_file, slapd_pair_restored, tmp_path, mailferry):
    (tmp_path / "local").mkdir()
    config = configure(tmp_path / "local", ldap_file, LOCAL)
    for slapd in slapd_pair_restored:
        slapd.stop()
    result = mailferry("trace", SEED_ADDRESSES[0], config_dir=config)
    assert result.code == 1
    failure = re.search(rf"^  lookup ldap:{re.escape(str(ldap_file))} key {re.escape(SEED_ADDRESSES[0])}:"
                        r" temporary failure (.+) \(\d+\.\d ms\)$", result.out, re.M)
    assert failure, result.out
    for slapd in slapd_pair_restored:
        assert slapd.url in failure.group(1)
    assert result.out.rstrip().splitlines()[-1] == (
        f"smtpd_reject_unlisted_recipient: RCPT TO would be deferred: 451 4.3.0 <{SEED_ADDRESSES[0]}>:"
        " Temporary lookup failure")
    assert "route:" not in result.out


def test_mx_flag_asks_the_nameserver_of_mailferry_nameservers(dns_server_factory, tmp_path, mailferry, monkeypatch):
    server = dns_server_factory(mx={"mailhost.test": [(10, "mx1.mailhost.test")]}, a={"mx1.mailhost.test": "127.0.0.3"})
    write(tmp_path / "main.cf", GATEWAY)
    write(tmp_path / "master.cf", "")
    monkeypatch.setenv("MAILFERRY_NAMESERVERS", server.nameserver)
    without = mailferry("trace", "someone@mailhost.test", config_dir=tmp_path)
    assert (f"DNS: would query MX mailhost.test (then A/AAAA of each MX host; A/AAAA mailhost.test if it has none),"
            f" port 25, servers {server.nameserver}; --mx to ask now\n") in without.out
    assert "DNS: mx1" not in without.out
    asked = mailferry("trace", "--mx", "someone@mailhost.test", config_dir=tmp_path)
    assert asked.code == 0, asked.err
    assert "DNS: mx1.mailhost.test (MX preference 10) -> 127.0.0.3 port 25\n" in asked.out
