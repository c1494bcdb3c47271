"""The RCPT-time check of smtpd/recipient_maps.py, as Postfix's check_rcpt_maps:
known to recipient_canonical_maps, canonical_maps or virtual_alias_maps →
pass; else in virtual_alias_domains → 550 5.1.1 "User unknown in virtual alias
table"; any table failing for now → 451 4.3.0 "Temporary lookup failure"."""

import asyncio

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.smtpd.recipient_maps import RecipientMaps, VirtualAliasDomains
from mailferry.tables import Maps, found
from tests.unit.cleanup.test_virtual import FailingTable

BASE = "myhostname = mx.example.com\nmydomain = example.com\nmydestination = mx.example.com\n"


def maps_of(tmp_path, text):
    return RecipientMaps.from_config(Config(str(tmp_path), parse_main_cf(BASE + text, str(tmp_path / "main.cf"))))


def reply(maps, address):
    refusal = asyncio.run(maps.check(address))
    return None if refusal is None else refusal.reply.to_bytes().decode().rstrip()


def test_a_known_alias_passes_and_an_unknown_one_in_an_alias_domain_is_550(tmp_path):
    maps = maps_of(tmp_path, "virtual_alias_domains = virtual.example\n"
                             "virtual_alias_maps = inline:{ info@virtual.example=john@mail.example }\n")
    assert reply(maps, "info@virtual.example") is None
    assert reply(maps, "nobody@virtual.example") == \
        "550 5.1.1 <nobody@virtual.example>: Recipient address rejected: User unknown in virtual alias table"
    assert reply(maps, "someone@elsewhere.example") is None


def test_the_reject_code_comes_from_unknown_virtual_alias_reject_code(tmp_path):
    maps = maps_of(tmp_path, "virtual_alias_domains = virtual.example\nunknown_virtual_alias_reject_code = 450\n"
                             "virtual_alias_maps = inline:{ info@virtual.example=john@mail.example }\n")
    assert reply(maps, "nobody@virtual.example").startswith("450 5.1.1 <nobody@virtual.example>:")


def test_a_canonical_entry_makes_an_address_known(tmp_path):
    maps = maps_of(tmp_path, "virtual_alias_domains = virtual.example\n"
                             "virtual_alias_maps = inline:{ info@virtual.example=john@mail.example }\n"
                             "recipient_canonical_maps = inline:{ old@virtual.example=info@virtual.example }\n")
    assert reply(maps, "old@virtual.example") is None


def test_the_default_domains_are_the_alias_tables_domain_keys(tmp_path):
    # virtual_alias_domains = $virtual_alias_maps: `virtual.example  x` declares the domain (virtual(5)).
    maps = maps_of(tmp_path, "virtual_alias_maps = inline:{ virtual.example=x, info@virtual.example=j@m.example }\n")
    assert reply(maps, "info@virtual.example") is None
    assert reply(maps, "nobody@virtual.example").startswith("550 5.1.1")
    assert reply(maps, "nobody@other.example") is None


def test_smtpd_reject_unlisted_recipient_no_turns_the_check_off(tmp_path):
    maps = maps_of(tmp_path, "virtual_alias_domains = virtual.example\nsmtpd_reject_unlisted_recipient = no\n"
                             "virtual_alias_maps = inline:{ info@virtual.example=john@mail.example }\n")
    assert not maps.enabled


def test_a_failing_alias_table_is_451_temporary_lookup_failure_never_unknown(tmp_path):
    maps = RecipientMaps([Maps([FailingTable()])], VirtualAliasDomains("virtual.example"), lambda d: False,
                         "", 550, True)
    assert reply(maps, "info@virtual.example") == "451 4.3.0 <info@virtual.example>: Temporary lookup failure"


def test_a_failing_domain_table_is_451_too(tmp_path):
    domains = VirtualAliasDomains("")
    domains._entries = [(False, FailingTable())]
    maps = RecipientMaps([Maps([FailingTable({"info@virtual.example": found("x@y.example")})])], domains,
                         lambda d: False, "", 550, True)
    assert reply(maps, "info@virtual.example") is None   # known: the domain is never asked
    maps = RecipientMaps([], domains, lambda d: False, "", 550, True)
    assert reply(maps, "nobody@virtual.example") == "451 4.3.0 <nobody@virtual.example>: Temporary lookup failure"
