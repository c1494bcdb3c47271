"""One connection to one server, per driver; blocking (called from the table's worker thread).

    mysql    PyMySQL: pure Python, so no libmysqlclient to match; parameters are escaped by
             the driver for the connection's character set and the server's
             NO_BACKSLASH_ESCAPES mode (MySQL's text protocol has no other binding)
    pgsql    psycopg 3: the key travels apart from the SQL text (the extended protocol, $1)
    sqlite   the standard library's sqlite3: bound by SQLite itself, read-only

Every failure is raised as DriverError; the table decides (next host, or a temporary failure).
"""

from __future__ import annotations

import sqlite3

from mailferry.tables.sql.settings import Host, SqlConfig

CONNECT_TIMEOUT = 5      # seconds; Postfix's libraries use their own defaults
QUERY_TIMEOUT = 10


class DriverError(Exception):
    pass


class NoResultSet(Exception):
    """A MySQL statement that returned no result set (require_result_set)."""


class Connection:
    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class MysqlConnection(Connection):
    def __init__(self, config: SqlConfig, host: Host):
        import pymysql  # only when a mysql table is used
        self._errors = (pymysql.MySQLError, OSError)
        get = config.get
        options: dict = {"user": get("user") or None, "password": get("password"),
                         "database": get("dbname"), "charset": get("charset"),
                         "connect_timeout": CONNECT_TIMEOUT, "read_timeout": QUERY_TIMEOUT,
                         "write_timeout": QUERY_TIMEOUT, "autocommit": True}
        if host.kind == "unix":
            options["unix_socket"] = host.address
        else:
            options["host"] = host.address
            options["port"] = host.port or 3306
        if get("option_file"):
            options["read_default_file"] = get("option_file")
            options["read_default_group"] = get("option_group")
        tls = {name: get(option) for name, option in (("ca", "tls_CAfile"), ("capath", "tls_CApath"),
                                                      ("cert", "tls_cert_file"), ("key", "tls_key_file"),
                                                      ("cipher", "tls_ciphers")) if get(option)}
        verify = get("tls_verify_cert").lower()
        if tls or verify == "yes":
            tls["check_hostname"] = verify == "yes"
            options["ssl"] = tls
            if verify == "yes":
                options["ssl_verify_cert"] = True
                options["ssl_verify_identity"] = True
        self._require_result_set = config.settings.boolean("require_result_set")
        try:
            self._connection = pymysql.connect(**options)
        except self._errors as exc:
            raise DriverError(str(exc)) from None

    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                if cursor.description is None:
                    if self._require_result_set:
                        raise DriverError("the query returned no result set (require_result_set = yes)")
                    return []
                return list(cursor.fetchall())
        except self._errors as exc:
            raise DriverError(str(exc)) from None

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:
            pass


class PgsqlConnection(Connection):
    def __init__(self, config: SqlConfig, host: Host):
        import psycopg  # only when a pgsql table is used
        self._errors = (psycopg.Error, OSError)
        get = config.get
        options: dict = {"connect_timeout": CONNECT_TIMEOUT, "autocommit": True,
                         "client_encoding": get("encoding"),
                         "options": f"-c statement_timeout={QUERY_TIMEOUT * 1000}"}
        if host.kind != "uri":
            options.update(host=host.address, dbname=get("dbname") or None,
                           user=get("user") or None, password=get("password") or None)
            if host.port:
                options["port"] = host.port
        try:
            self._connection = psycopg.connect(host.address if host.kind == "uri" else "", **options)
        except self._errors as exc:
            raise DriverError(str(exc).strip()) from None

    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                return list(cursor.fetchall()) if cursor.description is not None else []
        except self._errors as exc:
            raise DriverError(str(exc).strip()) from None

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:
            pass


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
            raise DriverError(f"open database {path}: {exc}") from None

    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as exc:
            raise DriverError(str(exc)) from None

    def close(self) -> None:
        self._connection.close()


CONNECTIONS = {"mysql": MysqlConnection, "pgsql": PgsqlConnection, "sqlite": SqliteConnection}
PARAMSTYLES = {"mysql": "format", "pgsql": "format", "sqlite": "qmark"}
