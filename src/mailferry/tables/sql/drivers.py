"""One connection to one server, per driver; blocking (called from the table's worker thread).

    mysql    (mysql.py) PyMySQL: pure Python, so no libmysqlclient to match; parameters are escaped by
             the driver for the connection's character set and the server's
             NO_BACKSLASH_ESCAPES mode (MySQL's text protocol has no other binding)
    pgsql    (pgsql.py) psycopg 3: the key travels apart from the SQL text (the extended protocol, $1)
    sqlite   the standard library's sqlite3: bound by SQLite itself, read-only

Every failure is raised as DriverError; the table decides (next host, or a temporary failure).
"""

from __future__ import annotations

import sqlite3

from mailferry.tables.sql.settings import Host, SqlConfig

CONNECT_TIMEOUT = 5      # seconds; Postfix's libraries use their own defaults
QUERY_TIMEOUT = 10


class DriverError(Exception):
    """`connecting`: the server could not be reached or refused us (else: the query failed)."""

    def __init__(self, message: str, connecting: bool = False):
        super().__init__(message)
        self.connecting = connecting


class Connection:
    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteConnection(Connection):
    def __init__(self, config: SqlConfig, host: Host | None = None):
        path = config.get("dbpath")
        try:
            # Read-only, as Postfix opens it (SQLITE_OPEN_READONLY); a missing file is an error,
            # not a new empty database.
            self._connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                               check_same_thread=False, timeout=QUERY_TIMEOUT)
            self._connection.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise DriverError(f"open database {path}: {exc}", connecting=True) from None

    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise DriverError(str(exc)) from None

    def close(self) -> None:
        self._connection.close()


def connection_class(type_name: str) -> type[Connection]:
    """Each driver in its own module, imported when a table of its type first connects: the
    import of psycopg alone costs `postmap -q KEY mysql:FILE` most of a second on a busy host."""
    if type_name == "mysql":
        from mailferry.tables.sql.mysql import MysqlConnection
        return MysqlConnection
    if type_name == "pgsql":
        from mailferry.tables.sql.pgsql import PgsqlConnection
        return PgsqlConnection
    return SqliteConnection


PARAMSTYLES = {"mysql": "format", "pgsql": "format", "sqlite": "qmark"}
