"""`proxy:TYPE:NAME`: what Postfix's proxymap(8) is to its users, inside one process.

Postfix's clients ask the proxymap server, which opens each table once and shares it, so that
20 smtpd processes keep one database connection rather than 20. mailferry's services live in
few processes and run lookups as coroutines, so the sharing happens here: every parameter of a
process that names `proxy:mysql:/etc/postfix/x.cf` gets the same opened inner table (one
connection per inner table), closed when the last user closes it.

proxymap serves only the tables listed in `proxy_read_maps` (and `proxy_write_maps`; mailferry
writes no table through proxy:), each named there with its `proxy:` prefix, plus those in
`smtpd_restriction_classes`. Any other table is refused, as proxymap refuses it: two warnings in
the log ("request for unapproved table", "to approve this table for read-only access, list ...
in main.cf:proxy_read_maps"), and every lookup of it is a temporary failure, so mail waits in
the queue (Postfix's client gets the same refusal and its lookups fail the same way).

Until `approve_from` has been called (the daemon calls it with each configuration it reads;
`postmap` with main.cf's), every table is served: unit tests and tools without a main.cf.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mailferry.tables import logsink
from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult, tempfail

PREFIX = "proxy:"

_approved: frozenset[str] | None = None
_shared: dict[str, list] = {}           # inner spec → [table, users]
_lock = threading.Lock()


def approve_from(get: Callable[[str], str]) -> None:
    """Serve the tables listed with `get` (a main.cf getter, values expanded) from now on."""
    global _approved
    _approved = approved_read_maps(get)


def approved_read_maps(get: Callable[[str], str]) -> frozenset[str]:
    """The inner names proxymap would serve for reading: proxy_read_maps and the restriction
    classes (proxy_write_maps is for writers, which mailferry does not proxy)."""
    from mailferry.syntax import split_list

    def value(name: str) -> str:
        try:
            return get(name) or ""
        except ValueError:      # an expansion error: `check` reports it
            return ""
    read_text = value("proxy_read_maps")
    for name in split_list(value("smtpd_restriction_classes")):
        read_text += " " + value(name)
    return frozenset(_proxied(read_text))


def _proxied(value: str) -> list[str]:
    """The inner names of the `proxy:` tables in a list, as proxymap's authorize_proxied_maps:
    `/file/name` entries are read for more, nested proxy: prefixes are stripped."""
    from mailferry.syntax import split_list
    names = []
    for token in split_list(value):
        if token.startswith("/"):
            try:
                with open(token, encoding="utf-8", errors="replace") as handle:
                    names += _proxied(handle.read())
            except OSError as exc:
                logsink.warn(f"open {token}: {exc.strerror}", "proxymap")
            continue
        if not token[:1].isalnum() or ":" not in token or not token.startswith(PREFIX):
            continue
        while token.startswith(PREFIX):
            token = token[len(PREFIX):]
        names.append(token)
    return names


def is_approved(inner: str) -> bool:
    return _approved is None or inner in _approved


def open_proxied(inner: str, opener: Callable[[str], Table]) -> Table:
    """The shared inner table for `proxy:INNER`, or a refusal when it is not approved."""
    while inner.startswith(PREFIX):
        inner = inner[len(PREFIX):]
    if not is_approved(inner):
        return Refused(inner)
    with _lock:
        entry = _shared.get(inner)
        if entry is None:
            entry = _shared[inner] = [opener(inner), 0]
        entry[1] += 1
        return ProxiedTable(inner, entry[0])


class ProxiedTable(Table):
    type_name = "proxy"

    def __init__(self, inner_spec: str, inner: Table):
        super().__init__(inner_spec)
        self.inner = inner
        self.is_pattern = inner.is_pattern
        self.folds_keys = inner.folds_keys
        self.warnings = list(getattr(inner, "warnings", ()))
        self._closed = False

    @property
    def answers_now(self) -> bool:
        return self.inner.answers_now

    def lookup_now(self, key: str) -> LookupResult:
        return self.inner.lookup_now(key)

    async def lookup(self, key: str) -> LookupResult:
        return await self.inner.lookup(key)

    def items(self):
        return self.inner.items()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _lock:
            entry = _shared.get(self.name)
            if entry is None or entry[0] is not self.inner:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _shared[self.name]
        self.inner.close()


class Refused(Table):
    """A proxy: table proxymap would not serve: every lookup is a temporary failure."""
    type_name = "proxy"

    def __init__(self, inner_spec: str):
        super().__init__(inner_spec)
        self.reason = f'proxymap service is not configured for table "{inner_spec}"'
        # Logged once, here, as proxymap logs them; not kept in `warnings` too (postmap and
        # check would print them twice: check words its own, config/sqlcheck.py).
        logsink.warn(f'request for unapproved table: "{inner_spec}"', "proxymap")
        logsink.warn(f"to approve this table for read-only access, list proxy:{inner_spec} in "
                     f"main.cf:proxy_read_maps", "proxymap")

    def lookup_now(self, key: str) -> LookupResult:
        return tempfail(self.reason)
