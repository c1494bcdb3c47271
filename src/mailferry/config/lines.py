"""Postfix's "logical line" reading, shared by main.cf, master.cf and regexp tables.

A logical line starts with non-whitespace text; a physical line that starts
with whitespace continues it. Blank lines and lines whose first non-space
character is `#` are skipped and do not end a logical line. Continuation
text is appended as written (leading whitespace kept), which is how Postfix
joins it, e.g. `x` + `   y` gives `x   y`. Only the newline ends a physical
line: a carriage return is text, as it is to Postfix, and trailing
whitespace (CR included) is trimmed from each logical line.

A logical line that itself starts with whitespace (possible only at the top
of a file) is dropped, as Postfix drops it, and reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# Postfix's notion of whitespace is ASCII's: a no-break space is text.
_BLANKS = " \t\r\n\f\v"


@dataclass(slots=True)
class LogicalLine:
    text: str
    line: int  # physical line number where the logical line starts
    # (physical line number, offset in `text` where that line's text begins)
    starts: list[tuple[int, int]]

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


def _finish(line: LogicalLine, dropped) -> Iterator[LogicalLine]:
    line.text = line.text.rstrip(_BLANKS)
    if line.text[0] in _BLANKS:
        if dropped is not None:
            dropped(line.line, line.text)
        return
    yield line
