"""delivery/settings.py: which main.cf timeouts and limits the SMTP/LMTP client runs with."""

from __future__ import annotations

import pytest

from mailferry.config.config import Config, ConfigValueError
from mailferry.config.maincf import parse_main_cf
from mailferry.delivery.dns import HostLookup
from mailferry.delivery.settings import ClientSettings


def settings(text: str, transport: str = "smtp", lmtp: bool = False) -> ClientSettings:
    config = Config("/nonexistent", parse_main_cf(text, "/nonexistent/main.cf"))
    return ClientSettings.from_config(config, transport, lmtp=lmtp)


def test_each_smtp_timeout_lands_where_the_client_waits():
    found = settings("smtp_connect_timeout = 7s\nsmtp_helo_timeout = 11s\nsmtp_mail_timeout = 13s\n"
                     "smtp_rcpt_timeout = 17s\nsmtp_data_init_timeout = 19s\nsmtp_data_done_timeout = 23s\n"
                     "smtp_data_xfer_timeout = 29s\n")
    assert (found.connect_timeout, found.helo_timeout, found.data_timeout) == (7.0, 11.0, 29.0)
    # One reply timeout for MAIL, RCPT, DATA and end of data: the longest of their four.
    assert found.reply_timeout == 23.0
    assert settings("smtp_mail_timeout = 900s").reply_timeout == 900.0


def test_lmtp_reads_its_own_parameters_and_connects_without_a_limit_by_default():
    found = settings("lmtp_lhlo_timeout = 5s\nsmtp_helo_timeout = 99s\n", lmtp=True)
    assert found.helo_timeout == 5.0
    assert found.connect_timeout is None        # lmtp_connect_timeout = 0s: no limit


def test_connection_reuse_limits_and_their_defaults():
    default = settings("")
    assert (default.cache_connections, default.cache_time_limit, default.reuse_time_limit,
            default.reuse_count_limit) == (True, 2.0, 300.0, 0)
    found = settings("smtp_connection_cache_on_demand = no\nsmtp_connection_cache_time_limit = 5s\n"
                     "smtp_connection_reuse_time_limit = 60s\nsmtp_connection_reuse_count_limit = 10\n")
    assert (found.cache_connections, found.cache_time_limit, found.reuse_time_limit,
            found.reuse_count_limit) == (False, 5.0, 60.0, 10)


def test_destination_limits_are_per_transport_with_the_default_behind():
    text = "default_destination_recipient_limit = 7\nrelay_destination_recipient_limit = 3\n" \
           "relay_destination_concurrency_limit = 2\n"
    assert (settings(text, "relay").recipient_limit, settings(text, "relay").concurrency_limit) == (3, 2)
    assert (settings(text, "smtp").recipient_limit, settings(text, "smtp").concurrency_limit) == (7, 20)
    assert settings("relay_destination_recipient_limit = 0", "relay").recipient_limit == 1_000_000


# Source address and host lookup (delivery/dns.py HostLookup; tests/integration/test_client_source_lookup.py
# proves them through the daemon)

def test_bind_addresses_are_numeric_and_of_their_own_family():
    found = settings("smtp_bind_address = [127.0.0.2]\nsmtp_bind_address6 = ::1\nsmtp_bind_address_enforce = yes\n")
    assert (found.bind_address, found.bind_address6, found.bind_address_enforce) == ("127.0.0.2", "::1", True)
    assert (settings("").bind_address, settings("").bind_address_enforce) == ("", False)
    lmtp = settings("lmtp_bind_address = 127.0.0.4\nsmtp_bind_address = 127.0.0.2\n", lmtp=True)
    assert lmtp.bind_address == "127.0.0.4"
    for text, parameter, why in (("smtp_bind_address = mail.example.com", "smtp_bind_address", "numeric IPv4"),
                                 ("smtp_bind_address = ::1", "smtp_bind_address", "smtp_bind_address6"),
                                 ("smtp_bind_address6 = 127.0.0.1", "smtp_bind_address6", "smtp_bind_address")):
        with pytest.raises(ConfigValueError) as caught:
            settings(text)
        assert f"line 1: parameter {parameter}: " in str(caught.value) and why in str(caught.value)


def test_host_lookup_follows_dns_support_level_as_postfix():
    assert settings("").lookup == HostLookup(dns=True, native=False, mx=True, dnssec=False, preference="any")
    # disabled (or the old disable_dns_lookups = yes): no MX, native lookup whatever smtp_host_lookup says
    disabled = HostLookup(dns=False, native=True, mx=False, preference="any")
    assert settings("smtp_dns_support_level = disabled\nsmtp_host_lookup = dns").lookup == disabled
    assert settings("disable_dns_lookups = yes").lookup == disabled
    assert settings("disable_dns_lookups = yes\nsmtp_dns_support_level = enabled").lookup.mx
    assert settings("smtp_dns_support_level = dnssec").lookup.dnssec
    both = settings("smtp_host_lookup = dns, native\nsmtp_address_preference = ipv6").lookup
    assert (both.dns, both.native, both.preference) == (True, True, "ipv6")
    assert settings("smtp_host_lookup = native").lookup == HostLookup(dns=False, native=True)
    lmtp = settings("lmtp_host_lookup = native\nlmtp_address_preference = ipv4\nlmtp_dns_support_level = dnssec",
                    lmtp=True).lookup
    assert (lmtp.dns, lmtp.native, lmtp.preference, lmtp.dnssec) == (False, True, "ipv4", True)


def test_bad_lookup_values_name_their_parameter():
    for text, parameter in (("smtp_dns_support_level = dane", "smtp_dns_support_level"),
                            ("smtp_host_lookup = dns, nis", "smtp_host_lookup"),
                            ("smtp_address_preference = ipv5", "smtp_address_preference")):
        with pytest.raises(ConfigValueError) as caught:
            settings(text)
        assert f"parameter {parameter}: invalid value" in str(caught.value)


def test_balance_keeps_both_families_within_the_limit_as_postfix():
    from mailferry.delivery.dns import Target, balance_families

    def hosts(*addresses):
        return [Target("mx", address, 25, 10) for address in addresses]

    def kept(targets, limit):
        return [target.address for target in balance_families(targets, limit)]
    six = hosts("::1", "::2", "::3", "127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert kept(six, 2) == ["::1", "127.0.0.1"]                 # both over half: one each
    assert kept(six, 3) == ["::1", "::2", "127.0.0.1"]          # the family listed first gets the odd one
    assert kept(hosts("::1", "::2", "::3", "127.0.0.1"), 2) == ["::1", "127.0.0.1"]   # IPv4 under half: all of it
    assert kept(six, 6) == [t.address for t in six]             # within the limit: untouched
    assert kept(hosts("::1", "::2", "::3"), 2) == ["::1", "::2", "::3"]   # one family: the limit cuts later
    assert settings("").balance_inet_protocols and not settings(
        "lmtp_balance_inet_protocols = no", lmtp=True).balance_inet_protocols
