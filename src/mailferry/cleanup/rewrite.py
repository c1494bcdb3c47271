"""Address rewriting in cleanup, in Postfix's order (cleanup(8)).

For the envelope sender, then each envelope recipient:
  1. append_dot_mydomain: `user@host` → `user@host.$mydomain`
  2. sender_canonical_maps (sender) or recipient_canonical_maps (recipient),
     then canonical_maps, each when its `*_classes` names the envelope class
  3. masquerade_domains, when masquerade_classes names the class
  4. recipients only: virtual_alias_maps, recursively (cleanup/virtual.py);
     the same final address twice is delivered once.

Automatic BCC (cleanup_addr.c, cleanup_extracted.c): sender_bcc_maps is looked up
with the sender after step 3, recipient_bcc_maps with each recipient after step 3
(before virtual aliases), in mail_addr_find's key order (user@domain, user when
the domain is ours, @domain; no extension propagation); always_bcc is added once
at the end when there is a recipient. A BCC address is rewritten as a recipient
(steps 1-4) and gets NOTIFY=NEVER and no ORCPT. Only for mail that comes in
(smtpd, pickup): never for qmgr's notices, nor with receive_override_options =
no_address_mappings, which turns off all of the above.

Last, each final recipient whose local part still routes (`user%host@ours`,
`host!user@ours`, `a@b@ours`) is queued in the form Postfix's qmgr delivers to
after trivial-rewrite resolved it (routing/addresses.py: our domain stripped,
then allow_percent_hack and swap_bangpath), keeping the given one as its ORCPT.

In the headers (From:, To:, Cc:..., protocol/header_addresses.py) the same
steps 1-3 apply to each address (a bare `user` first gets `@$myorigin`),
with the header_sender / header_recipient classes, and only for mail whose
headers Postfix would rewrite: local submissions and clients that
local_header_rewrite_clients matches.
mailferry has no remote_header_rewrite_domain yet: a remote client's headers
are left as they are, which is Postfix's behaviour with that parameter
empty (its default).

A rewritten recipient keeps the address it was given: unless the client
gave a DSN ORCPT, the recipient's `orcpt` becomes `rfc822;ORIGINAL`, which is
what Postfix sends on as ORCPT and shows as Original-Recipient: in a
bounce (Postfix keeps it in its own orig_rcpt record).

A table that fails for now raises RewriteDeferred, a QueueError: smtpd
answers 4xx and queues nothing, pickup leaves the file for its next pass,
and a notice of qmgr's waits as it does when the queue is full.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from mailferry.cleanup.virtual import ExpansionError, expand
from mailferry.config.config import Config
from mailferry.config.localdomains import address_domain_matcher, local_domain_matcher, open_address_maps
from mailferry.message import NewMessage, Recipient
from mailferry.protocol.header_addresses import rewrite_address_headers
from mailferry.queue import QueueError
from mailferry.routing.addresses import Canonicalizer, rewrite_bare
from mailferry.tables.addresses import AddressMaps, MapDeferred, lookup_address
from mailferry.tables.result import NOT_FOUND

ENVELOPE_SENDER = "envelope_sender"
ENVELOPE_RECIPIENT = "envelope_recipient"
HEADER_SENDER = "header_sender"
HEADER_RECIPIENT = "header_recipient"
CANONICAL_NESTING_LIMIT = 10   # Postfix's cleanup_map11 MAX_RECURSION


class RewriteDeferred(QueueError):
    """Rewriting could not finish for now: the message is not accepted.
    `reply_status`/`reply_text` are the reply Postfix's smtpd gives."""

    def __init__(self, message: str, reply_status: str = "4.3.0",
                 reply_text: str = "Error: queue file write error"):
        super().__init__(message)
        self.enhanced_status = reply_status
        self.reply_text = reply_text


@dataclass(frozen=True, slots=True)
class Canonical:
    maps: AddressMaps
    classes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Bcc:
    """The automatic BCC settings: sender_bcc_maps, recipient_bcc_maps, always_bcc."""
    sender: AddressMaps | None
    recipient: AddressMaps | None
    always: str

    def __bool__(self) -> bool:
        return bool(self.sender or self.recipient or self.always)


@dataclass(slots=True)
class Masquerade:
    domains: list[str]
    classes: frozenset[str]
    exceptions: frozenset[str]


class AddressRewriter:
    def __init__(self, sender_canonical: Canonical | None, recipient_canonical: Canonical | None,
                 canonical: Canonical | None, masquerade: Masquerade | None,
                 virtual: AddressMaps | None, limits: tuple[int, int, int] = (1000, 1000, 1000),
                 dot_mydomain: str = "", myorigin: str = "", observer=None,
                 bcc: Bcc | None = None, routed: Canonicalizer | None = None):
        self.sender_canonical = sender_canonical
        self.recipient_canonical = recipient_canonical
        self.canonical = canonical
        self.masquerade = masquerade
        self.virtual = virtual
        self.limits = limits            # recursion, expansion, address length
        self.dot_mydomain = dot_mydomain  # $mydomain when append_dot_mydomain = yes
        self.myorigin = myorigin          # for bare `user` in headers (envelopes: cleanup.qualify)
        self.observer = observer          # tables/trace.py's Trace, for `mailferry trace`; else None
        self.bcc = bcc or Bcc(None, None, "")
        self.routed = routed              # resolves `user%host@ours` and `host!user@ours`; None: left as given

    @classmethod
    def from_config(cls, config: Config, observer=None) -> AddressRewriter:
        """`observer` (tables/trace.py) is told every lookup and every step; None in the daemon."""
        is_local = address_domain_matcher(config)

        def maps(name: str, propagate_class: str) -> AddressMaps | None:
            return open_address_maps(config, name, propagate_class, is_local, observer)

        def canonical(name: str, classes: str) -> Canonical | None:
            opened = maps(name, "canonical")
            return None if opened is None else Canonical(opened, frozenset(config.list(classes)))

        masquerade = None
        if config.list("masquerade_domains"):
            masquerade = Masquerade(config.list("masquerade_domains"),
                                    frozenset(config.list("masquerade_classes")),
                                    frozenset(name.lower() for name in config.list("masquerade_exceptions")))
        return cls(canonical("sender_canonical_maps", "sender_canonical_classes"),
                   canonical("recipient_canonical_maps", "recipient_canonical_classes"),
                   canonical("canonical_maps", "canonical_classes"),
                   masquerade, maps("virtual_alias_maps", "virtual"),
                   (config.integer("virtual_alias_recursion_limit"),
                    config.integer("virtual_alias_expansion_limit"),
                    config.integer("virtual_alias_address_length_limit")),
                   config.get("mydomain") if config.boolean("append_dot_mydomain") else "",
                   config.get("myorigin") if config.boolean("append_at_myorigin") else "",
                   observer,
                   Bcc(maps("sender_bcc_maps", "bcc"), maps("recipient_bcc_maps", "bcc"),
                       config.get("always_bcc").strip()),
                   Canonicalizer(local_domain_matcher(config), config.get("myhostname"), config.get("myorigin"),
                                 config.boolean("allow_percent_hack"), config.boolean("swap_bangpath"),
                                 config.boolean("resolve_dequoted_address"),
                                 config.boolean("resolve_numeric_domain")))

    @property
    def rewrites_envelope(self) -> bool:
        return bool(self.sender_canonical or self.recipient_canonical or self.canonical
                    or self.masquerade or self.dot_mydomain or self.virtual or self.bcc)

    @property
    def rewrites_headers(self) -> bool:
        return bool(self.sender_canonical or self.recipient_canonical or self.canonical
                    or self.masquerade or self.dot_mydomain or self.myorigin)

    async def rewrite(self, message: NewMessage, rewrite_headers: bool,
                      warn: Callable[[str], None], bcc_ok: bool = False) -> None:
        """Rewrite `message` in place. Raises RewriteDeferred. Nothing is rewritten for a
        service with receive_override_options = no_address_mappings (before a content filter).
        `bcc_ok`: the automatic BCC recipients may be added (mail from smtpd and pickup:
        Postfix's CLEANUP_FLAG_BCC_OK)."""
        if "no_address_mappings" in message.receive_overrides:
            message.recipients = _without_duplicates(self._resolved(message.recipients))
            return
        try:
            if self.rewrites_envelope:
                bcc = self.bcc if bcc_ok else Bcc(None, None, "")
                added: list[Recipient] = []
                if message.sender:
                    message.sender = await self.address(message.sender, ENVELOPE_SENDER, warn)
                    if bcc.sender is not None:
                        added += await self._bcc_lookup(bcc.sender, message.sender)
                message.recipients = await self._recipients(message.recipients, warn, bcc.recipient, added)
                if bcc.always and message.recipients:
                    added.append(Recipient(self._at_myorigin(bcc.always), notify="NEVER"))
                if added:
                    message.recipients += await self._recipients(added, warn, copies=True)
                message.recipients = self._resolved(message.recipients)
            else:
                message.recipients = _without_duplicates(self._resolved(message.recipients))
            if rewrite_headers and self.rewrites_headers:
                message.content = await self._headers(message.content, warn)
        except MapDeferred as problem:
            raise RewriteDeferred(f"{problem} -- message not accepted, try again later") from None
        except ExpansionError as problem:
            raise RewriteDeferred(f"{problem} -- message not accepted, try again later",
                                  problem.reply_status, problem.reply_text) from None

    async def _recipients(self, given: list[Recipient], warn: Callable[[str], None],
                          bcc_maps: AddressMaps | None = None, bcc: list[Recipient] | None = None,
                          copies: bool = False) -> list[Recipient]:
        """Each recipient rewritten and expanded; a rewritten one keeps its original as ORCPT,
        unless it is a BCC copy (`copies`: Postfix gives those no ORCPT). Each one's
        recipient_bcc_maps address (`bcc_maps`) is added to `bcc`, to be rewritten in its turn."""
        expanded: list[Expanded] = []
        for recipient in given:
            address = await self.address(recipient.address, ENVELOPE_RECIPIENT, warn)
            if bcc_maps is not None and bcc is not None:
                bcc += await self._bcc_lookup(bcc_maps, address)
            finals = [address]
            if self.virtual is not None:
                finals = await expand(self.virtual, address, *self.limits, observer=self.observer)
            for final in finals:
                orcpt = recipient.orcpt
                if orcpt is None and final.lower() != recipient.address.lower() and not copies:
                    orcpt = f"rfc822;{recipient.address}"
                expanded.append(Expanded(recipient, dataclasses.replace(recipient, address=final, orcpt=orcpt)))
        return _without_duplicates(expanded)

    def _resolved(self, recipients: list[Recipient]) -> list[Recipient]:
        """Each recipient whose local part routes, as trivial-rewrite resolves it (what Postfix's
        qmgr delivers to); the given address becomes its ORCPT."""
        if self.routed is None:
            return recipients
        for recipient in recipients:
            local, _, domain = recipient.address.rpartition("@")   # a quoted `@` counts: it may be opened
            numeric = self.routed.numeric_domain and domain[-1:].isdigit()
            if "@" not in local and "!" not in local and "%" not in local and not numeric:
                continue
            resolved = self.routed.resolve(recipient.address).address
            if resolved != recipient.address:
                if recipient.orcpt is None and recipient.notify != "NEVER":
                    recipient.orcpt = f"rfc822;{recipient.address}"
                recipient.address = resolved
        return recipients

    async def _bcc_lookup(self, maps: AddressMaps, address: str) -> list[Recipient]:
        """The BCC recipient `maps` gives `address` (Postfix: one address, the value as it is;
        a bare `user` is qualified with $myorigin), or none."""
        if not address:
            return []
        match = await lookup_address(maps.maps, address, maps.is_local_domain, maps.recipient_delimiter)
        if match.result.status == NOT_FOUND:
            return []
        if match.result.tempfail:
            raise MapDeferred(f"{maps.title} map lookup problem for {address}: "
                              f"{match.result.reason or 'lookup failed'}")
        value = (match.result.value or "").strip()
        if self.observer is not None:
            self.observer.step("bcc", f"{maps.title}: {address} -> {value}", map=maps.title,
                               before=address, after=value)
        return [Recipient(self._at_myorigin(value), notify="NEVER")] if value else []

    async def address(self, address: str, address_class: str, warn: Callable[[str], None]) -> str:
        """Steps 1-3 for one address of `address_class`."""
        observer = self.observer
        given, address = address, self._dot_mydomain(address)
        if observer is not None and address != given:
            observer.step("append_dot_mydomain", f"append_dot_mydomain: {given} -> {address}",
                          address_class=address_class, before=given, after=address)
        own = self.sender_canonical if address_class in (ENVELOPE_SENDER, HEADER_SENDER) \
            else self.recipient_canonical
        for canonical in (own, self.canonical):
            if canonical is not None and address_class in canonical.classes:
                address = await map_one(canonical.maps, address, warn, observer)
        if self.masquerade is not None and address_class in self.masquerade.classes:
            given, address = address, masquerade(address, self.masquerade.domains, self.masquerade.exceptions)
            if observer is not None and address != given:
                observer.step("masquerade", f"masquerade_domains: {given} -> {address}",
                              address_class=address_class, before=given, after=address)
        return address

    def _at_myorigin(self, address: str) -> str:
        """A bare `user` gets `@$myorigin`, `host!user` and `user%host` become `user@host`, as
        Postfix's local rewriting context does (trivial-rewrite's rewrite_tree)."""
        if address == "<>":
            return address
        if self.routed is None:
            return rewrite_bare(address, self.myorigin, False, False)
        return rewrite_bare(address, self.myorigin, self.routed.percent_hack, self.routed.swap_bangpath)

    def _dot_mydomain(self, address: str) -> str:
        local, at, domain = address.rpartition("@")
        if not self.dot_mydomain or not at or "." in domain or domain.startswith("["):
            return address
        return f"{local}@{domain}.{self.dot_mydomain}"

    async def _headers(self, content: bytes, warn: Callable[[str], None]) -> bytes:
        async def rewrite(address: str, kind: str) -> str:
            address_class = HEADER_SENDER if kind == "sender" else HEADER_RECIPIENT
            return await self.address(self._at_myorigin(address), address_class, warn)
        qualify_only = not (self.sender_canonical or self.recipient_canonical or self.canonical
                            or self.masquerade or self.dot_mydomain)
        return await rewrite_address_headers(content, rewrite, _has_domain if qualify_only else None)


def _has_domain(address: str) -> bool:
    return "@" in address


@dataclass(slots=True)
class Expanded:
    """A final recipient and the one it was expanded from: the duplicate filter needs both."""

    original: Recipient
    final: Recipient


def _without_duplicates(recipients: list[Recipient] | list[Expanded]) -> list[Recipient]:
    """Postfix's duplicate filter (cleanup_out_recipient.c, enable_original_recipient =
    yes): the same final address, DSN ORCPT and NOTIFY from the same original
    recipient is kept once; from two different original recipients, once for each."""
    seen: set[tuple[str, str, str | None, str | None]] = set()
    kept: list[Recipient] = []
    for item in recipients:
        original, final = (item.original, item.final) if isinstance(item, Expanded) else (item, item)
        key = (final.address.lower(), original.address.lower(), original.orcpt, original.notify)
        if key not in seen:
            seen.add(key)
            kept.append(final)
    return kept


async def map_one(maps: AddressMaps, address: str, warn: Callable[[str], None], observer=None) -> str:
    """canonical: one address in, one out (cleanup_map11). A value with several
    addresses gives its first, with a warning; `a → b → c` gives c, up to ten steps.
    `observer` (tables/trace.py) is told each step."""
    for _ in range(CANONICAL_NESTING_LIMIT):
        results = await maps.map(address)
        if results is None:
            return address
        if len(results) > 1:
            warn(f"multi-valued {maps.title} entry for {address}")
        previous, address = address, results[0]
        if observer is not None:
            observer.step("canonical", f"{maps.title}: {previous} -> {address}", map=maps.title,
                          before=previous, after=address)
        if previous.lower() == address.lower():
            return address
    warn(f"unreasonable {maps.title} map nesting for {address} -- message not accepted, try again later")
    return address


def masquerade(address: str, domains: list[str], exceptions: frozenset[str]) -> str:
    """`user@host.sub.example.com` → `user@example.com` for masquerade_domains =
    example.com; a `!domain` entry (or the domain itself) stops the search,
    leaving the address as it is; masquerade_exceptions names users left alone."""
    local, at, domain = address.rpartition("@")
    if not at or local.lower() in exceptions:
        return address
    domain = domain.lower()
    for entry in domains:
        stripped = entry.lstrip("!")
        truncate = (len(entry) - len(stripped)) % 2 == 0
        masq = stripped.lower()
        if not masq:
            continue
        if masq == domain:
            break
        if domain.endswith("." + masq):
            if truncate:
                return f"{local}@{masq}"
            break
    return address
