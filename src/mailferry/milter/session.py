"""The milters of one SMTP session, or of one message that did not come over SMTP.

Each event goes to the milters in order, and the first that answers with a verdict ends the
event for the others (Postfix's milter.c). The content phase (`message`) sends each milter the
message as the milters before it left it, and applies each milter's modifications before the
next one sees the message.

`macro_value(name)` answers the value of a macro at the time of the event (None: not sent);
the SMTP server supplies its own (smtpd/milters.py), `non_smtp_macros` the ones Postfix's
cleanup gives mail from sendmail/pickup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from mailferry.milter import protocol as p
from mailferry.milter.client import HOLD, MilterConnection, Verdict
from mailferry.milter.edits import EditableMessage
from mailferry.milter.settings import MilterSettings

MacroSource = Callable[[str], "str | None"]


@dataclass(slots=True)
class ContentOutcome:
    """After the content phase: the verdict (None: accepted), and the message as edited."""

    verdict: Verdict | None
    message: EditableMessage
    hold_reason: str = ""     # a quarantine that came with an otherwise accepting verdict


class MilterSession:
    def __init__(self, settings: MilterSettings, warn: Callable[[str], None], macro_value: MacroSource):
        self.settings = settings
        self.warn = warn
        self.macro_value = macro_value
        self.milters = [MilterConnection(spec, self._warn) for spec in settings.milters]
        self.in_transaction = False

    def _warn(self, text: str) -> None:
        self.warn(text)

    def _macros(self, milter: MilterConnection, command: bytes) -> list[tuple[str, str]]:
        names = milter.macro_lists.get(command) or self.settings.macros.get(command, ())
        pairs = []
        for name in names:
            value = self._value(name)
            if value is not None:
                pairs.append((name, value))
        return pairs

    def _value(self, name: str) -> str | None:
        if name in ("{daemon_name}",):
            value: str | None = self.settings.daemon_name
        elif name == "v":
            value = self.settings.v
        else:
            value = self.macro_value(name)
        if value is None:
            value = self.settings.macro_defaults.get(name)
        return value

    async def _each(self, command: bytes, packet: bytes, timeout: float | None = None) -> Verdict | None:
        for milter in self.milters:
            verdict = await milter.event(command, packet, self._macros(milter, command), timeout)
            if verdict is not None:
                return verdict
        return None

    # --- the SMTP events
    async def connect(self, hostname: str, address: str, port: int) -> Verdict | None:
        await asyncio.gather(*(milter.open() for milter in self.milters))
        family = p.FAMILY_INET6 if ":" in address else p.FAMILY_INET
        if address.startswith("/"):
            family = p.FAMILY_UNIX
        elif not address or address == "unknown":
            family = p.FAMILY_UNKNOWN
        return await self._each(p.SMFIC_CONNECT, p.encode_connect(hostname, address, port, family))

    async def helo(self, name: str) -> Verdict | None:
        return await self._each(p.SMFIC_HELO, p.encode_helo(name))

    async def mail(self, args: list[str]) -> Verdict | None:
        if self.in_transaction:
            await self.abort()
        for milter in self.milters:
            milter.new_message()
        self.in_transaction = True
        return await self._each(p.SMFIC_MAIL, p.encode_mail(args))

    async def rcpt(self, args: list[str]) -> Verdict | None:
        return await self._each(p.SMFIC_RCPT, p.encode_rcpt(args))

    async def data(self) -> Verdict | None:
        return await self._each(p.SMFIC_DATA, p.encode_simple(p.SMFIC_DATA))

    async def unknown(self, command_line: str) -> Verdict | None:
        return await self._each(p.SMFIC_UNKNOWN, p.encode_unknown(command_line))

    async def abort(self) -> None:
        """The transaction ended without a message (RSET, a refusal, a lost client)."""
        self.in_transaction = False
        for milter in self.milters:
            await milter.send_only(p.SMFIC_ABORT, p.encode_simple(p.SMFIC_ABORT), milter.spec.command_timeout)
            milter.new_message()

    async def close(self) -> None:
        self.in_transaction = False
        await asyncio.gather(*(milter.close() for milter in self.milters), return_exceptions=True)

    # --- the content phase, at end of data
    async def message(self, message: EditableMessage) -> ContentOutcome:
        """Headers, end of headers, body, end of message to each milter in turn; modifications
        are applied to `message` as they come."""
        self.in_transaction = False
        hold_reason = ""
        try:
            for milter in self.milters:
                verdict = await self._message_to(milter, message)
                if verdict is not None and verdict.kind == HOLD:
                    hold_reason = hold_reason or verdict.reason
                    break
                if verdict is not None:
                    return ContentOutcome(verdict, message, hold_reason)
        finally:
            for milter in self.milters:
                milter.new_message()
        return ContentOutcome(None, message, hold_reason)

    async def _message_to(self, milter: MilterConnection, message: EditableMessage) -> Verdict | None:
        timeout = milter.spec.content_timeout
        leading_space = milter.header_leading_space
        eoh_macros = self._macros(milter, p.SMFIC_EOH)
        header_macros = p.encode_macros(p.SMFIC_HEADER, eoh_macros) if eoh_macros else None  # once, not per header
        for header in message.visible_headers():
            name, value = header.name_and_value(leading_space)
            verdict = await milter.event(p.SMFIC_HEADER, p.encode_header(name, value), header_macros, timeout)
            if verdict is not None or milter.skip_event == p.SMFIC_HEADER:
                if verdict is not None:
                    return verdict
                break
        verdict = await milter.event(p.SMFIC_EOH, p.encode_simple(p.SMFIC_EOH), eoh_macros, timeout)
        if verdict is not None:
            return verdict
        eod_macros = self._macros(milter, p.SMFIC_BODYEOB)
        for chunk in p.encode_body_chunks(message.body):
            verdict = await milter.event(p.SMFIC_BODY, chunk, eod_macros, timeout)
            if verdict is not None:
                return verdict
            if milter.skip_event == p.SMFIC_BODY:
                break
        verdict = await milter.event(p.SMFIC_BODYEOB, p.encode_simple(p.SMFIC_BODYEOB), eod_macros, timeout,
                                     on_edit=lambda reply: message.apply(reply, leading_space))
        message.finish_body()
        return verdict


def non_smtp_macros(queue_id: str, sender: str, recipient: Callable[[], str], myhostname: str) -> MacroSource:
    """The macros Postfix's cleanup gives mail that came from sendmail or pickup: the client is
    localhost [127.0.0.1], as in Postfix."""
    def value(name: str) -> str | None:
        if name == "j":
            return myhostname
        if name == "i":
            return queue_id
        if name == "{client_addr}":
            return "127.0.0.1"
        if name in ("{client_name}", "{client_ptr}"):
            return "localhost"
        if name == "_":
            return "localhost [127.0.0.1]"
        if name == "{mail_addr}":
            return sender
        if name == "{rcpt_addr}":
            return recipient()
        return None
    return value


async def run_non_smtp_envelope(session: MilterSession, sender: str, recipients: list[str]) -> Verdict | None:
    """The events before the content for mail that did not come over SMTP (Postfix's cleanup does
    the same for non_smtpd_milters): connect from localhost [127.0.0.1], HELO localhost, MAIL,
    each RCPT, DATA. The first verdict ends it: a REJECT or TEMPFAIL refuses the mail, a DISCARD
    drops it, a HOLD holds it (the caller logs and acts, as cleanup/milters.py does at end of data)."""
    steps = [lambda: session.connect("localhost", "127.0.0.1", 0), lambda: session.helo("localhost"),
             lambda: session.mail([f"<{sender}>"])]
    steps += [lambda address=address: session.rcpt([f"<{address}>"]) for address in recipients]
    steps.append(session.data)
    for step in steps:
        verdict = await step()
        if verdict is not None:
            return verdict
    return None
