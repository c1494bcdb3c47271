"""Postfix's "logical line" reading, shared by main.cf and table sources.

A logical line starts with non-whitespace text; a physical line that starts
with whitespace continues it. Blank lines and lines whose first non-space
character is `#` are skipped and do not end a logical line. Continuation
text is appended as written (leading whitespace kept), which is how Postfix
joins it, e.g. `x` + `   y` gives `x   y`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def logical_lines(physical: Iterable[str], orphan_continuation=None) -> Iterator[LogicalLine]:
    """Yield logical lines, right-stripped.

    A continuation line with nothing to continue is skipped, as Postfix skips
    it; `orphan_continuation(line_no)` hears about it.
    """
    current: LogicalLine | None = None
    for number, raw in enumerate(physical, 1):
        text = raw.rstrip("\r\n")
        stripped = text.lstrip(_BLANKS)
        if not stripped or stripped[0] == "#":
            continue
        if text[0] in " \t":
            if current is not None:
                current.starts.append((number, len(current.text)))
                current.text += text
                continue
            if orphan_continuation is not None:
                orphan_continuation(number)
            continue
        if current is not None:
            current.text = current.text.rstrip(_BLANKS)
            yield current
        current = LogicalLine(text, number, [(number, 0)])
    if current is not None:
        current.text = current.text.rstrip(_BLANKS)
        yield current
