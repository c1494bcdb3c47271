"""reject_unlisted_recipient: is the recipient known, at RCPT time (Postfix's check_rcpt_maps).

With smtpd_reject_unlisted_recipient = yes (the default), a recipient that
passed the restrictions is checked once more, in Postfix's order:

1. an address that recipient_canonical_maps, canonical_maps or
   virtual_alias_maps knows (in the address lookup order, tables/addresses.py)
   is accepted: cleanup will rewrite it;
2. otherwise its domain's address class (routing/classes.py) names the table
   that must know it:
   - virtual alias domain: none can, `550 5.1.1 <addr>: Recipient address
     rejected: User unknown in virtual alias table` (unknown_virtual_alias_reject_code);
   - local (mydestination, or no domain): local_recipient_maps, "User unknown in
     local recipient table" (unknown_local_recipient_reject_code); postmaster,
     MAILER-DAEMON and double-bounce are always accepted, as Postfix's qmgr and
     bounce need them; an empty local_recipient_maps accepts everyone;
   - virtual mailbox domain: virtual_mailbox_maps, "User unknown in virtual
     mailbox table" (unknown_virtual_mailbox_reject_code);
   - relay domain: relay_recipient_maps when set, "User unknown in relay
     recipient table" (unknown_relay_recipient_reject_code);
   - anything else is not checked here (relay control decided already).
   show_user_unknown_table_name = no leaves the table's name out.
3. a table that fails for now, in any step, gives `451 4.3.0 <addr>: Temporary
   lookup failure`: never "unknown", and never an accept that cleanup could
   then not honour. A table that cannot be opened at all (the default
   `hash:/etc/aliases` before `mailferry newaliases`) answers that way too, as
   Postfix's surrogate table does, and the log says why.

An address without a domain is looked up as user@$myorigin, as Postfix's
resolver hands it to the check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailferry import refusals
from mailferry.config.config import Config
from mailferry.config.localdomains import LookupDeferred, address_domain_matcher
from mailferry.refusals import Refusal
from mailferry.routing.classes import LOCAL, RELAY, VIRTUAL_ALIAS, VIRTUAL_MAILBOX, AddressClasses, ClassLookupFailed
from mailferry.syntax import split_list
from mailferry.tables import Maps, Table, TableError, open_maps, open_table, tempfail
from mailferry.tables.addresses import lookup_address

# Local parts every local domain accepts, whatever local_recipient_maps says (smtpd_check.c).
ALWAYS_LOCAL = ("postmaster", "mailer-daemon")


@dataclass(frozen=True, slots=True)
class ClassTable:
    """The table that must know a recipient of one address class, and how to refuse."""

    parameter: str       # local_recipient_maps, virtual_mailbox_maps, relay_recipient_maps
    maps: Maps
    reject_code: int
    table_text: str      # "local recipient table", or "" with show_user_unknown_table_name = no


class RecipientMaps:
    def __init__(self, maps: list[Maps], classes: AddressClasses, is_local: Callable[[str], bool],
                 delimiter: str, reject_code: int, enabled: bool, names: list[str] | None = None, observer=None,
                 class_tables: dict[str, ClassTable] | None = None, myorigin: str = "",
                 double_bounce_sender: str = "double-bounce"):
        """`maps`: the rewriting maps that make an address known (`names`: their parameters).
        `class_tables`: address class → the table that must know its recipients.
        `observer`: tables/trace.py, for `mailferry trace`; None in the daemon."""
        self._maps = maps
        self._names = names or ["recipient maps"] * len(maps)
        self._observer = observer
        self._classes = classes
        self._class_tables = class_tables or {}
        self._is_local = is_local
        self._delimiter = delimiter
        self._reject_code = reject_code
        self._myorigin = myorigin
        self._always_local = (*ALWAYS_LOCAL, double_bounce_sender.lower())
        self.enabled = enabled

    @classmethod
    def from_config(cls, config: Config, observer=None) -> RecipientMaps:
        names = [name for name in ("recipient_canonical_maps", "canonical_maps", "virtual_alias_maps")
                 if config.get(name).strip()]
        maps = [open_maps(config.get(name), observer=observer) for name in names]
        classes = AddressClasses.from_config(config, observer)
        class_tables = _class_tables(config, observer)
        # receive_override_options = no_unknown_recipient_checks (after a content filter): off.
        enabled = config.boolean("smtpd_reject_unlisted_recipient") and bool(
            maps or class_tables or config.get("virtual_alias_domains").strip()) and \
            "no_unknown_recipient_checks" not in config.list("receive_override_options")
        return cls(maps, classes, address_domain_matcher(config), config.get("recipient_delimiter"),
                   config.integer("unknown_virtual_alias_reject_code"), enabled, names, observer, class_tables,
                   config.get("myorigin"), config.get("double_bounce_sender"))

    async def check(self, address: str) -> Refusal | None:
        """None when `address` may pass; else the refusal."""
        qualified = address if "@" in address or not self._myorigin else f"{address}@{self._myorigin}"
        try:
            if await self._rewritten(qualified):
                return None
            domain = qualified.rpartition("@")[2].lower().rstrip(".") if "@" in qualified else ""
            address_class = await self._classes.of(domain)
            if address_class == VIRTUAL_ALIAS:
                self._tell("recipient_maps", f"domain {domain} is in virtual_alias_domains and no map knows"
                           f" {address}", domain=domain)
                return refusals.unknown_virtual_alias(self._reject_code, address)
            return await self._check_class(address, qualified, address_class)
        except (ClassLookupFailed, LookupDeferred) as problem:
            return refusals.temporary_lookup_failure(address, str(problem))

    async def _rewritten(self, address: str) -> bool:
        for name, maps in zip(self._names, self._maps):
            match = await lookup_address(maps, address, self._is_local, self._delimiter)
            if match.result.tempfail:
                raise LookupDeferred(f"{name}: {match.result.reason}")
            if match.result.found:
                self._tell("recipient_maps", f"{name} knows {address} (key {match.key}): cleanup will rewrite it",
                           map=name, key=match.key)
                return True
        return False

    async def _check_class(self, address: str, qualified: str, address_class: str) -> Refusal | None:
        table = self._class_tables.get(address_class)
        if table is None:
            return None
        local_part = qualified.rpartition("@")[0].lower()
        if address_class == LOCAL and local_part in self._always_local:
            return None
        match = await lookup_address(table.maps, qualified, self._is_local, self._delimiter)
        if match.result.tempfail:
            raise LookupDeferred(f"{table.parameter}: {match.result.reason}")
        if match.result.found:
            self._tell("recipient_maps", f"{table.parameter} knows {address} (key {match.key})",
                       map=table.parameter, key=match.key)
            return None
        self._tell("recipient_maps", f"address class {address_class}: {table.parameter} does not know {address}",
                   map=table.parameter)
        return refusals.unknown_recipient(table.reject_code, address, table.table_text)

    def _tell(self, kind: str, text: str, **facts) -> None:
        if self._observer is not None:
            self._observer.step(kind, text, **facts)


# address class: (the table's parameter, its reject code's parameter, the table's name in the reply)
_CLASS_TABLES = {
    LOCAL: ("local_recipient_maps", "unknown_local_recipient_reject_code", "local recipient table"),
    VIRTUAL_MAILBOX: ("virtual_mailbox_maps", "unknown_virtual_mailbox_reject_code", "virtual mailbox table"),
    RELAY: ("relay_recipient_maps", "unknown_relay_recipient_reject_code", "relay recipient table"),
}


def _class_tables(config: Config, observer=None) -> dict[str, ClassTable]:
    """The tables of the classes whose parameter is set: an empty one accepts every recipient."""
    show_name = config.boolean("show_user_unknown_table_name")
    tables = {}
    for address_class, (parameter, code, text) in _CLASS_TABLES.items():
        value = config.get(parameter)
        if value.strip():
            maps = Maps([_open_or_surrogate(spec, observer) for spec in split_list(value)])
            tables[address_class] = ClassTable(parameter, maps, config.integer(code), text if show_name else "")
    return tables


def _open_or_surrogate(spec: str, observer=None) -> Table:
    try:
        return open_table(spec, observer=observer)
    except TableError as problem:
        return UnavailableTable(spec, str(problem))


class UnavailableTable(Table):
    """A table that could not be opened: every lookup fails for now (Postfix's dict_surrogate),
    so the recipient waits rather than being called unknown."""

    type_name = "unavailable"

    def __init__(self, spec: str, problem: str):
        super().__init__(spec)
        self._reason = f"{spec} is unavailable. {problem}"

    def lookup_now(self, key: str):
        return tempfail(self._reason)
