"""sender_bcc_maps, recipient_bcc_maps and always_bcc in cleanup (Postfix's cleanup_addr.c).

The daemon tests (tests/integration/test_rewriting.py) show the copies at smtp-sink; these pin
the rules around them: the copy is a new recipient with NOTIFY=NEVER and no ORCPT, rewritten as
a recipient (virtual aliases too), never for qmgr's notices, and a table failing for now defers.
"""

from __future__ import annotations

import asyncio

import pytest

from mailferry.cleanup.rewrite import AddressRewriter, Bcc, RewriteDeferred
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import NewMessage, Recipient
from mailferry.tables import Maps
from mailferry.tables.addresses import AddressMaps
from tests.unit.cleanup.test_virtual import FailingTable

BASE = ("myhostname = mx.example.com\nmydomain = example.com\nmyorigin = example.com\n"
        "mydestination = mx.example.com, localhost\ninet_interfaces = loopback-only\n")


def rewriter(tmp_path, **tables: str) -> AddressRewriter:
    text = BASE
    for name, content in tables.items():
        if name == "always_bcc":
            text += f"always_bcc = {content}\n"
            continue
        path = tmp_path / name
        path.write_text(content)
        text += f"{name} = texthash:{path}\n"
    return AddressRewriter.from_config(Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf"))))


def run(rewriter, *recipients, sender="alice@example.net", bcc_ok=True):
    message = NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients],
                         content=b"Subject: s\r\n\r\nbody\r\n")
    asyncio.run(rewriter.rewrite(message, False, [].append, bcc_ok))
    return message


def test_the_copy_has_notify_never_and_no_orcpt_and_goes_last(tmp_path):
    r = rewriter(tmp_path, recipient_bcc_maps="bob@example.org  copy@archive.example\n")
    message = run(r, "bob@example.org", "carol@example.org")
    assert [(x.address, x.notify, x.orcpt) for x in message.recipients] == [
        ("bob@example.org", None, None), ("carol@example.org", None, None),
        ("copy@archive.example", "NEVER", None)]


def test_the_sender_key_is_the_canonical_address_and_a_bare_user_value_gets_myorigin(tmp_path):
    r = rewriter(tmp_path, sender_canonical_maps="alice@example.net  a.smith@example.net\n",
                 sender_bcc_maps="a.smith@example.net  archive\nalice@example.net  wrong\n")
    assert [x.address for x in run(r, "bob@example.org").recipients] == ["bob@example.org", "archive@example.com"]


def test_the_key_order_is_full_address_then_local_part_of_ours_then_domain(tmp_path):
    r = rewriter(tmp_path, recipient_bcc_maps="bob@localhost  full@a.example\nbob  user@a.example\n"
                                              "@localhost  domain@a.example\n@example.org  other@a.example\n")
    assert [x.address for x in run(r, "bob@localhost").recipients][1:] == ["full@a.example"]
    assert [x.address for x in run(r, "ann@localhost").recipients][1:] == ["domain@a.example"]
    # example.org is not ours: the bare `bob` key is not tried there.
    assert [x.address for x in run(r, "bob@example.org").recipients][1:] == ["other@a.example"]
    # mx.example.com is ours: the bare `bob` key answers when the full address is not listed.
    assert [x.address for x in run(r, "bob@mx.example.com").recipients][1:] == ["user@a.example"]


def test_the_copy_goes_through_virtual_aliases_and_two_lookups_give_one_copy(tmp_path):
    r = rewriter(tmp_path, recipient_bcc_maps="@example.org  archive@example.org\n",
                 virtual_alias_maps="archive@example.org  store@vault.example\n")
    message = run(r, "bob@example.org", "carol@example.org")
    assert [(x.address, x.notify, x.orcpt) for x in message.recipients] == [
        ("bob@example.org", None, None), ("carol@example.org", None, None),
        ("store@vault.example", "NEVER", None)]


def test_always_bcc_is_added_once_and_only_when_there_is_a_recipient(tmp_path):
    r = rewriter(tmp_path, always_bcc="audit")
    assert [x.address for x in run(r, "a@x.example", "b@x.example").recipients] == [
        "a@x.example", "b@x.example", "audit@example.com"]
    assert run(r).recipients == []


def test_notices_and_no_address_mappings_get_no_copy(tmp_path):
    r = rewriter(tmp_path, sender_bcc_maps="alice@example.net  copy@a.example\n", always_bcc="audit@a.example")
    assert [x.address for x in run(r, "bob@example.org", bcc_ok=False).recipients] == ["bob@example.org"]
    message = NewMessage(sender="alice@example.net", recipients=[Recipient("bob@example.org")], content=b"\r\n")
    message.receive_overrides = frozenset({"no_address_mappings"})
    asyncio.run(r.rewrite(message, False, [].append, True))
    assert [x.address for x in message.recipients] == ["bob@example.org"]


def test_a_bcc_table_failing_for_now_defers_the_message():
    maps = AddressMaps("recipient_bcc_maps", Maps([FailingTable()]), lambda domain: False, "example.com")
    r = AddressRewriter(None, None, None, None, None, bcc=Bcc(None, maps, ""))
    with pytest.raises(RewriteDeferred, match="recipient_bcc_maps map lookup problem for bob@example.org"):
        run(r, "bob@example.org")


# --- allow_percent_hack and swap_bangpath on the mail path (routing/addresses.py)

def test_a_routed_final_recipient_is_queued_as_resolved_with_the_given_one_as_orcpt(tmp_path):
    r = rewriter(tmp_path)
    message = run(r, "bob%remote.example@mx.example.com", "host.example!carol@localhost", "dan@example.org")
    assert [(x.address, x.orcpt) for x in message.recipients] == [
        ("bob@remote.example", "rfc822;bob%remote.example@mx.example.com"),
        ("carol@host.example", "rfc822;host.example!carol@localhost"), ("dan@example.org", None)]


def test_a_routed_address_in_a_remote_domain_is_left_alone(tmp_path):
    assert [x.address for x in run(rewriter(tmp_path), "bob%remote.example@example.org").recipients] == [
        "bob%remote.example@example.org"]


def test_with_the_hack_off_the_address_stays_as_given(tmp_path):
    path = tmp_path / "main.cf"
    r = AddressRewriter.from_config(Config(str(tmp_path), parse_main_cf(
        BASE + "allow_percent_hack = no\nswap_bangpath = no\n", str(path))))
    given = ["bob%remote.example@mx.example.com", "host.example!carol@localhost"]
    assert [x.address for x in run(r, *given).recipients] == given


def test_cleanup_qualifies_bare_bang_and_percent_forms_as_trivial_rewrite():
    from mailferry.cleanup.cleanup import CleanupSettings, qualify
    on = CleanupSettings("mx.example.com", "example.com")
    off = CleanupSettings("mx.example.com", "example.com", percent_hack=False, swap_bangpath=False)
    assert [qualify(a, on) for a in ("a!b!user", "user%x%host", "user", "")] == [
        "b!user@a", "user%x@host", "user@example.com", ""]
    assert [qualify(a, off) for a in ("a!user", "user%host")] == ["a!user@example.com", "user%host@example.com"]
