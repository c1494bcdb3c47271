"""The restriction lists, their order and their outcome: Postfix's smtpd_check.

Stages, and what each evaluates (smtpd calls them at the SMTP command named):

    connect  check_client       smtpd_client_restrictions    (only with smtpd_delay_reject = no)
    HELO     check_helo         smtpd_helo_restrictions      (only with smtpd_delay_reject = no)
    MAIL     check_sender       smtpd_sender_restrictions    (only with smtpd_delay_reject = no)
    RCPT     check_recipient    with smtpd_delay_reject = yes (the default) first the client,
                                helo and sender lists again, then smtpd_relay_restrictions and
                                smtpd_recipient_restrictions (in that order unless
                                smtpd_relay_before_recipient_restrictions = no), then
                                smtpd_reject_unlisted_recipient
    DATA     check_data         smtpd_data_restrictions
    end      check_end_of_data  smtpd_end_of_data_restrictions, then smtpd_sender_login_header_check

Within a list (generic_checks): the restrictions are tried in order; the first
that permits or rejects ends the list (a permit moves on to the next list); a
list that ends undecided permits. warn_if_reject turns the rejections of the
restrictions after it (in its list or class) into "reject_warning" log lines.
defer_if_permit remembers a temporary refusal that wins only if the
evaluation ends in a permit; defer_if_reject one that replaces a later 5xx
rejection. A defer_if_permit of the client, helo and sender stages carries
into RCPT, as in Postfix. A restriction class name runs that class's list. A
`type:table` item stands for the stage's own check_*_access with that table.
An unknown restriction, or a table error, gives `451 4.3.5 Server
configuration error`; a table that fails for now `451 4.3.0 <name>:
Temporary lookup failure`: never an accidental permit.

Each evaluation returns a refusals.Refusal, or None to go on; the log lines it
asks for are in session.notes, configuration problems in session.warnings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from mailferry import refusals
from mailferry.policy import restrictions
from mailferry.policy.access import LookupFailed, Match
from mailferry.policy.dns import PolicyDns
from mailferry.policy.settings import ARGUMENT_RESTRICTIONS, TABLE_RESTRICTIONS, PolicySettings
from mailferry.policy.state import (
    DATA, NOT_SOFTENED, POLICY, SOFTWARE, CheckState, Note, Pending, PolicySession,
)
from mailferry.refusals import Refusal

DUNNO = 0
OK = 1
REJECT = 2

_RECURSION_LIMIT = 100


class UnlistedCheck(Protocol):
    """reject_unlisted_recipient's table checks (smtpd/recipient_maps.py): None when `address` may pass."""

    async def check(self, address: str) -> Refusal | None: ...


class Abort(Exception):
    """Postfix's longjmp out of the lists: the rejection is already in the CheckState."""


class Engine:
    def __init__(self, settings: PolicySettings, dns: PolicyDns, unlisted: UnlistedCheck | None = None):
        self.settings = settings
        self.dns = dns
        self.unlisted = unlisted

    # --- The stages

    async def check_client(self, session: PolicySession) -> Refusal | None:
        evaluation = self._start(session, Pending())
        status = await evaluation.run(self.settings.lists["smtpd_client_restrictions"],
                                      session.facts.client, refusals.CLIENT, "check_client_access")
        session.defer_if_permit_client = evaluation.state.defer_if_permit.active
        session.defer_if_permit = evaluation.state.defer_if_permit
        return evaluation.refusal(status)

    async def check_helo(self, session: PolicySession) -> Refusal | None:
        helo = session.facts.helo_name
        if helo is None:
            return None
        pending = session.defer_if_permit
        pending.active = session.defer_if_permit_client
        evaluation = self._start(session, pending)
        status = await evaluation.run(self.settings.lists["smtpd_helo_restrictions"], helo, refusals.HELO,
                                      "check_helo_access")
        session.defer_if_permit_helo = evaluation.state.defer_if_permit.active
        return evaluation.refusal(status)

    async def check_sender(self, session: PolicySession) -> Refusal | None:
        sender = session.facts.sender
        if sender is None:
            return None
        pending = session.defer_if_permit
        pending.active = session.defer_if_permit_client or session.defer_if_permit_helo
        session.sender_unlisted_checked = False
        evaluation = self._start(session, pending)
        status = await evaluation.run(self.settings.lists["smtpd_sender_restrictions"], sender, refusals.SENDER,
                                      "check_sender_access")
        session.defer_if_permit_sender = evaluation.state.defer_if_permit.active
        if (self.settings.reject_unlisted_sender and status != REJECT and not session.sender_unlisted_checked
                and not session.actions.discard and sender):
            status = await evaluation.guarded(lambda: restrictions.unlisted_address(evaluation, sender,
                                                                                   refusals.SENDER))
        return evaluation.refusal(status)

    async def check_recipient(self, session: PolicySession) -> Refusal | None:
        facts = session.facts
        recipient = facts.recipient or ""
        if recipient.lower() == "postmaster":
            return None
        session.recipient_unlisted_checked = False
        if self.settings.delay_reject:
            for stage in (self.check_client, self.check_helo, self.check_sender):
                refusal = await stage(session)
                if refusal is not None:
                    return refusal
        pending = session.defer_if_permit
        pending.active = session.defer_if_permit_sender
        evaluation = self._start(session, pending)
        lists = [self.settings.lists["smtpd_relay_restrictions"], self.settings.lists["smtpd_recipient_restrictions"]]
        if not self.settings.relay_before_recipient:
            lists.reverse()
        status = DUNNO
        for restriction_list in lists:
            status = await evaluation.run(restriction_list, recipient, refusals.RECIPIENT, "check_recipient_access")
            if status == REJECT:
                break
        status = evaluation.finish_pending(status)
        if (self.settings.reject_unlisted_recipient and status != REJECT and not session.recipient_unlisted_checked
                and not session.actions.discard):
            status = await evaluation.guarded(lambda: restrictions.unlisted_address(evaluation, recipient,
                                                                                   refusals.RECIPIENT))
        return evaluation.refusal(status)

    async def check_data(self, session: PolicySession) -> Refusal | None:
        return await self._message_stage(session, "smtpd_data_restrictions", "DATA", refusals.DATA_COMMAND)

    async def check_end_of_data(self, session: PolicySession, header_from: list[str] | None = None) -> Refusal | None:
        refusal = await self._message_stage(session, "smtpd_end_of_data_restrictions", "END-OF-MESSAGE",
                                            refusals.END_OF_DATA)
        if refusal is None and self.settings.login_header_check and header_from is not None:
            evaluation = self._start(session, Pending())
            status = await evaluation.guarded(lambda: restrictions.header_from_logins(evaluation, header_from))
            refusal = evaluation.refusal(status)
        return refusal

    @property
    def needs_data_stage(self) -> bool:
        return bool(self.settings.lists["smtpd_data_restrictions"])

    @property
    def needs_end_of_data_stage(self) -> bool:
        return bool(self.settings.lists["smtpd_end_of_data_restrictions"]) or self.settings.login_header_check

    async def _message_stage(self, session: PolicySession, parameter: str, name: str, reply_class: str
                             ) -> Refusal | None:
        restriction_list = self.settings.lists[parameter]
        if not restriction_list:
            return None
        facts = session.facts
        saved_recipient = facts.recipient
        if facts.recipient_count > 1:
            facts.recipient = None
        try:
            evaluation = self._start(session, Pending())
            status = await evaluation.run(restriction_list, name, reply_class, None)
            return evaluation.refusal(evaluation.finish_pending(status))
        finally:
            facts.recipient = saved_recipient

    def _start(self, session: PolicySession, pending: Pending) -> Evaluation:
        return Evaluation(self, session, CheckState(defer_if_permit=pending))


class Evaluation:
    """One run of a stage's lists: Postfix's SMTPD_STATE for the duration of one smtpd_check_* call."""

    def __init__(self, engine: Engine, session: PolicySession, state: CheckState):
        self.engine = engine
        self.settings = engine.settings
        self.codes = engine.settings.codes
        self.dns = engine.dns
        self.session = session
        self.facts = session.facts
        self.state = state

    # --- Running lists

    async def run(self, restriction_list: list[str], reply_name: str, reply_class: str,
                  default_access: str | None) -> int:
        """One list, with the jump target Postfix's setjmp gives it."""
        if not restriction_list:
            return DUNNO
        return await self.guarded(lambda: self.generic(restriction_list, reply_name, reply_class, default_access))

    async def guarded(self, work: Callable[[], Awaitable[int]]) -> int:
        try:
            return await work()
        except Abort:
            return REJECT

    async def generic(self, restriction_list: list[str], reply_name: str, reply_class: str,
                      default_access: str | None) -> int:
        state = self.state
        saved_recursion = state.recursion
        state.recursion += 1
        status = DUNNO
        index = 0
        try:
            while index < len(restriction_list):
                if self.session.actions.discard:
                    break
                name = restriction_list[index]
                lowered = name.lower()
                if lowered == "warn_if_reject":
                    if not state.warn_if_reject:
                        state.warn_if_reject = state.recursion
                    index += 1
                    continue
                argument = restriction_list[index + 1] if index + 1 < len(restriction_list) else None
                if ":" in name and not name.startswith("{"):
                    if default_access is None:
                        self.warn(f"specify one of (check_client_access, check_reverse_client_access, "
                                  f"check_helo_access, check_sender_access, check_recipient_access, "
                                  f"check_etrn_access) before {reply_class} restriction \"{name}\"")
                        self.server_error()
                    lowered, argument, consumed = default_access, name, 1
                elif lowered in TABLE_RESTRICTIONS or lowered in ARGUMENT_RESTRICTIONS:
                    consumed = 2
                else:
                    consumed = 1
                status = await self._one(lowered, argument, restriction_list[index + consumed:],
                                         reply_name, reply_class, default_access)
                index += consumed
                if state.warn_if_reject >= state.recursion:
                    state.warn_if_reject = 0
                if status != DUNNO:
                    break
                if state.defer_if_permit.active and state.defer_if_reject.active:
                    break
        finally:
            state.recursion = saved_recursion
            if state.warn_if_reject >= state.recursion:
                state.warn_if_reject = 0
        return status

    async def _one(self, name: str, argument: str | None, rest: list[str], reply_name: str, reply_class: str,
                   default_access: str | None) -> int:
        handler = restrictions.HANDLERS.get(name)
        if handler is not None:
            if (name in TABLE_RESTRICTIONS or name in ARGUMENT_RESTRICTIONS) and not argument:
                self.warn(f"restriction {name} requires an argument")
                self.server_error()
            return await handler(self, restrictions.Call(name, argument, rest, reply_name, reply_class,
                                                         default_access))
        if name in self.settings.classes:
            return await self.generic(self.settings.classes[name], reply_name, reply_class, default_access)
        self.warn(f"unknown smtpd restriction: \"{name}\"")
        self.server_error()
        return DUNNO

    # --- Outcomes

    def reject(self, error_class: str, code: int, dsn: str, text: str) -> int:
        """Postfix's smtpd_check_reject: REJECT, or DUNNO when only warning."""
        state = self.state
        warn_only = bool(state.warn_if_reject) and error_class not in NOT_SOFTENED
        refusal = refusals.policy_refusal(code, dsn, text, soft_bounce=self.settings.soft_bounce)
        if refusal.warning:
            self.warn(refusal.warning)
        if not warn_only and state.defer_if_reject.active and refusal.reply.code >= 500:
            pending = state.defer_if_reject
            state.warn_if_reject = 0
            state.defer_if_reject = Pending()
            return self.reject(pending.error_class, pending.code, pending.dsn, pending.text)
        self.note("reject_warning" if warn_only else "reject", str(refusal.reply))
        if warn_only:
            return DUNNO
        state.reply = refusal.reply
        state.reply_action = refusal.action
        return REJECT

    def defer_if_permit(self, defers: bool, error_class: str, code: int, dsn: str, text: str) -> int:
        """DEFER_IF_PERMIT2: remember it (DUNNO), or, when warning or the tempfail
        action is not defer_if_permit, refuse now."""
        if not self.state.warn_if_reject and defers:
            self.state.defer_if_permit.keep_first(error_class, code, dsn, text)
            return DUNNO
        return self.reject(error_class, code, dsn, text)

    def defer_if_reject(self, error_class: str, code: int, dsn: str, text: str) -> int:
        self.state.defer_if_reject.keep_first(error_class, code, dsn, text)
        return DUNNO

    def finish_pending(self, status: int) -> int:
        """A defer_if_permit still pending when the lists did not reject: it wins."""
        pending = self.state.defer_if_permit
        if status != REJECT and pending.active:
            return self.reject(pending.error_class, pending.code, pending.dsn, pending.text)
        return status

    def permit(self) -> int:
        return OK

    def refusal(self, status: int) -> Refusal | None:
        if status != REJECT or self.state.reply is None:
            return None
        return Refusal(self.state.reply, self.state.reply_action, "restriction")

    def dict_retry(self, reply_name: str) -> None:
        self.reject(DATA, 451, "4.3.0", f"<{reply_name}>: Temporary lookup failure")
        raise Abort()

    def server_error(self) -> None:
        self.reject(SOFTWARE, 451, "4.3.5", "Server configuration error")
        raise Abort()

    def note(self, whatsup: str, text: str) -> None:
        self.session.notes.append(Note(whatsup, text))

    def warn(self, text: str) -> None:
        self.session.warnings.append(text)

    # --- Access table results (check_table_result)

    async def table_result(self, table: str, value: str, datum: str, reply_name: str, reply_class: str,
                           default_access: str | None) -> int:
        command, _, text = value.strip().partition(" ")
        if "\t" in command:
            command, _, more = command.partition("\t")
            text = f"{more} {text}".strip()
        text = text.strip()
        upper = command.upper()
        action = _TABLE_ACTIONS.get(upper)
        if action is not None:
            return await action(self, table, text, datum, reply_name, reply_class)
        if command.isdigit() and not text:
            return self.permit()
        if len(command) == 3 and command.isdigit() and command[0] in "45" and text:
            dsn, detail = refusals.split_dsn(text, f"{command[0]}.7.1")
            return self.reject(POLICY, int(command), refusals.dsn_fix(dsn, reply_class),
                               refusals.rejected_text(reply_name, reply_class, detail or refusals.ACCESS_DENIED))
        if command.isdigit():
            return self.permit()
        if ":" in value:
            self.warn(f"access table {table} has entry with lookup table: {value}")
            self.warn("do not specify lookup tables inside SMTPD access maps")
            self.warn("define a restriction class and specify its name instead.")
            self.server_error()
        if self.state.recursion > _RECURSION_LIMIT:
            self.warn(f"access table {table} entry {value} causes unreasonable recursion")
            self.server_error()
        restriction_list = restrictions.split(value)
        if not restriction_list:
            self.warn(f"access table {table} entry {value} has empty value")
            return OK
        return await self.generic(restriction_list, reply_name, reply_class, default_access)

    async def lookup(self, table: str, find: Callable[[], Awaitable[Match | None]], reply_name: str
                     ) -> Match | None:
        try:
            return await find()
        except LookupFailed:
            self.dict_retry(reply_name)
        return None

    def maps(self, table: str):
        maps = self.settings.tables.get(table)
        if maps is None:
            self.warn(f"unexpected dictionary: {table}")
            self.server_error()
        return maps


# --- The access(5) actions other than reject-like replies and restriction lists

async def _dunno(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    return DUNNO


async def _ok(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    return ev.permit()


async def _reject(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    dsn, detail = refusals.split_dsn(text, "5.7.1")
    return ev.reject(POLICY, ev.codes.access_map_reject, refusals.dsn_fix(dsn, reply_class),
                     refusals.rejected_text(reply_name, reply_class, detail or refusals.ACCESS_DENIED))


async def _defer(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    dsn, detail = refusals.split_dsn(text, "4.7.1")
    return ev.reject(POLICY, ev.codes.access_map_defer, refusals.dsn_fix(dsn, reply_class),
                     refusals.rejected_text(reply_name, reply_class, detail or refusals.ACCESS_DENIED))


async def _defer_if_permit(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    dsn, detail = refusals.split_dsn(text, "4.7.1")
    return ev.defer_if_permit(True, POLICY, ev.codes.access_map_defer, refusals.dsn_fix(dsn, reply_class),
                              refusals.rejected_text(reply_name, reply_class,
                                                     detail or refusals.SERVICE_UNAVAILABLE))


async def _defer_if_reject(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    dsn, detail = refusals.split_dsn(text, "4.7.1")
    return ev.defer_if_reject(POLICY, ev.codes.access_map_defer, refusals.dsn_fix(dsn, reply_class),
                              refusals.rejected_text(reply_name, reply_class,
                                                     detail or refusals.SERVICE_UNAVAILABLE))


async def _info(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    ev.note("info", text)
    return DUNNO


async def _warn(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    ev.note("warn", text)
    return DUNNO


def _in_transaction(ev: Evaluation, table: str, action: str) -> bool:
    """Postfix's not_in_client_helo: message actions need a transaction (MAIL FROM)."""
    if ev.facts.sender is None:
        ev.warn(f"access table {table}: with smtpd_delay_reject=no, action {action} is always skipped in "
                f"{refusals.CLIENT} or {refusals.HELO} restrictions")
        return False
    return True


async def _hold(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "HOLD") or ev.session.actions.hold:
        return DUNNO
    reason = f"<{reply_name}>: {reply_class} {text or 'triggers HOLD action'}"
    ev.note("hold", reason)
    ev.session.actions.hold = reason
    return DUNNO


async def _discard(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "DISCARD"):
        return DUNNO
    ev.note("discard", f"<{reply_name}>: {reply_class} {text or 'triggers DISCARD action'}")
    ev.session.actions.discard = True
    return ev.permit()


async def _redirect(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "REDIRECT"):
        return DUNNO
    if "@" not in text:
        ev.warn(f"access table {table} entry \"{datum}\" requires user@domain target")
        return DUNNO
    ev.note("redirect", f"<{reply_name}>: {reply_class} triggers REDIRECT {text}")
    ev.session.actions.redirect = text
    return DUNNO


async def _bcc(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "BCC"):
        return DUNNO
    if "@" not in text:
        ev.warn(f"access table {table} entry \"{datum}\" requires user@domain target")
        return DUNNO
    ev.note("bcc", f"<{reply_name}>: {reply_class} triggers BCC {text}")
    ev.session.actions.bcc.append(text)
    return DUNNO


async def _filter(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "FILTER"):
        return DUNNO
    if not text:
        ev.warn(f"access table {table} entry \"{datum}\" has FILTER entry without value")
        return DUNNO
    if ":" not in text:
        ev.warn(f"access table {table} entry \"{datum}\" requires transport:destination")
        return DUNNO
    ev.note("filter", f"<{reply_name}>: {reply_class} triggers FILTER {text}")
    ev.session.actions.filter = text
    return DUNNO


async def _prepend(ev: Evaluation, table, text, datum, reply_name, reply_class) -> int:
    if not _in_transaction(ev, table, "PREPEND"):
        return DUNNO
    if ev.facts.stage == "END-OF-MESSAGE":
        ev.warn(f"access table {table}: action PREPEND must be used before smtpd_end_of_data_restrictions")
        return DUNNO
    name, colon, _ = text.partition(":")
    if not colon or not name or any(char.isspace() or not char.isprintable() for char in name):
        ev.warn(f"access table {table} entry \"{datum}\" requires header: text")
        return DUNNO
    ev.session.actions.prepend.append(text)
    return DUNNO


_TABLE_ACTIONS = {
    "DUNNO": _dunno, "OK": _ok, "RELAY": _ok, "REJECT": _reject, "DEFER": _defer,
    "DEFER_IF_PERMIT": _defer_if_permit, "DEFER_IF_REJECT": _defer_if_reject, "INFO": _info, "WARN": _warn,
    "HOLD": _hold, "DISCARD": _discard, "REDIRECT": _redirect, "BCC": _bcc, "FILTER": _filter,
    "PREPEND": _prepend,
}
