"""smtpd_sender_login_maps: who owns a sender address, and the mismatch checks.

The address is first resolved as Postfix's resolve does (addresses.py), so
`victim%example.com@ours` is looked up as `victim@example.com`. Then the
keys, in mail_addr_find's order (tables/addresses.py): `user+ext@domain`,
`user@domain`; `user+ext`, `user` only when the domain is $myorigin, in
$mydestination, or an address literal of $inet_interfaces/$proxy_interfaces;
then `@domain`. Keys are folded to lower case. The value is a list of owners
(login names), separated by commas or spaces; a login name matches an owner
whatever the case, as Postfix's strcasecmp_utf8.

The restrictions (Postfix's reject_auth_sender_login_mismatch and
reject_unauth_sender_login_mismatch):
- logged in, and the address has owners but the login is not one of them,
  or (reject_authenticated_/reject_sender_login_mismatch) has no owner at all:
  `553 5.7.1 <addr>: Sender address rejected: not owned by user NAME`;
- not logged in, and the address has an owner:
  `553 5.7.1 <addr>: Sender address rejected: not logged in`.

smtpd_sender_login_header_check (mailferry's own) applies the logged-in
rule to the addresses of the header From: at end of data: see header_from().
"""

from __future__ import annotations

from collections.abc import Callable

from mailferry.policy.access import LookupFailed
from mailferry.routing.addresses import Canonicalizer
from mailferry.syntax import split_list
from mailferry.tables import Maps
from mailferry.tables.addresses import lookup_address

OWNED = "owned"
NOT_OWNED = "not-owned"
NO_OWNER = "no-owner"


class SenderLogins:
    def __init__(self, maps: Maps, canonicalizer: Canonicalizer, is_address_domain: Callable[[str], bool],
                 recipient_delimiter: str = ""):
        """`is_address_domain`: where the bare `user` key applies ($myorigin, $mydestination, interfaces)."""
        self._maps = maps
        self._canonical = canonicalizer
        self._is_address_domain = is_address_domain
        self._delimiter = recipient_delimiter

    async def owners(self, sender: str) -> list[str] | None:
        """The owners of `sender`, or None when the table does not list it.
        Raises LookupFailed when a table fails for now."""
        resolved = self._canonical.resolve(sender).address.lower()
        match = await lookup_address(self._maps, resolved, self._is_address_domain, self._delimiter)
        if match.result.tempfail:
            raise LookupFailed(match.result.reason)
        if not match.result.found:
            return None
        return split_list(match.result.value or "")

    async def ownership(self, sender: str, login: str) -> str:
        owners = await self.owners(sender)
        if owners is None:
            return NO_OWNER
        wanted = login.casefold()
        return OWNED if any(owner.casefold() == wanted for owner in owners) else NOT_OWNED
