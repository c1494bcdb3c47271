"""What every lookup table type provides.

Lookups are async because some tables (LDAP) do network I/O. Tables that
answer from memory or a local file implement `lookup_now` and inherit the
async `lookup`, so the CLI can query them without starting an event loop.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailferry.tables.result import LookupResult


class TableError(Exception):
    """A table that cannot be opened or parsed: a configuration error.

    Carries the file and line so the operator can find the problem.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}, line {self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class Table:
    """One lookup table, opened from "type:name".

    Subclasses set `type_name`. `is_pattern` marks tables (regexp) that match
    whole strings and so receive only the full key in address lookups, as
    Postfix's mail_addr_find does.
    """

    type_name = ""
    is_pattern = False
    # Postfix folds keys to lower case for these table types (DICT_FLAG_FOLD_FIX).
    folds_keys = True

    def __init__(self, name: str):
        self.name = name

    @property
    def spec(self) -> str:
        return f"{self.type_name}:{self.name}"

    def lookup_now(self, key: str) -> LookupResult:
        raise NotImplementedError(f"{self.type_name} tables are only looked up asynchronously")

    @property
    def answers_now(self) -> bool:
        """Whether `lookup_now` works: lists read without an event loop (mynetworks) need it."""
        return type(self).lookup_now is not Table.lookup_now

    async def lookup(self, key: str) -> LookupResult:
        return self.lookup_now(key)

    def items(self) -> Iterator[tuple[str, str]]:
        """Every (key, value) pair, for `postmap -s`."""
        raise TableError(f"table {self.spec} does not support sequential access")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"
