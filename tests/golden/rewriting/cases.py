"""Golden cases for canonical maps, masquerading, header rewriting, virtual
alias expansion and smtp_generic_maps.

Each case: main.cf settings, an envelope and some header fields in, the
envelope and those header fields out. The same cases run twice:

- tests/unit/cleanup/test_rewrite_golden.py puts CASES and VIRTUAL_CASES
  through mailferry's cleanup/rewrite.py, tests/unit/delivery/test_generic.py
  GENERIC_CASES through delivery/generic.py;
- tests/integration/test_rewriting_postfix.py puts them through a private
  Postfix 3.7 (Debian's), over SMTP from 127.0.0.1 (one of
  local_header_rewrite_clients, so headers are rewritten too) and relayed
  to smtp-sink, and checks that Postfix gives exactly these expectations.

So every expectation below is what the real Postfix did. The settings that
both sides share (myorigin, mydomain...) are in COMMON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COMMON = {"myhostname": "mx.example.test", "mydomain": "example.test", "myorigin": "example.test"}


@dataclass(frozen=True)
class Case:
    name: str
    settings: dict[str, str]
    sender: str
    recipients: list[str]
    headers: list[tuple[str, str]]
    expected_sender: str
    expected_recipients: list[str]
    expected_headers: list[tuple[str, str]] = field(default_factory=list)


CASES = [
    Case("sender_canonical_rewrites_envelope_and_from",
         {"sender_canonical_maps": "inline:{ alice@example.test=Alice.Smith@example.test }"},
         "alice@example.test", ["bob@remote.test"],
         [("From", "Alice <alice@example.test>"), ("To", "bob@remote.test")],
         "Alice.Smith@example.test", ["bob@remote.test"],
         [("From", "Alice <Alice.Smith@example.test>"), ("To", "bob@remote.test")]),
    Case("sender_canonical_classes_envelope_only_leaves_from",
         {"sender_canonical_maps": "inline:{ alice@example.test=Alice.Smith@example.test }",
          "sender_canonical_classes": "envelope_sender"},
         "alice@example.test", ["bob@remote.test"],
         [("From", "alice@example.test")],
         "Alice.Smith@example.test", ["bob@remote.test"],
         [("From", "alice@example.test")]),
    Case("canonical_maps_applies_to_senders_and_recipients",
         {"canonical_maps": "inline:{ alice@example.test=a.smith@example.test, bob@remote.test=robert@remote.test }"},
         "alice@example.test", ["bob@remote.test", "carol@remote.test"],
         [("From", "alice@example.test"), ("To", "Bob <bob@remote.test>, carol@remote.test"),
          ("Cc", "bob@remote.test")],
         "a.smith@example.test", ["carol@remote.test", "robert@remote.test"],
         [("From", "a.smith@example.test"), ("To", "Bob <robert@remote.test>, carol@remote.test"),
          ("Cc", "robert@remote.test")]),
    Case("recipient_canonical_at_domain_keeps_the_user",
         {"recipient_canonical_maps": "inline:{ @old.test=@new.test }"},
         "alice@example.test", ["Jane.Doe@old.test"],
         [("To", "Jane.Doe@old.test"), ("From", "jane@old.test")],
         "alice@example.test", ["Jane.Doe@new.test"],
         [("To", "Jane.Doe@new.test"), ("From", "jane@old.test")]),
    Case("canonical_propagates_the_unmatched_extension",
         {"recipient_canonical_maps": "inline:{ bob@remote.test=robert@other.test }",
          "recipient_delimiter": "+"},
         "alice@example.test", ["bob+lists@remote.test"],
         [("To", "bob+lists@remote.test")],
         "alice@example.test", ["robert+lists@other.test"],
         [("To", "robert+lists@other.test")]),
    Case("canonical_follows_a_chain",
         {"canonical_maps": "inline:{ a@remote.test=b@remote.test, b@remote.test=c@remote.test }"},
         "alice@example.test", ["a@remote.test"],
         [("To", "a@remote.test")],
         "alice@example.test", ["c@remote.test"],
         [("To", "c@remote.test")]),
    Case("masquerade_default_classes_leave_envelope_recipients",
         {"masquerade_domains": "example.test"},
         "alice@host.sub.example.test", ["bob@host.example.test"],
         [("From", "alice@host.sub.example.test"), ("To", "bob@host.example.test")],
         "alice@example.test", ["bob@host.example.test"],
         [("From", "alice@example.test"), ("To", "bob@example.test")]),
    Case("masquerade_bang_domain_is_left_alone",
         {"masquerade_domains": "!keep.example.test, example.test"},
         "alice@keep.example.test", ["bob@remote.test"],
         [("From", "alice@keep.example.test"), ("Reply-To", "help@desk.example.test")],
         "alice@keep.example.test", ["bob@remote.test"],
         [("From", "alice@keep.example.test"), ("Reply-To", "help@example.test")]),
    Case("masquerade_exceptions_keep_root",
         {"masquerade_domains": "example.test", "masquerade_exceptions": "root"},
         "root@host.example.test", ["bob@remote.test"],
         [("From", "root@host.example.test"), ("Sender", "alice@host.example.test")],
         "root@host.example.test", ["bob@remote.test"],
         [("From", "root@host.example.test"), ("Sender", "alice@example.test")]),
    Case("masquerade_after_canonical",
         {"sender_canonical_maps": "inline:{ alice@example.test=alice@mail.example.test }",
          "masquerade_domains": "example.test", "masquerade_classes": "envelope_sender, envelope_recipient"},
         "alice@example.test", ["bob@host.example.test"],
         [("From", "alice@example.test")],
         "alice@example.test", ["bob@example.test"],
         [("From", "alice@mail.example.test")]),
    Case("append_dot_mydomain",
         {"append_dot_mydomain": "yes"},
         "alice@host", ["bob@desk"],
         [("From", "alice@host"), ("To", "bob@desk")],
         "alice@host.example.test", ["bob@desk.example.test"],
         [("From", "alice@host.example.test"), ("To", "bob@desk.example.test")]),
    Case("a_bare_user_in_a_header_gets_myorigin",
         {"canonical_maps": "inline:{ nobody@nowhere.test=x@nowhere.test }"},
         "alice@example.test", ["bob@remote.test"],
         [("To", "bob@remote.test, carol"), ("From", "Alice <alice>")],
         "alice@example.test", ["bob@remote.test"],
         [("To", "bob@remote.test, carol@example.test"), ("From", "Alice <alice@example.test>")]),
    Case("a_group_and_comments",
         {"canonical_maps": "inline:{ bob@remote.test=robert@remote.test }"},
         "alice@example.test", ["bob@remote.test"],
         [("To", "friends: bob@remote.test (Bob), ann@remote.test;")],
         "alice@example.test", ["robert@remote.test"],
         [("To", "friends: robert@remote.test (Bob), ann@remote.test;")]),
]


# smtp_generic_maps: applied by the SMTP client as the mail leaves; nothing
# in cleanup. Same form; mailferry's side runs delivery/generic.py.
GENERIC_CASES = [
    Case("generic_maps_envelope_and_headers",
         {"smtp_generic_maps": "inline:{ alice@example.test=alice.smith@isp.example, @lan.test=@isp.example }"},
         "alice@example.test", ["bob@remote.test", "carol@lan.test"],
         [("From", "Alice <alice@example.test>"), ("To", "bob@remote.test"), ("Cc", "carol@lan.test"),
          ("Reply-To", "desk@lan.test")],
         "alice.smith@isp.example", ["bob@remote.test", "carol@isp.example"],
         [("From", "Alice <alice.smith@isp.example>"), ("To", "bob@remote.test"), ("Cc", "carol@isp.example"),
          ("Reply-To", "desk@isp.example")]),
    Case("generic_maps_one_lookup_no_chain",
         {"smtp_generic_maps": "inline:{ a@remote.test=b@remote.test, b@remote.test=c@remote.test }"},
         "a@remote.test", ["b@remote.test"],
         [("From", "a@remote.test"), ("To", "b@remote.test")],
         "b@remote.test", ["c@remote.test"],
         [("From", "b@remote.test"), ("To", "c@remote.test")]),
    Case("generic_maps_without_generic_in_propagate_drops_the_extension",
         {"smtp_generic_maps": "inline:{ bob@remote.test=robert@other.test }", "recipient_delimiter": "+"},
         "alice@example.test", ["bob+x@remote.test"],
         [("To", "bob+x@remote.test")],
         "alice@example.test", ["robert@other.test"],
         [("To", "robert@other.test")]),
]


# virtual_alias_maps: expansion in cleanup. Only the envelope recipients change.
VIRTUAL_CASES = [
    Case("virtual_recursive_fan_out_with_a_self_copy",
         {"virtual_alias_maps": "inline:{ {team@alias.test=ann@alias.test, bob@remote.test}, "
                                "ann@alias.test=ann@mail.test, {bob@remote.test=bob@remote.test, b@archive.test} }"},
         "alice@example.test", ["team@alias.test"], [("To", "team@alias.test")],
         "alice@example.test", ["ann@mail.test", "bob@remote.test", "b@archive.test"],
         [("To", "team@alias.test")]),
    Case("virtual_at_domain_and_extension",
         {"virtual_alias_maps": "inline:{ john@alias.test=john@mail.test, @alias.test=catchall@mail.test }",
          "recipient_delimiter": "+"},
         "alice@example.test", ["john+lists@alias.test", "other+x@alias.test"], [],
         "alice@example.test", ["john+lists@mail.test", "catchall@mail.test"]),
    Case("virtual_user_alone_only_for_myorigin",
         {"virtual_alias_maps": "inline:{ postmaster=pm@mail.test }"},
         "alice@example.test", ["postmaster@example.test", "postmaster@remote.test"], [],
         "alice@example.test", ["pm@mail.test", "postmaster@remote.test"]),
    Case("virtual_at_otherdomain_and_duplicates_from_one_recipient",
         {"virtual_alias_maps": "inline:{ @old.test=@new.test, {list@alias.test=a@new.test, b@old.test, a@new.test} }"},
         "alice@example.test", ["Jane@old.test", "list@alias.test"], [],
         "alice@example.test", ["Jane@new.test", "a@new.test", "b@new.test"]),
    Case("canonical_before_virtual",
         {"recipient_canonical_maps": "inline:{ sales@example.test=sales@alias.test }",
          "virtual_alias_maps": "inline:{ sales@alias.test=ann@mail.test }"},
         "alice@example.test", ["sales@example.test"], [],
         "alice@example.test", ["ann@mail.test"]),
]
