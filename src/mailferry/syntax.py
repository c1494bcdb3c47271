"""Postfix's text syntax shared by configuration files and lookup tables.

Both `config/` and `tables/` read it, so it sits below both and imports
nothing else from mailferry. `postmap -q` imports it on start-up, so it
stays cheap: no dataclasses, whose import pulls in `inspect`.

Lists (`split_list`): the values of list parameters (`mydestination`,
`smtpd_recipient_restrictions`, `alias_maps`), of match lists, and the body
of `inline:{...}` tables.

Logical lines (`logical_lines`), read by main.cf, master.cf and regexp
tables: a logical line starts with non-whitespace text; a physical line
that starts with whitespace continues it. Blank lines and lines whose first
non-space character is `#` are skipped and do not end a logical line.
Continuation text is appended as written (leading whitespace kept), which
is how Postfix joins it, e.g. `x` + `   y` gives `x   y`. Only the newline
ends a physical line: a carriage return is text, as it is to Postfix, and
trailing whitespace (CR included) is trimmed from each logical line.

A logical line that itself starts with whitespace (possible only at the top
of a file) is dropped, as Postfix drops it, and reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

# Postfix's notion of whitespace is ASCII's: a no-break space is text.
_BLANKS = " \t\r\n\f\v"
_LIST_SEPARATORS = re.compile(r"[\s,]+")


class LogicalLine:
    """One logical line. Equality and repr as a dataclass would give them."""

    __slots__ = ("text", "line", "starts")
    __hash__ = None  # type: ignore[assignment]  # mutable, as a non-frozen dataclass

    def __init__(self, text: str, line: int, starts: list[tuple[int, int]]):
        self.text = text
        self.line = line  # physical line number where the logical line starts
        # (physical line number, offset in `text` where that line's text begins)
        self.starts = starts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogicalLine):
            return NotImplemented
        return (self.text, self.line, self.starts) == (other.text, other.line, other.starts)

    def __repr__(self) -> str:
        return f"LogicalLine(text={self.text!r}, line={self.line!r}, starts={self.starts!r})"

    def line_at(self, offset: int) -> int:
        """The physical line number holding character `offset` of `text`."""
        number = self.line
        for physical, start in self.starts:
            if start > offset:
                break
            number = physical
        return number


def logical_lines(physical: Iterable[str],
                  dropped: Callable[[int, str], None] | None = None) -> Iterator[LogicalLine]:
    """Yield logical lines, right-stripped; `dropped(line, text)` hears of one that starts with whitespace."""
    current: LogicalLine | None = None
    for number, raw in enumerate(physical, 1):
        text = raw.rstrip("\n")
        stripped = text.lstrip(_BLANKS)
        if not stripped or stripped[0] == "#":
            continue
        if text[0] in _BLANKS and current is not None:
            current.starts.append((number, len(current.text)))
            current.text += text
            continue
        if current is not None:
            yield from _finish(current, dropped)
        current = LogicalLine(text, number, [(number, 0)])
    if current is not None:
        yield from _finish(current, dropped)


def _finish(line: LogicalLine, dropped: Callable[[int, str], None] | None) -> Iterator[LogicalLine]:
    line.text = line.text.rstrip(_BLANKS)
    if line.text[0] in _BLANKS:
        if dropped is not None:
            dropped(line.line, line.text)
        return
    yield line


def split_list(value: str) -> list[str]:
    """Split a list value on commas and whitespace, keeping `{...}` groups whole.

    Postfix lets `inline:{ a=b, c=d }` and `{ text with spaces }` stand as one
    element; braces nest.
    """
    if "{" not in value:
        return [item for item in _LIST_SEPARATORS.split(value) if item]
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return items
