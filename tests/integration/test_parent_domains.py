"""parent_domain_matches_subdomains in the real daemon: relay_domains and check_recipient_access.

By default both are in the list: `example.com` matches `sub.example.com` and `.example.net`
matches nothing (match_ops.c match_hostname; Postfix 3.7 on this machine answered the same
RCPTs the same way, see tests/unit/tables/test_match_lists.py). Taken out of the list, a name
matches only itself and `.example.net` is what matches the subdomains; an access map is then
asked `.example.org` rather than `example.org` for a subdomain.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.integration.test_rewriting import table, tables_directory  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

RECIPIENTS = ["a@sub.example.com", "a@sub.example.net", "a@example.com", "a@sub.blocked.test",
              "a@sub.dotted.test"]


def replies(daemon) -> dict[str, int]:
    """Each RCPT's reply code, from a client outside mynetworks."""
    codes = {}
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("s@client.test")
        for recipient in RECIPIENTS:
            codes[recipient] = client.rcpt(recipient)[0]
    return codes


def start(daemon_factory, directory, **extra):
    access = table(directory, "access", "blocked.test  REJECT\n.dotted.test  REJECT\n")
    return daemon_factory(mynetworks="192.0.2.0/24", relay_domains="example.com, .example.net, blocked.test,"
                                                                    " dotted.test",
                          smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
                          smtpd_recipient_restrictions=f"check_recipient_access {access}", **extra).start()


def test_by_default_a_name_matches_its_subdomains(daemon_factory, tables_directory):
    assert replies(start(daemon_factory, tables_directory)) == {
        "a@sub.example.com": 250, "a@sub.example.net": 554, "a@example.com": 250,
        "a@sub.blocked.test": 554, "a@sub.dotted.test": 250}


def test_relay_domains_out_of_the_list_a_name_matches_only_itself_and_dot_name_the_subdomains(daemon_factory, tables_directory):
    daemon = start(daemon_factory, tables_directory,
                   parent_domain_matches_subdomains="debug_peer_list, smtpd_access_maps")
    # sub.blocked.test and sub.dotted.test are no relay domains now (blocked.test and dotted.test
    # match only themselves): Relay access denied for both, before the access map is asked.
    assert replies(daemon) == {
        "a@sub.example.com": 554, "a@sub.example.net": 250, "a@example.com": 250,
        "a@sub.blocked.test": 554, "a@sub.dotted.test": 554}
    assert "<a@sub.example.com>: Relay access denied" in daemon.wait_for_log("a@sub.example.com")


def test_smtpd_access_maps_out_of_the_list_ask_the_dotted_parent(daemon_factory, tables_directory):
    daemon = start(daemon_factory, tables_directory, parent_domain_matches_subdomains="relay_domains")
    # The relay check is as by default; the access map now matches sub.dotted.test by its
    # `.dotted.test` entry, and its `blocked.test` entry no longer matches sub.blocked.test.
    assert replies(daemon) == {
        "a@sub.example.com": 250, "a@sub.example.net": 554, "a@example.com": 250,
        "a@sub.blocked.test": 250, "a@sub.dotted.test": 554}
    assert "<a@sub.dotted.test>: Recipient address rejected: Access denied" in daemon.wait_for_log(
        "a@sub.dotted.test")
