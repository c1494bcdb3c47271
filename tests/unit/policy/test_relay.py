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

import asyncio

import pytest

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.policy.engine import Engine
from mailferry.policy.facts import SessionFacts
from mailferry.policy.session import SessionPolicy
from mailferry.policy.settings import PolicySettings
from mailferry.refusals import Refusal

STRANGER = ("203.0.113.9", False, "")
TRUSTED = ("192.0.2.10", True, "")
LOGGED_IN = ("203.0.113.9", False, "alice")
POSTFIX_DEFAULT = "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"


class Relay:
    """The engine with only relay control configured (no DNS, no recipient tables)."""

    def __init__(self, tmp_path, relay: str, recipient: str, relay_domains: str, relay_domains_reject: int):
        text = (f"myhostname = mx.example.com\nmydestination = example.com\nrelay_domains = {relay_domains}\n"
                f"smtpd_relay_restrictions = {relay}\nsmtpd_recipient_restrictions = {recipient}\n"
                f"relay_domains_reject_code = {relay_domains_reject}\n")
        config = Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))
        self.engine = Engine(PolicySettings.from_config(config), dns=None)

    def check_recipient(self, client, address: str) -> Refusal | None:
        address_, in_mynetworks, login = client
        policy = SessionPolicy(self.engine, SessionFacts(address_, in_mynetworks=in_mynetworks,
                                                         sasl_username=login))
        self.policy = policy

        async def run():
            await policy.mail("sender@remote.example")
            return await policy.rcpt(address)
        return asyncio.run(run())

    def is_authorized_destination(self, address: str) -> bool:
        return self.check_recipient(STRANGER, address) is None

    @property
    def warnings(self) -> list[str]:
        return self.policy.session.warnings


@pytest.fixture
def policy(tmp_path):
    def make(relay=POSTFIX_DEFAULT, recipient="", relay_domains="", relay_domains_reject=554):
        return Relay(tmp_path, relay, recipient, relay_domains, relay_domains_reject)
    return make


def code_of(decision: Refusal | None):
    return None if decision is None else (decision.reply.code, decision.reply.enhanced)


PERMIT = None
RELAY_DENIED = (554, "5.7.1")
RELAY_DEFERRED = (454, "4.7.1")  # relay_domains_reject_code - 100, as Postfix
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
def test_restriction_lists(policy, relay, recipient, client, address, expected):
    assert code_of(policy(relay, recipient).check_recipient(client, address)) == expected


def test_relay_access_denied_text_names_the_recipient(policy):
    decision = policy("reject_unauth_destination").check_recipient(STRANGER, "carol@remote.example")
    assert decision.reply.text == "<carol@remote.example>: Relay access denied"


def test_defer_unauth_destination_text(policy):
    decision = policy("defer_unauth_destination").check_recipient(STRANGER, "carol@remote.example")
    assert decision.reply.text == "<carol@remote.example>: Relay access denied"


def test_reject_text(policy):
    decision = policy("reject").check_recipient(STRANGER, "bob@example.com")
    assert decision.reply.text == "<bob@example.com>: Recipient address rejected: Access denied"


def test_relay_domains_reject_code_sets_the_reject_unauth_destination_code(policy):
    decision = policy("reject_unauth_destination", relay_domains_reject=550).check_recipient(
        STRANGER, "carol@remote.example")
    assert code_of(decision) == (550, "5.7.1")


def test_defer_unauth_destination_is_relay_domains_reject_code_minus_100(policy):
    # Postfix: var_relay_code - 100 (smtpd_check.c), so 550 gives 450 and 554 gives 454.
    assert code_of(policy("defer_unauth_destination", relay_domains_reject=550).check_recipient(
        STRANGER, "carol@remote.example")) == (450, "4.7.1")
    assert code_of(policy("defer_unauth_destination").check_recipient(
        STRANGER, "carol@remote.example")) == (454, "4.7.1")


def test_an_unknown_restriction_says_server_configuration_error_and_logs_its_name(policy):
    relay = policy("permit_mynetwork")
    decision = relay.check_recipient(TRUSTED, "bob@example.com")
    assert decision.reply.text == "Server configuration error"
    assert 'unknown smtpd restriction: "permit_mynetwork"' in relay.warnings


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
def test_relay_domains(policy, relay_domains, address, authorized):
    relay = policy("reject_unauth_destination", relay_domains=relay_domains)
    assert relay.is_authorized_destination(address) is authorized


def test_an_excluded_relay_domain_is_not_authorized(policy):
    # "!pattern" excludes; the list is matched left to right and the first match decides.
    relay = policy("reject_unauth_destination", relay_domains="!internal.example.org, example.org")
    assert relay.is_authorized_destination("carol@mail.example.org")
    assert code_of(relay.check_recipient(STRANGER, "carol@internal.example.org")) == RELAY_DENIED


def test_our_own_domains_are_authorized_destinations(policy):
    relay = policy("reject_unauth_destination")
    assert relay.is_authorized_destination("bob@example.com")
    assert not relay.is_authorized_destination("bob@sub.example.com")


def test_a_bare_local_part_is_ours(policy):
    # postmaster is never judged; another bare name is ours (it resolves to @$myhostname... ours).
    relay = policy("reject_unauth_destination")
    assert relay.check_recipient(STRANGER, "postmaster") is None


def test_a_routed_address_is_never_an_authorized_destination(policy):
    relay = policy("reject_unauth_destination", relay_domains="example.org")
    assert not relay.is_authorized_destination("bob%remote.example@example.org")
    assert not relay.is_authorized_destination("remote.example!bob@example.org")


def test_a_stranger_cannot_relay_through_a_percent_address_at_our_domain(policy):
    # Our domain is stripped and the percent hack applied: bob@remote.example, not ours.
    decision = policy("permit_auth_destination, reject_unauth_destination").check_recipient(
        STRANGER, "bob%remote.example@example.com")
    assert code_of(decision) == RELAY_DENIED


def test_a_trusted_client_may_still_send_to_a_routed_address(policy):
    decision = policy("permit_mynetworks, reject_unauth_destination").check_recipient(
        TRUSTED, "bob%remote.example@example.com")
    assert decision is None
