"""`mysql:`, `pgsql:` and `sqlite:` tables (mysql_table(5), pgsql_table(5), sqlite_table(5)).

    settings.py   the file, Postfix's defaults, hosts; the query template parsed and translated
    query.py      a Postfix query template → a parameterised query (the key is never SQL text)
    drivers.py    one connection, blocking: sqlite3, and the interface mysql.py (PyMySQL) and
                  pgsql.py (psycopg 3) implement, each imported when its first table connects

Each table keeps ONE connection, used by one worker thread, so the event loop never waits on
the database and lookups of one table reach the server one at a time. Hosts fail over as in
Postfix (unix sockets first, then TCP, each group in random order); a host that fails rests
for retry_interval seconds, during which it is tried only after the others (Postfix does not
try it at all, so a lone server that comes back stays unused for a minute). Every host failing,
a query error, and more results than expansion_limit are temporary failures (4xx, mail kept).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mailferry.tables import logsink
from mailferry.tables.base import Table
from mailferry.tables.result import MISSING, LookupResult, found, tempfail
from mailferry.tables.sql.settings import SqlConfig, load_config

__all__ = ["SqlTable", "file_problems"]

def file_problems(type_name: str, path: str):
    """Unknown or repeated names in the file, at their lines (for `check`); a password that
    everyone may read."""
    from mailferry.tables.ldap import secret_readable_by_everyone
    from mailferry.tables.sql.settings import read
    settings = read(type_name, path)
    return list(settings.problems) + secret_readable_by_everyone(settings, "password")


class SqlTable(Table):
    def __init__(self, type_name: str, name: str, warn: Callable[[str], None] | None = None):
        super().__init__(name)
        self.type_name = type_name
        self.config: SqlConfig = load_config(type_name, name)   # TableError: file and line
        self.path = name
        self.warnings = list(self.config.warnings)
        self.warn = warn or logsink.warn
        from mailferry.tables.sql.drivers import PARAMSTYLES
        self._sql = self.config.query.render(PARAMSTYLES[type_name])
        self._domains = None
        if self.config.domains:
            from mailferry.tables.ldap import _DomainList   # Postfix's string list, as for LDAP
            self._domains = _DomainList(self.config.domains)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._connection = None
        self._connected_host = None
        self._last_used = 0.0
        self._resting_until: dict[str, float] = {}
        self._pid = os.getpid()

    # --- what Postfix answers without asking the server ---------------------------------------

    def _skipped(self, key: str) -> bool:
        from mailferry.tables.ldap import key_is_skipped    # db_common's rules, as for LDAP
        return key_is_skipped(self._domains, self.config.templates, key)

    def parameters(self, key: str) -> list[str]:
        """The bound values for `key` (the key folded to lower case, as Postfix folds it)."""
        return [self.config.templates.key_text(template, key) for template in self.config.query.parameters]

    # --- lookups --------------------------------------------------------------------------------

    def lookup_now(self, key: str) -> LookupResult:
        self._after_fork()
        key = key.lower()
        if self._skipped(key):
            return MISSING
        return self._search(key)

    async def lookup(self, key: str) -> LookupResult:
        key = key.lower()
        if self._skipped(key):
            return MISSING
        self._after_fork()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.type_name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._search, key)

    def _after_fork(self) -> None:
        """A table opened (and used) before the daemon forked its workers: the child has neither
        the worker thread nor a connection of its own. Both are made again; the inherited socket
        is left alone (closing it would end the parent's session)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._executor = None
        self._lock = threading.Lock()
        self._connection = None
        self._connected_host = None

    def _search(self, key: str) -> LookupResult:
        with self._lock:
            rows = self._rows(key)
        if isinstance(rows, LookupResult):
            return rows
        return self._format(rows, key)

    def _format(self, rows: list[tuple], key: str) -> LookupResult:
        """Every non-empty column of every row through result_format, joined with commas."""
        values: list[str] = []
        limit = self.config.expansion_limit
        for row in rows:
            for column in row:
                if column is None:
                    continue
                text = column.decode("utf-8", "replace") if isinstance(column, bytes) else str(column)
                if not text:
                    self.warn(f'table "{self.spec}": empty lookup result for: "{key}" -- ignored')
                    continue
                formatted = self.config.templates.result(text, key)
                if formatted is None:
                    continue
                values.append(formatted)
                if limit and len(values) > limit:
                    self.warn(f"{self.path}: Expansion limit exceeded for key: '{key}'")
                    return tempfail(f"{self.spec}: more than expansion_limit = {limit} results "
                                    f"for {key!r}")
        return found(",".join(values)) if values else MISSING

    def _rows(self, key: str):
        parameters = self.parameters(key)
        from mailferry.tables.sql.drivers import DriverError
        if self.type_name == "sqlite":
            try:
                return self._connect(None).rows(self._sql, parameters)
            except DriverError as exc:
                self._drop()
                self.warn(f"{self.spec}: {exc}")
                return tempfail(f"{self.spec}: {exc}")
        failures = []
        for host in self._hosts_in_order():
            try:
                return self._on_host(host, parameters)
            except DriverError as exc:
                self._drop()
                self._resting_until[host.text] = time.monotonic() + self.config.settings.number("retry_interval")
                failures.append(f"{host.text}: {exc}")
                # Postfix's words: "connect to mysql server HOST: ..." or "mysql query failed: ..."
                what = f"connect to {self.type_name} server {host.text}" if exc.connecting else \
                    f"{self.type_name} query failed: host {host.text}"
                self.warn(f"{what}: {exc} (table {self.spec})")
        return tempfail(f"{self.spec}: no {self.type_name} server answered: " + "; ".join(failures))

    def _on_host(self, host, parameters: list[str]) -> list[tuple]:
        """A kept connection the server has since dropped (a restart, wait_timeout) is
        reconnected once before the host counts as failed."""
        from mailferry.tables.sql.drivers import DriverError
        reused = self._connection is not None and self._connected_host == host
        try:
            return self._connect(host).rows(self._sql, parameters)
        except DriverError as exc:
            if not reused or exc.connecting:
                raise
        self._drop()
        return self._connect(host).rows(self._sql, parameters)

    def _hosts_in_order(self):
        """The connected host first (the connection is reused), then Postfix's order, with
        hosts that failed within retry_interval last."""
        now = time.monotonic()
        ordered = self.config.ordered_hosts()
        ordered.sort(key=lambda host: self._resting_until.get(host.text, 0.0) > now)
        if self._connected_host is not None and self._connected_host in ordered:
            ordered.remove(self._connected_host)
            ordered.insert(0, self._connected_host)
        return ordered

    def _connect(self, host):
        now = time.monotonic()
        idle = self.type_name != "sqlite" and self._connection is not None and \
            now - self._last_used > self.config.settings.number("idle_interval")
        if self._connection is not None and (host != self._connected_host or idle):
            self._drop()
        if self._connection is None:
            from mailferry.tables.sql.drivers import connection_class
            self._connection = connection_class(self.type_name)(self.config, host)
            self._connected_host = host
        self._last_used = now
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None
        self._connected_host = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        with self._lock:
            self._drop()
