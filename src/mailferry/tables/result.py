"""The three outcomes of a table lookup.

A temporary failure is not "not found": callers must turn it into a 4xx reply
or a deferral, never into "unknown user".
"""

from __future__ import annotations

FOUND = "found"
NOT_FOUND = "not-found"
TEMPFAIL = "tempfail"


class LookupResult:
    """Immutable by convention. A plain slotted class: lookups are a hot path,
    and dataclasses would cost the CLI an import of `inspect` at start-up."""

    __slots__ = ("status", "value", "reason")

    def __init__(self, status: str, value: str | None = None, reason: str = ""):
        self.status = status
        self.value = value
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LookupResult):
            return NotImplemented
        return (self.status, self.value, self.reason) == (other.status, other.value, other.reason)

    def __hash__(self) -> int:
        return hash((self.status, self.value, self.reason))

    def __repr__(self) -> str:
        return f"LookupResult({self.status!r}, {self.value!r}, {self.reason!r})"

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
