"""Tables answered from memory: `texthash:`, `inline:`, `static:`."""

from __future__ import annotations

from collections.abc import Iterator

from mailferry.syntax import split_list
from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found
from mailferry.tables.source import read_source


class DictTable(Table):
    """A table held in a dict of folded keys."""

    def __init__(self, name: str, entries: dict[str, str]):
        super().__init__(name)
        self._entries = entries
        self.warnings: list[str] = []

    def lookup_now(self, key: str) -> LookupResult:
        value = self._entries.get(key.lower())
        return MISSING if value is None else found(value)

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._entries.items())


class TexthashTable(DictTable):
    """A postmap source file read straight into memory, with no index (texthash:)."""

    type_name = "texthash"
    # (path, fold, warn) → (key, value, line) of each entry; tables/aliases.py reads aliases(5) instead
    read = staticmethod(read_source)

    def __init__(self, name: str):
        warnings: list[str] = []
        entries: dict[str, str] = {}
        for key, value, _ in self.read(name, True, lambda line, message: warnings.append(
                f"{name}, line {line}: {message}")):
            entries.setdefault(key, value)
        super().__init__(name, entries)
        self.warnings = warnings


class InlineTable(DictTable):
    """`inline:{ key=value, { key = text with spaces } }`."""

    type_name = "inline"

    def __init__(self, name: str):
        super().__init__(name, _parse_inline(name))


def _parse_inline(name: str) -> dict[str, str]:
    body = _strip_braces(name, "inline")
    entries: dict[str, str] = {}
    for item in split_list(body):
        if item.startswith("{"):
            item = _strip_braces(item, "inline")
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise TableError(f"inline:{name}: expected key=value, found {item!r}; "
                             "use { key = value } for text with spaces")
        entries.setdefault(key.strip().lower(), value.strip())
    return entries


def _strip_braces(text: str, type_name: str) -> str:
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        raise TableError(f"{type_name}:{text}: expected {{ ... }}")
    return stripped[1:-1].strip()


class StaticTable(Table):
    """`static:value` or `static:{ text with spaces }`: every key finds the same value."""

    type_name = "static"
    folds_keys = False

    def __init__(self, name: str):
        super().__init__(name)
        self._value = _strip_braces(name, "static") if name.lstrip().startswith("{") else name
        self._result = found(self._value)

    def lookup_now(self, key: str) -> LookupResult:
        return self._result


class RandomTable(Table):
    """`randmap:{value, value, ...}`: every key finds one of the values, chosen at random
    (Postfix's dict_random). A value in braces keeps them, as Postfix keeps them."""

    type_name = "randmap"
    is_pattern = True  # Postfix marks it a pattern table: it sees whole keys only
    folds_keys = False

    def __init__(self, name: str):
        from mailferry.tables.composite import parse_members  # the same "{...}" syntax as unionmap
        super().__init__(name)
        self._results = [found(value) for value in parse_members("randmap", name, "value")]

    def lookup_now(self, key: str) -> LookupResult:
        import random  # lazy: only randmap needs it
        return random.choice(self._results)
