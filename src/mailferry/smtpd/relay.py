"""Relay control: smtpd_relay_restrictions, then smtpd_recipient_restrictions.

The restrictions implemented so far, with Postfix's meaning:

  permit, reject, permit_mynetworks, permit_sasl_authenticated,
  reject_unauth_destination, defer_unauth_destination,
  permit_auth_destination

A list is evaluated in order; the first restriction that decides ends that
list (permit moves on to the next list), and a list that ends without a
decision permits. A restriction mailferry does not know is a server
configuration error: the client gets `451 4.3.5`, never an accidental permit.

"Authorized destination" is Postfix's: the recipient's domain is ours
(mydestination, or an address literal of our interfaces) or in
relay_domains, AND the address carries no sender-specified routing: a local
part with `%`, `!` or `@`, or a source route, never counts as ours for an
untrusted client (allow_untrusted_routing = no). That closes the percent
hack, bang paths, double-@ and source-route relays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry import refusals
from mailferry.refusals import DEFER, REJECT, Refusal, RestrictionCodes
from mailferry.syntax import split_list
from mailferry.tables.match_lists import DomainList

PERMIT = None  # what a check returns when the recipient may pass


@dataclass(frozen=True, slots=True)
class ClientFacts:
    address: str
    in_mynetworks: bool
    sasl_username: str = ""


class RelayPolicy:
    def __init__(self, relay_restrictions: str, recipient_restrictions: str,
                 is_local_domain: Callable[[str], bool], relay_domains: str,
                 codes: RestrictionCodes = RestrictionCodes()):
        self._lists = [split_list(relay_restrictions), split_list(recipient_restrictions)]
        self._is_local = is_local_domain
        self._relay_domains = DomainList(relay_domains)
        self._codes = codes

    def check_recipient(self, client: ClientFacts, address: str, routed: bool) -> Refusal | None:
        for restrictions in self._lists:
            for name in restrictions:
                decision = self._apply(name, client, address, routed)
                if decision == "permit":
                    break
                if isinstance(decision, Refusal):
                    return decision
        return PERMIT

    def is_authorized_destination(self, address: str, routed: bool) -> bool:
        if routed:
            return False
        domain = address_domain(address)
        if not domain:
            return True  # a bare local part (postmaster) is ours
        return self._is_local(domain) or self._relay_domains.matches(domain)

    def _apply(self, name: str, client: ClientFacts, address: str, routed: bool) -> str | Refusal | None:
        if name == "permit":
            return "permit"
        if name == "reject":
            return refusals.access_denied(REJECT, self._codes, address, refusals.RECIPIENT, name)
        if name == "permit_mynetworks":
            return "permit" if client.in_mynetworks else None
        if name == "permit_sasl_authenticated":
            return "permit" if client.sasl_username else None
        if name == "permit_auth_destination":
            return "permit" if self.is_authorized_destination(address, routed) else None
        if name in ("reject_unauth_destination", "defer_unauth_destination"):
            if self.is_authorized_destination(address, routed):
                return None
            action = REJECT if name.startswith("reject") else DEFER
            return refusals.relay_access_denied(action, self._codes, address, name)
        return refusals.server_configuration_error(name)


def address_domain(address: str) -> str:
    """The domain of `local@domain`, lower case, no trailing dot; "" for a bare local part."""
    if "@" not in address:
        return ""
    return address.rpartition("@")[2].lower().rstrip(".")
