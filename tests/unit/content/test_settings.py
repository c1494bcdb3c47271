"""content/settings.py: which parameters each side reads, and their defaults."""

from __future__ import annotations

import asyncio

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.content.settings import check_tables, limits
from mailferry.delivery.content_checks import OutgoingChecks
from tests.unit.listlog import ListLog


def config_of(tmp_path, text: str) -> Config:
    return Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))


def test_cleanup_mime_and_nested_checks_default_to_header_checks_sharing_one_table(tmp_path):
    tables = check_tables(config_of(tmp_path, "header_checks = inline:{ {x=REJECT} }\n"))
    assert tables.header is not None and tables.mime is tables.header and tables.nested is tables.header
    assert tables.body is None
    assert tables.names == ("header_checks", "mime_header_checks", "nested_header_checks", "body_checks")


def test_the_smtp_and_lmtp_mime_and_nested_checks_have_no_default(tmp_path):
    config = config_of(tmp_path, "smtp_header_checks = inline:{ {x=IGNORE} }\nlmtp_body_checks = inline:{ {y=IGNORE} }\n")
    smtp = check_tables(config, "smtp_")
    assert smtp.header is not None and smtp.mime is None and smtp.nested is None and smtp.body is None
    lmtp = check_tables(config, "lmtp_")
    assert lmtp.header is None and lmtp.body is not None and lmtp.names[3] == "lmtp_body_checks"


def test_hash_type_tables_see_the_line_folded_to_lower_case(tmp_path):
    tables = check_tables(config_of(tmp_path, "header_checks = inline:{ {subject: spam=REJECT} }\n"))
    assert asyncio.run(tables.header.lookup("Subject: SPAM")).value == "REJECT"


def test_a_client_without_tables_gets_no_checks_at_all(tmp_path):
    assert OutgoingChecks.from_config(config_of(tmp_path, ""), "smtp", ListLog(), "smtp") is None


def test_the_delivery_side_has_no_body_size_limit_and_ignores_cleanups_mime_settings(tmp_path):
    config = config_of(tmp_path, "smtp_body_checks = inline:{ {y=IGNORE} }\nstrict_mime_encoding_domain = yes\n"
                                 "body_checks_size_limit = 10\n")
    checks = OutgoingChecks.from_config(config, "smtp", ListLog(), "smtp")
    assert checks.limits.body_size_limit == 0 and not checks.limits.strict_encoding
    assert limits(config).body_size_limit == 10 and limits(config).strict_encoding
