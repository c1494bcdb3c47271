"""Lookup latency by table, for the metrics (mailferry_table_lookup_duration_seconds).

With metrics off, `timed` returns the table itself: a lookup costs nothing more.
With them on, the table is wrapped once, when it is opened, and each lookup
costs two clock reads and one observation (metrics/__init__.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from mailferry import metrics
from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult


def timed(table: Table) -> Table:
    return TimedTable(table) if metrics.enabled() else table


class TimedTable(Table):
    """`table`, each lookup timed into the histogram of its spec (`ldap:/etc/x.cf`)."""

    def __init__(self, table: Table):
        super().__init__(table.name)
        self.table = table
        self.type_name = table.type_name
        self.is_pattern = table.is_pattern
        self.folds_keys = table.folds_keys
        self._histogram = metrics.lookup_timer(table.spec)

    def __getattr__(self, name: str):
        # What only some types have (warnings, path, ...) reads through, as from the table itself.
        return getattr(self.table, name)

    @property
    def answers_now(self) -> bool:
        # Defining lookup_now here must not make a table that only answers asynchronously
        # (socketmap:) look as if it answered now: mynetworks and its kind rely on this.
        return self.table.answers_now

    def lookup_now(self, key: str) -> LookupResult:
        started = time.perf_counter()
        result = self.table.lookup_now(key)
        self._histogram.observe(time.perf_counter() - started)
        return result

    async def lookup(self, key: str) -> LookupResult:
        started = time.perf_counter()
        result = await self.table.lookup(key)
        self._histogram.observe(time.perf_counter() - started)
        return result

    def items(self) -> Iterator[tuple[str, str]]:
        return self.table.items()

    def close(self) -> None:
        self.table.close()
