"""`fail:NAME`: a table whose every lookup fails temporarily (Postfix's dict_fail).

Postfix offers it to stand in for a table that must not be used yet, or to
test how a service copes: every caller turns the failure into a 4xx or a
deferral, so nothing is lost.
"""

from __future__ import annotations

from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult, tempfail


class FailTable(Table):
    type_name = "fail"
    is_pattern = True  # Postfix marks it a pattern table

    def lookup_now(self, key: str) -> LookupResult:
        return tempfail(f"table fail:{self.name}: query error")
