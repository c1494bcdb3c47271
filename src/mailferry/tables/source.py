"""The text format that postmap reads and texthash serves.

One entry per logical line: `key whitespace value`. A key that starts with
a double quote runs to the closing quote and keeps its quotes, which is how
Postfix 3.x stores quoted local parts such as `"john smith"@example.com`.
Keys are folded to lower case unless the caller says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailferry.config.lines import logical_lines
from mailferry.tables.base import TableError


# Postfix splits on ASCII blanks only: a no-break space is part of a key.
_BLANKS = " \t\r\n\f\v"


@dataclass(frozen=True, slots=True)
class SourceEntry:
    key: str
    value: str
    line: int


def read_source(path: str, fold: bool = True,
                warn: Callable[[int, str], None] | None = None) -> Iterator[SourceEntry]:
    """Yield the entries of a table source file in file order.

    `warn(line, message)` hears about malformed lines, which are skipped, as
    Postfix skips them.
    """
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise TableError("no such file; create it, or fix the table name", path) from None
    except OSError as exc:
        raise TableError(f"cannot open: {exc.strerror}", path) from None
    with handle:
        for logical in logical_lines(handle):
            entry = _parse_entry(logical.text, logical.line, fold)
            if entry is None:
                if warn is not None:
                    warn(logical.line, "expected format: key whitespace value")
                continue
            yield entry


def _parse_entry(text: str, line: int, fold: bool) -> SourceEntry | None:
    key_end = _key_end(text)
    if key_end < 0:
        return None
    key = text[:key_end]
    value = text[key_end:].strip(_BLANKS)
    if not value:
        return None
    return SourceEntry(key.lower() if fold else key, value, line)


def _key_end(text: str) -> int:
    """Where the key ends: at the first blank, quoted stretches included; -1 if unbalanced."""
    index = 0
    while index < len(text) and text[index] not in _BLANKS:
        if text[index] == '"':
            index = _closing_quote(text, index)
            if index < 0:
                return -1
        index += 1
    return index


def _closing_quote(text: str, opening: int) -> int:
    index = opening + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return -1
