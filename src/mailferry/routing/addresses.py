"""An address as Postfix's trivial-rewrite canonicalizes and resolves it.

Used by the restrictions (policy/) and by cleanup, which queues each final
recipient in the form Postfix's qmgr delivers to after resolving it.

Postfix looks an address up in access maps and smtpd_sender_login_maps only
after trivial-rewrite resolved it: while the domain is ours (mydestination,
or an address literal of inet_interfaces/proxy_interfaces), it is stripped
and what is left is rewritten again, so `user%example.com@ours` becomes
`user@example.com` (allow_percent_hack), `host!user@ours` becomes
`user@host` (swap_bangpath), and a bare local part gets its domain back.
That is what keeps `victim%domain@ours` from dodging a sender-login check.

With resolve_dequoted_address (the default) a quoted local part is opened
too: `"user@example.com"@ours` becomes `user@example.com`.

An address whose local part still holds `@`, `!` or `%` after that (quoted
or not, whatever the two settings say) is "routed" (RESOLVE_FLAG_ROUTED): never an authorized destination for relay
control, and never OK from a recipient access map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry.protocol.address import is_ipv4, last_unquoted_at, unquote_local_part, unquoted_characters


@dataclass(frozen=True, slots=True)
class Resolved:
    address: str      # user@domain, canonical; the domain case as given
    routed: bool      # sender-specified routing is left in the local part

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]


@dataclass(frozen=True, slots=True)
class Canonicalizer:
    """`is_local(domain)`: resolve_local (mydestination and our address literals)."""

    is_local: Callable[[str], bool]
    myhostname: str
    myorigin: str
    percent_hack: bool = True
    swap_bangpath: bool = True
    dequote: bool = True     # resolve_dequoted_address: look for routing inside a quoted local part
    numeric_domain: bool = False  # resolve_numeric_domain: user@192.0.2.1 is user@[192.0.2.1]

    def resolve(self, address: str) -> Resolved:
        current = address
        saved_domain = ""
        for _ in range(len(address) + 100):
            current = _strip_trailing_dot(current)
            at = last_unquoted_at(current)
            if at >= 0 and self.numeric_domain and is_ipv4(current[at + 1:]):
                current = f"{current[:at]}@[{current[at + 1:]}]"   # resolve_numeric_domain
            if at >= 0:
                local, domain = current[:at], current[at + 1:]
                if domain and not self.is_local(domain.lower()):
                    break
                current, saved_domain = local, domain or saved_domain
            bare = _outside_quotes(current)
            if "@" in bare or (self.swap_bangpath and "!" in bare) or (self.percent_hack and "%" in bare):
                current = self._rewrite(current)
                continue
            opened = self._dequoted(current)
            if opened is not None:
                current = rewrite_bare(opened, self.myorigin, self.percent_hack, self.swap_bangpath)
                continue
            if not current:
                current = "postmaster"
                continue
            if not saved_domain:
                current = f"{current}@{self.myhostname}"
                continue
            current = f"{current}@{saved_domain}"
            break
        local = current.rpartition("@")[0]
        # As resolve.c: any operator, quoted or not, whatever swap_bangpath and allow_percent_hack
        # say, since the next MX host may route it.
        routed = "@" in local or "!" in local or "%" in local
        return Resolved(current, routed)

    def _dequoted(self, local: str) -> str | None:
        """resolve.c with resolve_dequoted_address: a quoted local part (`"user@host"`,
        `"user%host"`, `"host!user"`) opened when it holds a routing operator, the last
        `%` made an `@`; None when there is nothing to open."""
        if not self.dequote or len(local) < 2 or not (local.startswith('"') and local.endswith('"')):
            return None
        text = unquote_local_part(local)
        if "@" in text:
            return text
        if self.percent_hack and "%" in text:
            user, _, host = text.rpartition("%")
            return f"{user}@{host}"
        if self.swap_bangpath and "!" in text:
            return text
        return None

    def _rewrite(self, local: str) -> str:
        """rewrite_tree in the local context, for what is left of an address
        after a domain of ours was stripped."""
        return rewrite_bare(local, self.myorigin, self.percent_hack, self.swap_bangpath)


def rewrite_bare(address: str, myorigin: str, percent_hack: bool = True, swap_bangpath: bool = True) -> str:
    """trivial-rewrite's rewrite_tree for an address with no `@`: `a!b` → `b@a` (swap_bangpath;
    at the first `!`), else `a%b` → `a@b` (allow_percent_hack; at the last `%`), else
    `@$myorigin` appended (when `myorigin` is not empty: append_at_myorigin)."""
    if "@" in address:
        return address
    if swap_bangpath and "!" in address:
        host, _, user = address.partition("!")
        return f"{user}@{host}"
    if percent_hack and "%" in address:
        user, _, host = address.rpartition("%")
        return f"{user}@{host}"
    return f"{address}@{myorigin}" if myorigin else address


def _outside_quotes(text: str) -> str:
    """`text` without its quoted strings: the routing operators that count as such."""
    kept, _ = unquoted_characters(text)
    return "".join(char for _, char in kept)


def _strip_trailing_dot(address: str) -> str:
    if address.endswith(".") and "@" in address and not address.endswith("@."):
        return address[:-1]
    return address
