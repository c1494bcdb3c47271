"""Virtual alias expansion in cleanup, as Postfix's cleanup_map1n and mail_addr_map.

Where each expectation comes from:
- virtual(5): the lookup order `user@domain`, `user` (only when the domain
  is $myorigin, $mydestination or an interface literal), `@domain`; with
  recipient_delimiter `+`, `user+foo@domain` is looked up before `user@domain`,
  and the unmatched `+foo` goes on to the result (propagate_unmatched_extensions
  includes `virtual`); "the result ... may be a list of addresses"; a result
  `@otherdomain` keeps the user part.
- cleanup_map1n.c: each result is expanded again; an address that maps to
  itself (among others) is expanded once only; more than
  virtual_alias_recursion_limit steps down one chain or more than
  virtual_alias_expansion_limit addresses: "unreasonable ... -- message not
  accepted, try again later" and smtpd's "451 4.6.0 Alias expansion error";
  a table that fails: CLEANUP_STAT_WRITE, "451 4.3.0 Error: queue file write error".
- cleanup_out_recipient.c: the same (ORCPT, NOTIFY, address) twice is written once.
"""

import asyncio

import pytest

from mailferry.cleanup.rewrite import AddressRewriter, RewriteDeferred
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import NewMessage, Recipient
from mailferry.tables import Maps, Table, tempfail

BASE = ("myhostname = mx.example.com\nmydomain = example.com\nmyorigin = example.com\n"
        "mydestination = mx.example.com, localhost\ninet_interfaces = loopback-only\n")


def rewriter(tmp_path, table: str, extra: str = "") -> AddressRewriter:
    path = tmp_path / "virtual"
    path.write_text(table)
    text = BASE + f"virtual_alias_maps = texthash:{path}\n" + extra
    return AddressRewriter.from_config(Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf"))))


def run(rewriter, *recipients, sender="alice@example.net", warnings=None, orcpt=None):
    message = NewMessage(sender=sender, recipients=[Recipient(r, orcpt=orcpt) for r in recipients],
                         content=b"Subject: s\r\n\r\nbody\r\n")
    asyncio.run(rewriter.rewrite(message, False, (warnings if warnings is not None else []).append))
    return message


def addresses(message):
    return [r.address for r in message.recipients]


def test_an_alias_is_replaced_by_its_value(tmp_path):
    r = rewriter(tmp_path, "info@example.org  john.smith@mail1.internal\n")
    assert addresses(run(r, "info@example.org")) == ["john.smith@mail1.internal"]


def test_an_address_no_table_knows_is_left_as_it_is(tmp_path):
    r = rewriter(tmp_path, "info@example.org  john@example.org\n")
    assert addresses(run(r, "other@example.org")) == ["other@example.org"]


def test_the_expansion_is_recursive(tmp_path):
    r = rewriter(tmp_path, "a@example.org  b@example.org\nb@example.org  c@example.net\n")
    assert addresses(run(r, "a@example.org")) == ["c@example.net"]


def test_a_list_fans_out_and_each_member_is_expanded_in_turn(tmp_path):
    r = rewriter(tmp_path, "team@example.org  ann@example.org, bob@example.org carl@example.net\n"
                           "bob@example.org  robert@example.net\n")
    assert addresses(run(r, "team@example.org")) == ["ann@example.org", "robert@example.net", "carl@example.net"]


def test_a_self_mapping_keeps_a_copy_and_stops_there(tmp_path):
    r = rewriter(tmp_path, "john@example.org  john@example.org, archive@example.net\n")
    assert addresses(run(r, "john@example.org")) == ["john@example.org", "archive@example.net"]


def test_duplicates_from_one_original_recipient_are_delivered_once(tmp_path):
    r = rewriter(tmp_path, "team@example.org  ann@example.net, bob@example.org, ann@example.net\n"
                           "bob@example.org  ann@example.net\n")
    assert addresses(run(r, "team@example.org")) == ["ann@example.net"]


def test_the_same_recipient_given_twice_is_delivered_once(tmp_path):
    r = rewriter(tmp_path, "")
    assert addresses(run(r, "x@example.net", "X@example.net")) == ["x@example.net"]


def test_the_same_final_address_from_two_original_recipients_is_kept_for_each(tmp_path):
    # enable_original_recipient = yes (the default): the duplicate filter's key
    # includes the original recipient (cleanup_out_recipient.c).
    r = rewriter(tmp_path, "a@example.org  same@example.net\nb@example.org  same@example.net\n")
    message = run(r, "a@example.org", "b@example.org")
    assert [(x.address, x.orcpt) for x in message.recipients] == [
        ("same@example.net", "rfc822;a@example.org"), ("same@example.net", "rfc822;b@example.org")]


def test_user_alone_is_looked_up_only_for_our_own_domains(tmp_path):
    r = rewriter(tmp_path, "postmaster  root@example.net\n")
    assert addresses(run(r, "postmaster@mx.example.com", "postmaster@example.com", "postmaster@other.org")) == \
        ["root@example.net", "root@example.net", "postmaster@other.org"]  # mydestination, myorigin; not other.org


def test_at_domain_catches_the_rest_of_the_domain(tmp_path):
    r = rewriter(tmp_path, "john@example.org  john@mail1.internal\n@example.org  catchall@example.net\n")
    assert addresses(run(r, "john@example.org", "anyone@example.org")) == \
        ["john@mail1.internal", "catchall@example.net"]


def test_at_otherdomain_keeps_the_user_part(tmp_path):
    r = rewriter(tmp_path, "@old.example  @new.example\n")
    assert addresses(run(r, "Jane.Doe@old.example")) == ["Jane.Doe@new.example"]


def test_an_unmatched_extension_is_propagated_to_each_result(tmp_path):
    r = rewriter(tmp_path, "john@example.org  john@mail1.internal, copy@example.net\n",
                 "recipient_delimiter = +\n")
    assert addresses(run(r, "john+lists@example.org")) == ["john+lists@mail1.internal", "copy+lists@example.net"]


def test_an_entry_for_the_extended_address_wins_and_propagates_nothing(tmp_path):
    r = rewriter(tmp_path, "john+lists@example.org  lists@example.net\njohn@example.org  john@mail1.internal\n",
                 "recipient_delimiter = +\n")
    assert addresses(run(r, "john+lists@example.org")) == ["lists@example.net"]


def test_without_virtual_in_propagate_unmatched_extensions_the_extension_is_dropped(tmp_path):
    r = rewriter(tmp_path, "john@example.org  john@mail1.internal\n",
                 "recipient_delimiter = +\npropagate_unmatched_extensions = canonical\n")
    assert addresses(run(r, "john+lists@example.org")) == ["john@mail1.internal"]


def test_a_bare_user_in_a_value_is_qualified_with_myorigin(tmp_path):
    r = rewriter(tmp_path, "info@example.org  john\n")
    assert addresses(run(r, "info@example.org")) == ["john@example.com"]


def test_a_rewritten_recipient_remembers_its_original_address_as_orcpt(tmp_path):
    r = rewriter(tmp_path, "info@example.org  john@mail1.internal\n")
    message = run(r, "info@example.org", "kept@example.net")
    assert [(x.address, x.orcpt) for x in message.recipients] == [
        ("john@mail1.internal", "rfc822;info@example.org"), ("kept@example.net", None)]


def test_an_orcpt_the_client_gave_is_kept(tmp_path):
    r = rewriter(tmp_path, "info@example.org  john@mail1.internal\n")
    message = run(r, "info@example.org", orcpt="rfc822;given@example.org")
    assert message.recipients[0].orcpt == "rfc822;given@example.org"


def test_a_loop_hits_the_recursion_limit_and_the_message_is_not_accepted(tmp_path):
    r = rewriter(tmp_path, "a@example.org  b@example.org\nb@example.org  a@example.org\n",
                 "virtual_alias_recursion_limit = 5\n")
    with pytest.raises(RewriteDeferred) as caught:
        run(r, "a@example.org")
    assert (caught.value.enhanced_status, caught.value.reply_text) == ("4.6.0", "Alias expansion error")
    assert "unreasonable virtual_alias_maps map nesting for a@example.org" in str(caught.value)


def test_too_many_addresses_hit_the_expansion_limit(tmp_path):
    members = ", ".join(f"m{n}@example.net" for n in range(5))
    r = rewriter(tmp_path, f"list@example.org  {members}\n", "virtual_alias_expansion_limit = 3\n")
    with pytest.raises(RewriteDeferred, match="unreasonable virtual_alias_maps map expansion size"):
        run(r, "list@example.org")


def test_a_result_longer_than_the_address_length_limit_is_refused(tmp_path):
    r = rewriter(tmp_path, f"a@example.org  {'x' * 40}@example.net\n",
                 "virtual_alias_address_length_limit = 30\n")
    with pytest.raises(RewriteDeferred, match="unreasonable virtual_alias_maps result"):
        run(r, "a@example.org")


class FailingTable(Table):
    """A table whose server is down: every lookup fails for now."""

    type_name = "failing"

    def __init__(self, answers=None):
        super().__init__("test")
        self.answers = answers or {}

    async def lookup(self, key):
        if key in self.answers:
            return self.answers[key]
        return tempfail("server down")


def test_a_temporary_lookup_failure_refuses_the_message_and_never_leaves_it_unrewritten(tmp_path):
    r = rewriter(tmp_path, "")
    r.virtual = type(r.virtual)(r.virtual.title, Maps([FailingTable()]), r.virtual.is_local_domain,
                                r.virtual.myorigin)
    message = NewMessage(sender="s@example.net", recipients=[Recipient("info@example.org")], content=b"\r\n")
    with pytest.raises(RewriteDeferred) as caught:
        asyncio.run(r.rewrite(message, False, lambda text: None))
    assert (caught.value.reply_code, caught.value.enhanced_status, caught.value.reply_text) == \
        (451, "4.3.0", "Error: queue file write error")
    assert "virtual_alias_maps map lookup problem for info@example.org" in str(caught.value)
    assert "message not accepted, try again later" in str(caught.value)
