"""delivery/settings.py: which main.cf timeouts and limits the SMTP/LMTP client runs with."""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
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
