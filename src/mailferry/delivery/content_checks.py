"""smtp_header_checks, smtp_mime_header_checks, smtp_nested_header_checks and smtp_body_checks
(lmtp_* for LMTP): header and body checks on the content the SMTP/LMTP client sends.

As Postfix's smtp(8) (smtp_proto.c, header_body_checks.c) they act on each delivery
attempt, only with the actions that change neither when nor where mail goes: WARN, INFO,
REPLACE, PREPEND, STRIP, IGNORE, DUNNO and OK; any other is "unsupported", with Postfix's
warning, and the line goes out unchanged. Their log lines are `ID: replace: header
Subject: old: Subject: new` (no client details: there is none here). There is no
body_checks_size_limit on this side. A table that fails for now defers the delivery.

A client without these tables never makes this object: its content goes out as stored.
"""

from __future__ import annotations

from dataclasses import replace

from mailferry.config.config import Config
from mailferry.content import settings as content_settings
from mailferry.content.checks import CheckTables, Limits, inspect, printable_line
from mailferry.maillog import Log


class ChecksDeferred(Exception):
    """A checks table failed for now: try the delivery again later."""


class OutgoingChecks:
    def __init__(self, tables: CheckTables, limits: Limits, log: Log, transport: str):
        self.tables = tables
        self.limits = limits
        self.log = log
        self.transport = transport

    @classmethod
    def from_config(cls, config: Config, prefix: str, log: Log, transport: str) -> OutgoingChecks | None:
        """`prefix` is "smtp" or "lmtp". None when no such tables are set. Raises TableError."""
        tables = content_settings.check_tables(config, f"{prefix}_")
        if not tables.any:
            return None
        limits = replace(content_settings.limits(config, prefix), body_size_limit=0)
        return cls(tables, limits, log, transport)

    async def apply(self, queue_id: str, content: bytes) -> bytes:
        """The content to send. Raises ChecksDeferred."""
        verdict = await inspect(content, self.tables, self.limits, receiving=False)
        for warning in verdict.warnings:
            self.log.warning(self.transport, warning)
        for note in verdict.notes:
            tail = f": {note.text}" if note.text else ""
            self.log.line(self.transport, f"{queue_id}: {note.action}: {note.context} "
                                          f"{printable_line(note.line)}{tail}")
        if verdict.lookup_failed:
            self.log.warning(self.transport, f"{queue_id}: {self.transport} header checks lookup error")
            raise ChecksDeferred(f"{verdict.lookup_failed} lookup error")
        return content if verdict.content is None else verdict.content
