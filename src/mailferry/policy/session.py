"""One SMTP session as the restriction engine sees it: when smtpd asks what.

This is smtpd.c's side of smtpd_check, kept out of smtpd so the golden tests
(tests/unit/policy/golden) drive exactly what the daemon drives:

- connect: client restrictions, only with smtpd_delay_reject = no;
- HELO/EHLO: helo restrictions, only with smtpd_delay_reject = no; the name is
  kept only when accepted;
- MAIL: sender restrictions, only with smtpd_delay_reject = no; a refused
  MAIL leaves no sender and no message actions behind (mail_reset);
- RCPT: everything (engine.check_recipient);
- DATA, end of data: their lists.

The caller logs session.notes (Postfix's reject/warn/hold... lines) and
session.warnings after each step, and hands session.actions to cleanup.
"""

from __future__ import annotations

import itertools
import os

from mailferry.policy.engine import Engine
from mailferry.policy.facts import SessionFacts
from mailferry.policy.state import PolicySession
from mailferry.protocol.header_addresses import address_spans
from mailferry.refusals import Refusal

_instances = itertools.count(1)


class SessionPolicy:
    def __init__(self, engine: Engine, facts: SessionFacts):
        self.engine = engine
        self.session = PolicySession(facts)
        self.facts = facts

    # --- Whether a step needs an (asynchronous) evaluation; when not, the
    # --- record_* method does all there is to do.

    @property
    def checks_connect(self) -> bool:
        return not self._delay_reject and bool(self._lists["smtpd_client_restrictions"])

    @property
    def checks_helo(self) -> bool:
        return not self._delay_reject and bool(self._lists["smtpd_helo_restrictions"])

    @property
    def checks_mail(self) -> bool:
        return not self._delay_reject and (bool(self._lists["smtpd_sender_restrictions"])
                                           or self.engine.settings.reject_unlisted_sender)

    @property
    def checks_data(self) -> bool:
        return self.engine.needs_data_stage

    @property
    def checks_end_of_data(self) -> bool:
        return self.engine.needs_end_of_data_stage

    @property
    def _delay_reject(self) -> bool:
        return self.engine.settings.delay_reject

    @property
    def _lists(self) -> dict[str, list[str]]:
        return self.engine.settings.lists

    # --- The steps

    async def connect(self) -> Refusal | None:
        self.facts.stage = "CONNECT"
        if not self.checks_connect:
            return None
        return await self.engine.check_client(self.session)

    def record_helo(self, name: str, extended: bool) -> None:
        facts = self.facts
        facts.stage = "EHLO" if extended else "HELO"
        facts.protocol = "ESMTP" if extended else "SMTP"
        facts.helo_name = name

    async def helo(self, name: str, extended: bool) -> Refusal | None:
        facts = self.facts
        saved = facts.helo_name
        self.record_helo(name, extended)
        if not self.checks_helo:
            return None
        refusal = await self.engine.check_helo(self.session)
        if refusal is not None:
            facts.helo_name = saved
        return refusal

    def record_mail(self, sender: str, size: int = 0) -> None:
        facts = self.facts
        self.session.reset_transaction()
        facts.start_transaction(sender, f"{os.getpid():x}.{next(_instances):x}")
        facts.size = size
        facts.stage = "MAIL"

    async def mail(self, sender: str, size: int = 0) -> Refusal | None:
        self.record_mail(sender, size)
        if not self.checks_mail:
            return None
        refusal = await self.engine.check_sender(self.session)
        if refusal is not None:
            self.end_transaction()
        return refusal

    async def rcpt(self, recipient: str, routed: bool = False) -> Refusal | None:
        facts = self.facts
        facts.stage = "RCPT"
        facts.recipient = recipient
        facts.recipient_routed = routed
        return await self.engine.check_recipient(self.session)

    def recipient_accepted(self, recipient: str) -> None:
        self.facts.recipient_count += 1
        self.facts.recipient = recipient
        self.facts.recipient_routed = False

    async def data(self) -> Refusal | None:
        self.facts.stage = "DATA"
        return await self.engine.check_data(self.session)

    async def end_of_data(self, content: bytes) -> Refusal | None:
        facts = self.facts
        facts.stage = "END-OF-MESSAGE"
        facts.size = len(content)
        if not self.checks_end_of_data:
            return None
        return await self.engine.check_end_of_data(self.session, header_from_addresses(content))

    def end_transaction(self) -> None:
        self.facts.end_transaction()
        self.session.reset_transaction()


def header_from_addresses(content: bytes) -> list[str]:
    """The addresses of the header From: (every From: field, as a spoofer may add two)."""
    addresses: list[str] = []
    for name, value in _header_fields(content):
        if name == "from":
            addresses += [value[start:end].strip() for start, end in address_spans(value)]
    return [address for address in addresses if address]


def _header_fields(content: bytes) -> list[tuple[str, str]]:
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name:
            break
        fields.append((name.strip().lower(), value.strip()))
    return fields
