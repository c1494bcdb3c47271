"""header_checks, mime_header_checks, nested_header_checks and body_checks, as
Postfix's cleanup(8) applies them (cleanup_message.c) and its SMTP/LMTP client
applies their smtp_/lmtp_ versions (header_body_checks.c).

`inspect` walks the message's MIME structure (content/mime.py), looks each
logical header and each body line up in the tables of its kind and carries out
the action found (header_checks(5)): REJECT [text], WARN, INFO, IGNORE, STRIP,
REPLACE text, PREPEND text, HOLD, DISCARD, REDIRECT user@domain,
FILTER transport:destination, BCC user@domain, PASS, DUNNO and OK. It decides
and records; the caller logs (`Note`s, in Postfix's words) and applies the
verdict to the message. Nothing here does I/O but the lookups.

On the delivery side (`receiving=False`) only the actions that change neither
when nor where the message goes are carried out: WARN, INFO, REPLACE, PREPEND,
STRIP, IGNORE, DUNNO, OK; any other is "unsupported", with Postfix's warning.

The content is rebuilt only when an action changes it (or header_size_limit
cut a header): a message that matches nothing comes back as the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailferry.content.mime import (MIME_HEADERS, MULTIPART, NESTED, PRIMARY, Body, Header, MimeError, MimeParser,
                                    header_name_length, lines)
from mailferry.tables.result import LookupResult

HEADER = "header"
BODY = "body"
DEFAULT_REJECT = "5.7.1 message content rejected"
_RECEIVING_ONLY = frozenset(("REJECT", "HOLD", "DISCARD", "REDIRECT", "FILTER", "BCC", "PASS"))


class Lookup(Protocol):
    """A table list (tables.Maps) as the checks search it."""

    async def lookup(self, key: str) -> LookupResult: ...


@dataclass(frozen=True, slots=True)
class CheckTables:
    """The tables of each kind, with the parameter names that configured them (for warnings).
    None: that kind is not checked."""

    header: Lookup | None = None
    mime: Lookup | None = None
    nested: Lookup | None = None
    body: Lookup | None = None
    names: tuple[str, str, str, str] = ("header_checks", "mime_header_checks", "nested_header_checks",
                                        "body_checks")

    @property
    def any(self) -> bool:
        return any(table is not None for table in (self.header, self.mime, self.nested, self.body))

    @property
    def any_header(self) -> bool:
        return any(table is not None for table in (self.header, self.mime, self.nested))


@dataclass(frozen=True, slots=True)
class Limits:
    header_size_limit: int = 102400
    body_size_limit: int = 51200          # body_checks_size_limit: bytes of each body part checked; 0: all
    line_limit: int = 2048                # line_length_limit: longer lines are checked in pieces
    disable_mime: bool = False            # disable_mime_input_processing
    strict_encoding: bool = False         # strict_mime_encoding_domain
    boundary_limit: int = 2048            # mime_boundary_length_limit
    nesting_limit: int = 100              # mime_nesting_limit


@dataclass(frozen=True, slots=True)
class Note:
    """One action to log: `ID: <action>: <context> <line> ...: <text>`."""

    action: str      # reject, warning, info, hold, discard, redirect, filter, replace, prepend, bcc, strip, pass
    context: str     # HEADER or BODY
    line: bytes      # the header or body line that matched
    text: str        # the action's text (for reject: the reply's status and text)


@dataclass(slots=True)
class Verdict:
    content: bytes | None = None    # the changed content; None: unchanged
    reject: str = ""                # "5.7.1 text": refuse (a 4.x.x status means try again later)
    hold: bool = False
    discard: bool = False
    redirect: str = ""
    filter: str = ""
    bcc: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # configuration problems (Postfix's msg_warn)
    lookup_failed: str = ""         # the parameter whose table failed for now: try again later
    mime_error: MimeError | None = None   # strict_mime_encoding_domain, mime_nesting_limit

    @property
    def refused(self) -> bool:
        return bool(self.reject or self.lookup_failed or self.mime_error)


async def inspect(content: bytes, tables: CheckTables, limits: Limits = Limits(), receiving: bool = True,
                  skip: tuple[int, int] = (0, 0)) -> Verdict:
    """Check `content`; `skip` is a byte range whose headers are not checked (those
    cleanup added itself: they are not part of the message as received)."""
    run = _Run(content, tables, limits, receiving, skip)
    parser = MimeParser(limits.header_size_limit, limits.line_limit, limits.disable_mime,
                        receiving and limits.strict_encoding, receiving and tables.any_header,
                        limits.boundary_limit, limits.nesting_limit)
    for text, start, end in lines(content):
        for event in parser.line(text, start, end):
            if await run.event(event):
                return run.verdict
    for event in parser.finish():
        if await run.event(event):
            return run.verdict
    if receiving and parser.errors and not run.verdict.reject:
        run.verdict.mime_error = parser.errors[0]
    return run.finish()


def dsn_prepend(default: str, text: str) -> str:
    """Postfix's dsn_prepend: text that starts with a status keeps it, else gets `default`."""
    first, _, rest = text.partition(" ")
    parts = first.split(".")
    if (len(parts) == 3 and len(parts[0]) == 1 and parts[0].isdigit() and all(
            part.isdigit() and 1 <= len(part) <= 3 for part in parts[1:])):
        return f"{first} {rest.lstrip()}"
    return f"{default} {text}"


def printable_line(line: bytes, limit: int = 200) -> str:
    """A header or body line as Postfix logs it: the first 200 bytes, control characters as "?"."""
    text = line[:limit].decode("utf-8", "replace")
    return "".join(char if char >= " " and char != "\x7f" else "?" for char in text)


class _Run:
    def __init__(self, content: bytes, tables: CheckTables, limits: Limits, receiving: bool,
                 skip: tuple[int, int]):
        self.content = content
        self.tables = tables
        self.limits = limits
        self.receiving = receiving
        self.skip = skip
        self.verdict = Verdict()
        self.filtering = True           # Postfix's CLEANUP_FLAG_FILTER: REDIRECT, PASS turn it off
        self.out: list[bytes] | None = None
        self.mark = 0                   # content before this is in `out` (once there is an `out`)

    # --- events

    async def event(self, event: Header | Body) -> bool:
        """Check one event; True when the inspection ends here (REJECT, DISCARD, a failed lookup)."""
        if isinstance(event, Header):
            return await self._header(event)
        return await self._body(event)

    async def _header(self, header: Header) -> bool:
        table, name = self._header_table(header)
        output: list[bytes] | None = None
        if header.truncated:
            output = [header.text.replace(b"\n", b"\r\n") + b"\r\n"]
        if table is not None and self.filtering and not self.skip[0] <= header.start < self.skip[1]:
            result = await table.lookup(header.text.decode("utf-8", "surrogateescape"))
            if result.tempfail:
                self.verdict.lookup_failed = name
                return True
            if result.found and result.value is not None:
                kept = output[0] if output else self.content[header.start:header.end]
                changed = self._act(HEADER, header.text, result.value, name, kept)
                if self.verdict.reject or self.verdict.discard:
                    return True
                if changed is not None:
                    output = changed
        if output is not None:
            self._replace(header.start, header.end, output)
        return False

    async def _body(self, body: Body) -> bool:
        table = self.tables.body
        if (table is None or not self.filtering or not body.text or body.inserted
                or (self.limits.body_size_limit and body.offset >= self.limits.body_size_limit)):
            return False
        result = await table.lookup(body.text.decode("utf-8", "surrogateescape"))
        if result.tempfail:
            self.verdict.lookup_failed = self.tables.names[3]
            return True
        if not result.found or result.value is None:
            return False
        ending = b"\r\n" if body.ends_line else b""
        changed = self._act(BODY, body.text, result.value, self.tables.names[3],
                            self.content[body.start:body.end], ending)
        if self.verdict.reject or self.verdict.discard:
            return True
        if changed is not None:
            self._replace(body.start, body.end, changed)
        return False

    def _header_table(self, header: Header) -> tuple[Lookup | None, str]:
        tables = self.tables
        if header.name in MIME_HEADERS or header.block == MULTIPART:
            return tables.mime, tables.names[1]
        if header.block == NESTED:
            return tables.nested, tables.names[2]
        assert header.block == PRIMARY
        return tables.header, tables.names[0]

    # --- actions (cleanup_act, hbc_action)

    def _act(self, context: str, line: bytes, value: str, table_name: str, kept: bytes,
             ending: bytes = b"\r\n") -> list[bytes] | None:
        """Carry out `value`'s action on `line`; the line's new output, or None when it is kept."""
        command, _, text = value.strip().partition(" ")
        if "\t" in command:
            command, _, more = command.partition("\t")
            text = f"{more} {text}" if text else more
        text = text.strip(" \t")
        action = command.upper()
        verdict = self.verdict
        note = self._note
        if not self.receiving and action in _RECEIVING_ONLY:
            verdict.warnings.append(f"unsupported command in {table_name} map: {value}")
            return None
        if action == "REJECT":
            reason = dsn_prepend("5.7.1", text) if text else DEFAULT_REJECT
            if reason[0] not in "45":
                verdict.warnings.append(f"bad DSN action in {text} -- need 4.x.x or 5.x.x")
                reason = "4" + reason[1:]
            verdict.reject = reason
            self.filtering = False
            note("reject", context, line, reason)
        elif action in ("WARN", "INFO"):
            note("warning" if action == "WARN" else "info", context, line, text)
        elif action == "FILTER":
            if not text:
                verdict.warnings.append(f"missing FILTER command argument in {table_name} map")
            elif ":" not in text:
                verdict.warnings.append(f"bad FILTER command {text} in {table_name} -- need transport:destination")
            else:
                verdict.filter = text
                note("filter", context, line, text)
        elif action in ("PASS", "DISCARD"):
            note(action.lower(), context, line, text)
            self.filtering = False
            verdict.discard = verdict.discard or action == "DISCARD"
        elif action == "HOLD":
            if not verdict.hold and not verdict.discard:
                note("hold", context, line, text)
                verdict.hold = True
        elif action in ("PREPEND", "REPLACE"):
            return self._edit(action, context, line, text, table_name, kept, ending)
        elif action in ("REDIRECT", "BCC"):
            if "@" not in text:
                what = "REDIRECT target" if action == "REDIRECT" else "BCC address"
                verdict.warnings.append(f'bad {what} "{text}" in {table_name} map -- need user@domain')
            elif action == "REDIRECT":
                verdict.redirect = text
                note("redirect", context, line, text)
                self.filtering = False
            else:
                if text not in verdict.bcc:
                    verdict.bcc.append(text)
                note("bcc", context, line, text)
        elif action == "STRIP":
            note("strip", context, line, text)
            return []
        elif action == "IGNORE":
            return []
        elif action not in ("DUNNO", "OK"):
            word = "unknown" if self.receiving else "unsupported"
            verdict.warnings.append(f"{word} command in {table_name} map: {value}")
        return None

    def _edit(self, action: str, context: str, line: bytes, text: str, table_name: str, kept: bytes,
              ending: bytes) -> list[bytes] | None:
        if not text:
            self.verdict.warnings.append(f"{action} action without text in {table_name} map")
            return None
        encoded = text.encode("utf-8", "surrogateescape")
        if context == HEADER and not header_name_length(encoded):
            self.verdict.warnings.append(f'bad {action} header text "{text}" in {table_name} map -- '
                                         f'need "headername: headervalue"')
            return None
        self._note(action.lower(), context, line, text)
        if action == "PREPEND":
            return [encoded + b"\r\n", kept]
        return [encoded + ending]

    def _note(self, action: str, context: str, line: bytes, text: str) -> None:
        self.verdict.notes.append(Note(action, context, line, text))

    # --- output

    def _replace(self, start: int, end: int, output: Sequence[bytes]) -> None:
        if self.out is None:
            self.out = []
        self.out.append(self.content[self.mark:start])
        self.out.extend(output)
        self.mark = end

    def finish(self) -> Verdict:
        if self.out is not None:
            self.out.append(self.content[self.mark:])
            self.verdict.content = b"".join(self.out)
        return self.verdict
