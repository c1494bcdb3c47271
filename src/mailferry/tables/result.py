"""The three outcomes of a table lookup.

A temporary failure is not "not found": callers must turn it into a 4xx reply
or a deferral, never into "unknown user".
"""

from __future__ import annotations

from dataclasses import dataclass

FOUND = "found"
NOT_FOUND = "not-found"
TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class LookupResult:
    status: str
    value: str | None = None
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.status == FOUND

    @property
    def not_found(self) -> bool:
        return self.status == NOT_FOUND

    @property
    def tempfail(self) -> bool:
        return self.status == TEMPFAIL


MISSING = LookupResult(NOT_FOUND)


def found(value: str) -> LookupResult:
    return LookupResult(FOUND, value)


def tempfail(reason: str) -> LookupResult:
    return LookupResult(TEMPFAIL, None, reason)
