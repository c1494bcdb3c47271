"""The RCPT-time check of smtpd/recipient_maps.py, as Postfix's check_rcpt_maps:
known to recipient_canonical_maps, canonical_maps or virtual_alias_maps →
pass; else in virtual_alias_domains → 550 5.1.1 "User unknown in virtual alias
table"; any table failing for now → 451 4.3.0 "Temporary lookup failure"."""

import asyncio

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.localdomains import VirtualAliasDomains
from mailferry.routing.classes import AddressClasses
from mailferry.smtpd.recipient_maps import ClassTable, RecipientMaps
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


def test_receive_override_options_no_unknown_recipient_checks_turns_the_check_off(tmp_path):
    """The re-injection service after a content filter: the recipients were checked on the way in."""
    maps = maps_of(tmp_path, "virtual_alias_domains = virtual.example\n"
                             "receive_override_options = no_header_body_checks, no_unknown_recipient_checks\n"
                             "virtual_alias_maps = inline:{ info@virtual.example=john@mail.example }\n")
    assert not maps.enabled


def test_a_failing_alias_table_is_451_temporary_lookup_failure_never_unknown(tmp_path):
    maps = RecipientMaps([Maps([FailingTable()])], AddressClasses(lambda d: False, VirtualAliasDomains("virtual.example")),
                         lambda d: False,
                         "", 550, True)
    assert reply(maps, "info@virtual.example") == "451 4.3.0 <info@virtual.example>: Temporary lookup failure"


def test_a_failing_domain_table_is_451_too(tmp_path):
    domains = VirtualAliasDomains("")
    domains._entries = [(False, FailingTable())]
    maps = RecipientMaps([Maps([FailingTable({"info@virtual.example": found("x@y.example")})])],
                         AddressClasses(lambda d: False, domains),
                         lambda d: False, "", 550, True)
    assert reply(maps, "info@virtual.example") is None   # known: the domain is never asked
    maps = RecipientMaps([], AddressClasses(lambda d: False, domains), lambda d: False, "", 550, True)
    assert reply(maps, "nobody@virtual.example") == "451 4.3.0 <nobody@virtual.example>: Temporary lookup failure"


# --- the address classes' own tables: local_recipient_maps, virtual_mailbox_maps, relay_recipient_maps

def test_an_unknown_local_user_is_refused_with_unknown_local_recipient_reject_code(tmp_path):
    maps = maps_of(tmp_path, "local_recipient_maps = unix:passwd.byname inline:{ info=root }\n"
                             "unknown_local_recipient_reject_code = 450\n")
    assert reply(maps, "root@mx.example.com") is None            # an account
    assert reply(maps, "Info@MX.example.com") is None            # an alias: the bare local part is a key
    assert reply(maps, "nosuchuser@mx.example.com") == (
        "450 5.1.1 <nosuchuser@mx.example.com>: Recipient address rejected: User unknown in local recipient table")
    maps = maps_of(tmp_path, "local_recipient_maps = unix:passwd.byname\n")
    assert reply(maps, "nosuchuser@mx.example.com").startswith("550 5.1.1 ")


def test_the_default_local_recipient_maps_knows_the_accounts_and_proxy_changes_nothing(tmp_path):
    maps = maps_of(tmp_path, "alias_maps = inline:{ webmaster=root }\n")   # the default: proxy:unix:passwd.byname $alias_maps
    assert reply(maps, "nobody@mx.example.com") is None
    assert reply(maps, "webmaster@mx.example.com") is None
    assert reply(maps, "nosuchuser@mx.example.com").startswith("550 5.1.1 ")


def test_postmaster_mailer_daemon_and_double_bounce_are_always_local_recipients(tmp_path):
    maps = maps_of(tmp_path, "local_recipient_maps = inline:{ root=x }\n")
    for address in ("postmaster@mx.example.com", "POSTMASTER@mx.example.com", "MAILER-DAEMON@mx.example.com",
                    "double-bounce@mx.example.com", "postmaster"):
        assert reply(maps, address) is None, address
    assert reply(maps, "postmaster+x@mx.example.com") is not None   # Postfix exempts the exact name only


def test_an_address_without_domain_is_checked_as_user_at_myorigin(tmp_path):
    maps = maps_of(tmp_path, "myorigin = mx.example.com\nlocal_recipient_maps = inline:{ root=x }\n")
    assert reply(maps, "root") is None
    assert reply(maps, "nosuchuser").startswith("550 5.1.1 <nosuchuser>:")


def test_an_empty_local_recipient_maps_accepts_every_local_address(tmp_path):
    maps = maps_of(tmp_path, "local_recipient_maps =\n")
    assert reply(maps, "anyone@mx.example.com") is None
    assert not maps.enabled


def test_a_local_table_that_cannot_be_opened_is_451_with_a_warning_never_unknown(tmp_path):
    maps = maps_of(tmp_path, f"local_recipient_maps = hash:{tmp_path}/missing\n")
    refusal = asyncio.run(maps.check("someone@mx.example.com"))
    assert refusal.reply.to_bytes() == b"451 4.3.0 <someone@mx.example.com>: Temporary lookup failure\r\n"
    assert f"hash:{tmp_path}/missing is unavailable." in refusal.warning


VIRTUAL = ("recipient_delimiter = +\nvirtual_mailbox_domains = a.test, b.test\n"
           "virtual_mailbox_maps = inline:{ alice@a.test=a.test/alice/, @b.test=b.test/catchall/ }\n")


def test_an_unknown_virtual_mailbox_user_is_refused_with_its_table_named(tmp_path):
    maps = maps_of(tmp_path, VIRTUAL)
    assert reply(maps, "alice@a.test") is None
    assert reply(maps, "alice+tag@a.test") is None
    assert reply(maps, "anyone@b.test") is None                  # @domain catches all
    assert reply(maps, "bob@a.test") == \
        "550 5.1.1 <bob@a.test>: Recipient address rejected: User unknown in virtual mailbox table"
    maps = maps_of(tmp_path, VIRTUAL + "unknown_virtual_mailbox_reject_code = 450\nshow_user_unknown_table_name = no\n")
    assert reply(maps, "bob@a.test") == "450 5.1.1 <bob@a.test>: Recipient address rejected: User unknown"


def test_a_virtual_alias_decides_before_the_virtual_mailbox_table(tmp_path):
    maps = maps_of(tmp_path, VIRTUAL + "virtual_alias_maps = inline:{ info@a.test=alice@a.test }\n")
    assert reply(maps, "info@a.test") is None


def test_a_failing_virtual_mailbox_table_is_451(tmp_path):
    maps = RecipientMaps([], AddressClasses(lambda d: False, None, VirtualAliasDomains("a.test")), lambda d: False,
                         "", 550, True, class_tables={"virtual mailbox": ClassTable(
                             "virtual_mailbox_maps", Maps([FailingTable()]), 550, "virtual mailbox table")})
    assert reply(maps, "alice@a.test") == "451 4.3.0 <alice@a.test>: Temporary lookup failure"


def test_relay_recipient_maps_when_set(tmp_path):
    maps = maps_of(tmp_path, "relay_domains = partner.test\nrelay_recipient_maps = inline:{ known@partner.test=x }\n")
    assert reply(maps, "known@partner.test") is None
    assert reply(maps, "stranger@partner.test") == \
        "550 5.1.1 <stranger@partner.test>: Recipient address rejected: User unknown in relay recipient table"
    assert reply(maps, "anyone@elsewhere.test") is None          # the default class is not checked here
    maps = maps_of(tmp_path, "relay_domains = partner.test\nlocal_recipient_maps =\n")
    assert reply(maps, "stranger@partner.test") is None           # no relay_recipient_maps: all pass
