"""`ldap:/path/file.cf` tables: a complete ldap_table(5) client on python-ldap.

    settings.py    the file: parameters, Postfix's defaults, unknown names for `check`
    templates.py   %s %u %d %1-9 (filters, search base) and %S %U %D (results), with escaping
    client.py      servers, failover, bounded waits, DN/URL recursion (python-ldap, blocking)

The event loop never waits on the directory: `lookup` runs the blocking client in a small thread
pool and answers repeated keys from a short TTL cache (found and not-found only; a temporary
failure is never cached). `lookup_now` is the same lookup in the caller's thread, for the CLI.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mailferry.tables.base import Table
from mailferry.tables.ldap.settings import Problem, load_config, read_settings
from mailferry.tables.result import MISSING, TEMPFAIL, LookupResult

__all__ = ["LdapTable", "file_problems", "log_warnings_to", "Problem"]

WORKERS = 4
CACHE_TTL = 5.0
CACHE_SIZE = 4096


def file_problems(path: str) -> list[Problem]:
    """What `mailferry check` reports about an ldap_table file beyond errors that stop it
    opening: unknown parameter names and repeated ones, each at its line, and a bind_pw that
    everyone may read."""
    settings = read_settings(path)
    return list(settings.problems) + secret_readable_by_everyone(settings, "bind_pw")


def secret_readable_by_everyone(settings, name: str) -> list[Problem]:
    """A password (`name`) set in a table file that everyone may read, at its line; also used
    for the SQL tables' `password`."""
    if not settings.values.get(name):
        return []
    mode = os.stat(settings.path).st_mode
    if not mode & stat.S_IROTH:
        return []
    return [Problem(settings.lines[name], (
        f"{name} is readable by everyone (mode {stat.S_IMODE(mode):04o}); run: chmod o-rwx "
        f"{settings.path} (keep it readable by the daemon's mail_owner group)"))]


def _stderr_warning(text: str) -> None:
    print(f"mailferry: warning: {text}", file=sys.stderr, flush=True)


_warning_sink: Callable[[str], None] = _stderr_warning


def log_warnings_to(sink: Callable[[str], None]) -> None:
    """Where tables opened without their own `warn` send warnings (a server that failed, a DN
    not found): standard error until the daemon points it at its log, e.g.
    `log_warnings_to(lambda text: log.warning("cleanup", text))`."""
    global _warning_sink
    _warning_sink = sink


class LdapTable(Table):
    type_name = "ldap"

    def __init__(self, name: str, warn: Callable[[str], None] | None = None):
        super().__init__(name)
        self.config = load_config(name)     # TableError for a file Postfix would refuse
        self.path = name
        self.warnings = list(self.config.warnings)
        self.warn = warn or (lambda text: _warning_sink(text))
        self._directory = None
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[str, tuple[float, LookupResult]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._domains = _DomainList(self.config.domains) if self.config.domains else None

    @property
    def directory(self):
        if self._directory is None:
            from mailferry.tables.ldap.client import Directory  # python-ldap only when used
            self._directory = Directory(self.config, lambda text: self.warn(text))
        return self._directory

    def _skipped(self, key: str) -> bool:
        return key_is_skipped(self._domains, self.config.templates, key)

    def lookup_now(self, key: str) -> LookupResult:
        key = key.lower()
        early = self._answer_without_search(key)
        return early if early is not None else self._search(key)

    async def lookup(self, key: str) -> LookupResult:
        key = key.lower()
        early = self._answer_without_search(key)
        if early is not None:
            return early
        if self._executor is None:
            self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="ldap")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._search, key)

    async def bind_as_entry(self, key: str, password: str) -> LookupResult:
        """smtpd_sasl_type = ldap: bind as the entry found for `key` (client.Directory.bind_as_entry).
        Never cached: a password is checked by the directory every time."""
        key = key.lower()
        if self._skipped(key):
            return MISSING
        if self._executor is None:
            self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="ldap")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.directory.bind_as_entry, key, password)

    def _answer_without_search(self, key: str) -> LookupResult | None:
        return MISSING if self._skipped(key) else self._cached(key)

    def _search(self, key: str) -> LookupResult:
        """Blocking: in the caller's thread for the CLI, in a worker thread for the daemon."""
        result = self.directory.lookup(key)
        self._remember(key, result)
        return result

    def _cached(self, key: str) -> LookupResult | None:
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._cache[key]
                return None
            return entry[1]

    def _remember(self, key: str, result: LookupResult) -> None:
        if result.status == TEMPFAIL:
            return
        with self._cache_lock:
            self._cache[key] = (time.monotonic() + CACHE_TTL, result)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._directory is not None:
            for server in self._directory.servers:
                server.drop_all()


def key_is_skipped(domains: "_DomainList | None", templates, key: str) -> bool:
    """Keys Postfix never searches for (db_common, shared with the SQL tables): outside
    `domain`, or unable to fill the templates."""
    if domains is not None:
        at = key.rfind("@")
        if at <= 0 or not domains.matches(key[at + 1:]):
            return True
    return not templates.key_is_eligible(key)


class _DomainList:
    """`domain`: Postfix's string list: names, `!name`, /file of names, type:table (exact match,
    no parent domains); the first entry that matches decides."""

    def __init__(self, entries: list[str]):
        self.entries: list[tuple[bool, object]] = []
        for entry in entries:
            negated = entry.startswith("!")
            entry = entry[1:] if negated else entry
            if entry.startswith("/"):
                with open(entry, encoding="utf-8") as handle:
                    for word in handle.read().split():
                        self.entries.append((negated, word.lower()))
            elif ":" in entry:
                from mailferry.tables import open_table
                self.entries.append((negated, open_table(entry)))
            else:
                self.entries.append((negated, entry))

    def matches(self, domain: str) -> bool:
        for negated, entry in self.entries:
            hit = entry == domain if isinstance(entry, str) else entry.lookup_now(domain).found
            if hit:
                return not negated
        return False
