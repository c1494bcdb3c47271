"""Relay control with Postfix's restriction semantics (postconf(5), smtpd_relay_restrictions).

- smtpd_relay_restrictions is evaluated before smtpd_recipient_restrictions;
  `permit` ends only the list it is in, a reject in either list decides.
- reject_unauth_destination: relay_domains_reject_code (554) 5.7.1
  "<rcpt>: Relay access denied"; defer_unauth_destination: 450 4.7.1.
- reject: 554 5.7.1 "<rcpt>: Recipient address rejected: Access denied".
- An unknown restriction is a server configuration error, 451 4.3.5, and
  never lets mail through.
- relay_domains matches subdomains (relay_domains is in
  parent_domain_matches_subdomains by default), on label boundaries, and
  "!pattern" excludes; the list is matched left to right, first match wins.
- An address with sender-specified routing is never an authorized destination.
"""

import pytest

from mailferry.refusals import Refusal, RestrictionCodes
from mailferry.smtpd.relay import ClientFacts, RelayPolicy

OURS = {"example.com"}
STRANGER = ClientFacts("203.0.113.9", in_mynetworks=False)
TRUSTED = ClientFacts("192.0.2.10", in_mynetworks=True)
LOGGED_IN = ClientFacts("203.0.113.9", in_mynetworks=False, sasl_username="alice")
POSTFIX_DEFAULT = "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"


def policy(relay=POSTFIX_DEFAULT, recipient="", relay_domains="", **codes):
    return RelayPolicy(relay, recipient, lambda domain: domain in OURS, relay_domains, RestrictionCodes(**codes))


def code_of(decision: Refusal | None):
    return None if decision is None else (decision.reply.code, decision.reply.enhanced)


PERMIT = None
RELAY_DENIED = (554, "5.7.1")
RELAY_DEFERRED = (450, "4.7.1")
CONFIG_ERROR = (451, "4.3.5")


@pytest.mark.parametrize("relay, recipient, client, address, expected", [
    # Postfix's default smtpd_relay_restrictions.
    (POSTFIX_DEFAULT, "", TRUSTED, "carol@remote.example", PERMIT),
    (POSTFIX_DEFAULT, "", LOGGED_IN, "carol@remote.example", PERMIT),
    (POSTFIX_DEFAULT, "", STRANGER, "carol@remote.example", RELAY_DEFERRED),
    (POSTFIX_DEFAULT, "", STRANGER, "bob@example.com", PERMIT),
    # reject_unauth_destination: 554, defer_unauth_destination: 450.
    ("permit_mynetworks, reject_unauth_destination", "", STRANGER, "carol@remote.example", RELAY_DENIED),
    ("permit_mynetworks, reject_unauth_destination", "", TRUSTED, "carol@remote.example", PERMIT),
    ("permit_mynetworks, reject_unauth_destination", "", STRANGER, "bob@example.com", PERMIT),
    ("defer_unauth_destination", "", STRANGER, "carol@remote.example", RELAY_DEFERRED),
    # The pre-2.10 style: everything in smtpd_recipient_restrictions.
    ("", "permit_mynetworks, reject_unauth_destination", STRANGER, "carol@remote.example", RELAY_DENIED),
    ("", "permit_mynetworks, reject_unauth_destination", TRUSTED, "carol@remote.example", PERMIT),
    # permit / reject / permit_auth_destination.
    ("permit", "", STRANGER, "carol@remote.example", PERMIT),
    ("reject", "", TRUSTED, "bob@example.com", (554, "5.7.1")),
    ("permit_auth_destination, reject", "", STRANGER, "bob@example.com", PERMIT),
    ("permit_auth_destination, reject", "", STRANGER, "carol@remote.example", (554, "5.7.1")),
    # permit ends only its own list: the recipient restrictions still run.
    ("permit", "reject", STRANGER, "bob@example.com", (554, "5.7.1")),
    ("permit_mynetworks, reject_unauth_destination", "reject", TRUSTED, "carol@remote.example", (554, "5.7.1")),
    # ... but nothing after it in the same list.
    ("permit_mynetworks, no_such_restriction", "", TRUSTED, "carol@remote.example", PERMIT),
    # The relay list runs first: its reject wins over a later list's configuration error.
    ("reject_unauth_destination", "no_such_restriction", STRANGER, "carol@remote.example", RELAY_DENIED),
    ("reject_unauth_destination", "no_such_restriction", STRANGER, "bob@example.com", CONFIG_ERROR),
    # An unknown restriction is never a permit, even before a permit that would have applied.
    ("permit_mynetwork, reject_unauth_destination", "", TRUSTED, "carol@remote.example", CONFIG_ERROR),
    ("permit_mynetwork", "", TRUSTED, "bob@example.com", CONFIG_ERROR),
    # Neither list says anything: permitted (Postfix's own config check refuses such a setup elsewhere).
    ("", "", STRANGER, "carol@remote.example", PERMIT),
])
def test_restriction_lists(relay, recipient, client, address, expected):
    assert code_of(policy(relay, recipient).check_recipient(client, address, routed=False)) == expected


def test_relay_access_denied_text_names_the_recipient():
    decision = policy("reject_unauth_destination").check_recipient(STRANGER, "carol@remote.example", False)
    assert decision.reply.text == "<carol@remote.example>: Relay access denied"
    assert decision.log_reason == "reject_unauth_destination"


def test_defer_unauth_destination_text():
    decision = policy("defer_unauth_destination").check_recipient(STRANGER, "carol@remote.example", False)
    assert decision.reply.text == "<carol@remote.example>: Relay access denied"


def test_reject_text():
    decision = policy("reject").check_recipient(STRANGER, "bob@example.com", False)
    assert decision.reply.text == "<bob@example.com>: Recipient address rejected: Access denied"


def test_relay_domains_reject_code_sets_the_reject_unauth_destination_code():
    decision = policy("reject_unauth_destination", relay_domains_reject=550) \
        .check_recipient(STRANGER, "carol@remote.example", False)
    assert code_of(decision) == (550, "5.7.1")


def test_relay_domains_reject_code_does_not_change_defer_unauth_destination():
    decision = policy("defer_unauth_destination", relay_domains_reject=550) \
        .check_recipient(STRANGER, "carol@remote.example", False)
    assert code_of(decision) == RELAY_DEFERRED


def test_an_unknown_restriction_says_server_configuration_error_and_logs_its_name():
    decision = policy("permit_mynetwork").check_recipient(TRUSTED, "bob@example.com", False)
    assert decision.reply.text == "Server configuration error"
    assert "permit_mynetwork" in decision.log_reason


# --- relay_domains and authorized destinations


@pytest.mark.parametrize("relay_domains, address, authorized", [
    ("example.org", "carol@example.org", True),
    ("example.org", "carol@mail.example.org", True),        # parent domain matches subdomains
    ("example.org", "carol@a.b.example.org", True),
    ("example.org", "carol@notexample.org", False),         # only on a label boundary
    ("example.org", "carol@example.org.evil.example", False),
    ("example.org", "carol@org", False),
    ("Example.ORG", "carol@Mail.EXAMPLE.org", True),        # domain names are case-insensitive
    ("example.org", "carol@mail.example.org.", True),       # trailing dot of a fully qualified name
    ("example.org, example.net", "carol@example.net", True),
    ("", "carol@example.org", False),
])
def test_relay_domains(relay_domains, address, authorized):
    assert policy(relay_domains=relay_domains).is_authorized_destination(address, routed=False) is authorized


def test_an_excluded_relay_domain_is_not_authorized():
    # "!pattern" excludes; the list is matched left to right and the first match decides.
    relay = policy(relay_domains="!internal.example.org, example.org")
    assert relay.is_authorized_destination("carol@mail.example.org", routed=False)
    assert not relay.is_authorized_destination("carol@internal.example.org", routed=False)
    decision = policy("reject_unauth_destination", relay_domains="!internal.example.org, example.org") \
        .check_recipient(STRANGER, "carol@internal.example.org", False)
    assert code_of(decision) == RELAY_DENIED


def test_our_own_domains_are_authorized_destinations():
    assert policy().is_authorized_destination("bob@example.com", routed=False)
    assert not policy().is_authorized_destination("bob@sub.example.com", routed=False)


def test_a_bare_local_part_is_ours():
    assert policy().is_authorized_destination("postmaster", routed=False)
    assert policy("reject_unauth_destination").check_recipient(STRANGER, "postmaster", False) is None


def test_a_routed_address_is_never_an_authorized_destination():
    relay = policy(relay_domains="example.org")
    assert not relay.is_authorized_destination("bob%remote.example@example.com", routed=True)
    assert not relay.is_authorized_destination("carol@example.org", routed=True)


def test_a_stranger_cannot_relay_through_a_routed_address_at_our_domain():
    decision = policy("permit_auth_destination, reject_unauth_destination") \
        .check_recipient(STRANGER, "bob%remote.example@example.com", routed=True)
    assert code_of(decision) == RELAY_DENIED


def test_a_trusted_client_may_still_send_to_a_routed_address():
    decision = policy("permit_mynetworks, reject_unauth_destination") \
        .check_recipient(TRUSTED, "bob%remote.example@example.com", routed=True)
    assert decision is None
