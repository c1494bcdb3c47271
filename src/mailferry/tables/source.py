"""The text format that postmap reads and texthash serves.

One entry per logical line: `key whitespace value`, with continuation lines
and `#` comments as in main.cf. A key may contain a double-quoted stretch,
which it keeps with its quotes, as Postfix 3.x stores quoted local parts
(`"john smith"@example.com`). Keys are folded to lower case unless the
caller says otherwise.

The reader works on bytes: postmap builds tables of a million lines, and
decoding, splitting and re-encoding each one as str costs more than the
index itself. mailferry/syntax.py has the same logical-line rules for
main.cf, where clarity matters more than speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mailferry.tables.base import TableError

# Postfix splits on ASCII blanks only: a no-break space is part of a key.
_BLANKS = b" \t\r\n\f\v"
_MALFORMED = "expected format: key whitespace value"
_SPACE, _TAB, _HASH = 32, 9, 35

Warn = Callable[[int, str], None]


def read_entries(path: str, fold: bool = True, warn: Warn | None = None) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield (key, value, line number) as UTF-8 bytes, in file order.

    `warn(line, message)` hears about malformed lines, which are skipped, as
    Postfix skips them. One loop does both the logical-line joining and the
    parsing: for a million-line table, a second generator layer costs more
    than the parse.
    """
    pending: bytes | None = None
    start = 0
    for number, line in enumerate(_read(path).split(b"\n"), 1):
        if not line:
            continue
        first = line[0]
        if first == _HASH:
            continue
        if first in _BLANKS:
            stripped = line.lstrip(_BLANKS)
            if not stripped or stripped[0] == _HASH:
                continue
            if pending is None:
                if warn is not None:
                    warn(number, "logical line must not start with whitespace; it is ignored")
                continue
            pending += line
            continue
        if pending is not None:
            entry = _parse(pending, fold)
            if entry is not None:
                yield entry[0], entry[1], start
            elif warn is not None:
                warn(start, _MALFORMED)
        pending, start = line, number
    if pending is not None:
        entry = _parse(pending, fold)
        if entry is not None:
            yield entry[0], entry[1], start
        elif warn is not None:
            warn(start, _MALFORMED)


def read_source(path: str, fold: bool = True, warn: Warn | None = None) -> Iterator[tuple[str, str, int]]:
    """As read_entries, decoded to str (undecodable bytes kept as surrogates)."""
    for key, value, number in read_entries(path, fold, warn):
        yield key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"), number


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise TableError("no such file; create it, or fix the table name", path) from None
    except OSError as exc:
        raise TableError(f"cannot open: {exc.strerror}", path) from None


def _parse(text: bytes, fold: bool) -> tuple[bytes, bytes] | None:
    # bytes.split() splits on exactly Postfix's ASCII blanks.
    parts = text.split(None, 1)
    if len(parts) == 2 and 34 not in parts[0]:  # no '"' in the key: the common case
        key, value = parts[0], parts[1].rstrip(_BLANKS)
    else:
        key_end = _key_end(text)
        if key_end < 0:
            return None
        key, value = text[:key_end], text[key_end:].strip(_BLANKS)
        if not key or not value:
            return None
    if fold:
        key = key.lower() if key.isascii() else key.decode("utf-8", "surrogateescape").lower().encode(
            "utf-8", "surrogateescape")
    return key, value


def _key_end(text: bytes) -> int:
    """Where the key ends: at the first blank, quoted stretches included; -1 if a quote is unclosed."""
    index = 0
    while index < len(text) and text[index] not in _BLANKS:
        if text[index] == 34:  # '"'
            index = _closing_quote(text, index)
            if index < 0:
                return -1
        index += 1
    return index


def _closing_quote(text: bytes, opening: int) -> int:
    index = opening + 1
    while index < len(text):
        char = text[index]
        if char == 92:  # backslash escapes the next byte
            index += 2
            continue
        if char == 34:
            return index
        index += 1
    return -1
