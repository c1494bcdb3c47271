"""Observing lookups and the steps built on them, for `mailferry trace`.

The daemon never pays for this: tables are wrapped in TracedTable only when
an observer is given to open_table/open_maps (and to the from_config of
rewriting, routing and the RCPT-time checks, which pass it down), and the
modules that report steps do so behind an `observer is not None` check.

An observer is anything with the two methods of Trace; Trace keeps what it
is told, in order, for the command to print.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult


class Trace:
    """The events of one trace, in the order they happened. Each is a dict
    with a `kind`: "lookup" (table, key, status, value, reason, ms) or a
    step's kind, with the step's fields and a one-line `text`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def lookup(self, table: str, key: str, result: LookupResult, elapsed: float) -> None:
        self.events.append({"kind": "lookup", "table": table, "key": key, "status": result.status,
                            "value": result.value, "reason": result.reason, "ms": round(elapsed * 1000, 3)})

    def step(self, kind: str, text: str, **fields: Any) -> None:
        self.events.append({"kind": kind, "text": text, **fields})


class TracedTable(Table):
    """`table`, with every lookup told to the observer: table spec, key,
    result and the time it took."""

    def __init__(self, table: Table, observer: Trace):
        super().__init__(table.name)
        self.table = table
        self.observer = observer
        self.type_name = table.type_name
        self.is_pattern = table.is_pattern
        self.folds_keys = table.folds_keys
        self.warnings = list(getattr(table, "warnings", ()))

    def lookup_now(self, key: str) -> LookupResult:
        started = time.perf_counter()
        result = self.table.lookup_now(key)
        self.observer.lookup(self.spec, key, result, time.perf_counter() - started)
        return result

    async def lookup(self, key: str) -> LookupResult:
        started = time.perf_counter()
        result = await self.table.lookup(key)
        self.observer.lookup(self.spec, key, result, time.perf_counter() - started)
        return result

    def items(self) -> Iterator[tuple[str, str]]:
        return self.table.items()

    def close(self) -> None:
        self.table.close()
