"""cleanup's header and body checks: the one step between clean() and the milters.

`ContentChecks.apply` inspects a message from smtpd or pickup as it was received
(the headers cleanup added itself are skipped, as Postfix's are), logs each action
in Postfix's words (`ID: reject: header Subject: ... from host[addr]; from=<s>
to=<r> proto=ESMTP helo=<h>: 5.7.1 text`) and carries the verdict onto the message:
a changed content, HOLD, DISCARD, REDIRECT, FILTER (content_filter) and BCC
recipients (NOTIFY=NEVER). A REJECT, a table that failed for now, or a MIME error
(strict_mime_encoding_domain) raises ContentRefused: nothing is queued, smtpd
answers the refusal's reply, and pickup returns the message to its sender.

With no checks configured (and no strict_mime_encoding_domain) nothing is parsed.
A service with `-o receive_override_options=no_header_body_checks` (the re-injection
service after a content filter) skips them for its messages.
"""

from __future__ import annotations

from mailferry import refusals
from mailferry.config.config import Config
from mailferry.content import settings as content_settings
from mailferry.content.checks import CheckTables, Limits, Note, Verdict, inspect, printable_line
from mailferry.maillog import Log
from mailferry.message import NewMessage, Recipient
from mailferry.refusals import Refusal

NO_HEADER_BODY_CHECKS = "no_header_body_checks"


class ContentChecks:
    def __init__(self, tables: CheckTables, limits: Limits, log: Log):
        self.tables = tables
        self.limits = limits
        self.log = log
        self.active = tables.any or limits.strict_encoding
        self._discarded: set[str] = set()   # queue IDs whose DISCARD this module logged

    @classmethod
    def from_config(cls, config: Config, log: Log) -> ContentChecks:
        """Raises TableError for a table that cannot be opened."""
        return cls(content_settings.check_tables(config), content_settings.limits(config), log)

    @classmethod
    def none(cls, log: Log) -> ContentChecks:
        return cls(CheckTables(), Limits(), log)

    def logged_discard(self, queue_id: str) -> bool:
        """Whether a DISCARD action decided (and logged) the discard of this message."""
        if queue_id in self._discarded:
            self._discarded.discard(queue_id)
            return True
        return False

    def close(self) -> None:
        content_settings.close(self.tables)

    async def apply(self, message: NewMessage) -> None:
        """Raises ContentRefused when the message is not to be queued."""
        if not self.active or NO_HEADER_BODY_CHECKS in message.receive_overrides:
            await self._truncate_long_headers(message)
            return
        verdict = await inspect(message.content, self.tables, self.limits, receiving=True,
                                skip=message.own_headers)
        self._log(message, verdict)
        refusal = _refusal(verdict)
        if refusal is not None:
            # cleanup.service defines the one refusal at end of data; it imports this module.
            from mailferry.cleanup.service import ContentRefused
            raise ContentRefused(refusal)
        _carry_out(message, verdict)
        if verdict.discard:
            self._discarded.add(message.queue_id)

    async def _truncate_long_headers(self, message: NewMessage) -> None:
        """header_size_limit holds with no checks too, as in Postfix's cleanup: a header longer
        than the limit is cut. Only a header section longer than the limit can hold such a
        header, so the usual message costs one search for its blank line and nothing else."""
        end = message.content.find(b"\r\n\r\n")
        if (end if end >= 0 else len(message.content)) <= self.limits.header_size_limit:
            return
        verdict = await inspect(message.content, CheckTables(), self.limits, receiving=True,
                                skip=message.own_headers)
        if verdict.content is not None and len(verdict.content) < len(message.content):
            message.content = verdict.content

    def _log(self, message: NewMessage, verdict: Verdict) -> None:
        queue_id = message.queue_id
        for warning in verdict.warnings:
            self.log.warning("cleanup", warning)
        for note in verdict.notes:
            self.log.line("cleanup", f"{queue_id}: {_note_text(message, note)}")
        if verdict.lookup_failed:
            self.log.warning("cleanup", f"{queue_id}: {verdict.lookup_failed} map lookup problem -- "
                                        "message not accepted, try again later")
        if verdict.mime_error is not None and not verdict.reject:
            error = verdict.mime_error
            detail = printable_line(error.detail, 100)
            first = message.recipients[0].address if message.recipients else "unknown"
            self.log.line("cleanup", f"{queue_id}: reject: mime-error {error.text}: {detail} from "
                                     f"{_origin(message)}; from=<{message.sender}> to=<{first}>")


def _refusal(verdict: Verdict) -> Refusal | None:
    if verdict.lookup_failed:
        return refusals.content_check_lookup_failure(verdict.lookup_failed)
    if verdict.reject:
        return refusals.content_rejected(verdict.reject)
    if verdict.mime_error is not None:
        return refusals.mime_structure_error(verdict.mime_error.text)
    return None


def _carry_out(message: NewMessage, verdict: Verdict) -> None:
    if verdict.content is not None:
        message.content = verdict.content
    message.hold = message.hold or verdict.hold
    message.discard = message.discard or verdict.discard
    if verdict.redirect:
        message.redirect = verdict.redirect
    if verdict.filter:
        message.content_filter = verdict.filter
    present = {recipient.address for recipient in message.recipients}
    for address in verdict.bcc:
        if address not in present:
            message.recipients.append(Recipient(address, notify="NEVER"))
            present.add(address)


def _origin(message: NewMessage) -> str:
    """Postfix's log_origin: `host[addr]` for SMTP, `local` for sendmail's mail."""
    client = message.client
    return "local" if message.origin == "local" else f"{client.name}[{client.address}]"


def _note_text(message: NewMessage, note: Note) -> str:
    """cleanup_act_log's layout."""
    text = f"{note.action}: {note.context} {printable_line(note.line)} from {_origin(message)};"
    text += f" from=<{message.sender}>"
    if message.recipients:
        text += f" to=<{message.recipients[0].address}>"
    if message.origin != "local":
        text += f" proto={message.client.protocol}"
        if message.client.helo:
            text += f" helo=<{message.client.helo}>"
    if note.text:
        text += f": {note.text}"
    return text
