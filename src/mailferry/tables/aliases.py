"""The aliases(5) source format, as `newaliases` (Postfix's postalias) reads it.

    # a comment
    postmaster: root
    staff:      alice, bob,
                "|/usr/bin/logger -t staff", /var/log/staff.mbox
    "john smith": john
    list:       :include:/etc/mail/list.members

One entry per logical line: `name: value`, where a line that starts with
whitespace continues the line before it. The name may be quoted; it is
stored unquoted and folded to lower case, as local(8) looks it up. The
value is kept as written (continuation lines joined with their blanks):
local(8) splits it into destinations when it delivers (`split_destinations`).

texthash: tables in `alias_maps` are read in this format too, so an alias
file can be used without `newaliases` (AliasTextTable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mailferry.tables.base import TableError
from mailferry.tables.memory import TexthashTable

Warn = Callable[[int, str], None]
_BLANKS = " \t\r\n\f\v"


def read_alias_entries(path: str, fold: bool = True,
                       warn: Warn | None = None) -> Iterator[tuple[bytes, bytes, int]]:
    """(name, value, line number) of each alias, as UTF-8 bytes: the shape tables/build.py builds from."""
    for name, value, number in read_aliases(path, fold, warn):
        yield (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"), number)


def read_aliases(path: str, fold: bool = True, warn: Warn | None = None) -> Iterator[tuple[str, str, int]]:
    """(name, value, line number) of each alias in file order; bad lines are skipped, told to `warn`."""
    for text, number in _logical_lines(_read(path), warn):
        entry = parse_alias_line(text)
        if isinstance(entry, str):
            if warn is not None:
                warn(number, entry)
            continue
        name, value = entry
        yield (name.lower() if fold else name), value, number


def parse_alias_line(text: str) -> tuple[str, str] | str:
    """`name: value` → (unquoted name, value); a malformed line → the reason, as text."""
    name, rest = _split_name(text)
    if name is None:
        return rest
    rest = rest.lstrip(_BLANKS)
    if not rest.startswith(":"):
        return f"need name:value pair, found {text.strip()!r}: put a colon after the alias name"
    value = rest[1:].strip(_BLANKS)
    if not name:
        return "empty alias name"
    if not value:
        return f"alias {name!r} has no value: give at least one destination after the colon"
    return name, value


def _split_name(text: str) -> tuple[str | None, str]:
    if text.startswith('"'):
        end = _closing_quote(text, 0)
        if end < 0:
            return None, f"unbalanced quote in alias name: {text.strip()!r}"
        return _unquote(text[1:end]), text[end + 1:]
    colon = text.find(":")
    if colon < 0:
        return None, f"need name:value pair, found {text.strip()!r}: put a colon after the alias name"
    return text[:colon].strip(_BLANKS), text[colon:]


def split_destinations(value: str) -> list[str]:
    """An alias value's destinations: split at commas outside double quotes, each stripped and
    unquoted when it is quoted whole (`"|cmd, with comma"` → `|cmd, with comma`)."""
    items, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    destinations = []
    for item in items:
        item = " ".join(item.split()) if not item.strip().startswith(('"', "|")) else item.strip(_BLANKS)
        if len(item) >= 2 and item[0] == '"' and item[-1] == '"' and _closing_quote(item, 0) == len(item) - 1:
            item = _unquote(item[1:-1])
        if item:
            destinations.append(item)
    return destinations


def _unquote(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def _closing_quote(text: str, opening: int) -> int:
    index = opening + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return index
        index += 1
    return -1


def _logical_lines(text: str, warn: Warn | None) -> Iterator[tuple[str, int]]:
    pending: str | None = None
    start = 0
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip(_BLANKS)
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in _BLANKS:
            if pending is None:
                if warn is not None:
                    warn(number, "logical line must not start with whitespace; it is ignored")
                continue
            pending += "\n" + line
            continue
        if pending is not None:
            yield pending, start
        pending, start = line, number
    if pending is not None:
        yield pending, start


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise TableError("no such file; create it, or fix alias_maps/alias_database", path) from None
    except OSError as exc:
        raise TableError(f"cannot open: {exc.strerror}", path) from None


class AliasTextTable(TexthashTable):
    """`texthash:/etc/aliases` in alias_maps: the aliases(5) file read straight into memory."""

    read = staticmethod(read_aliases)
