"""The pgsql driver: psycopg 3 (see drivers.py). Imported at the top: the daemon imports every
module before it gives up root (master/server.py); the CLI imports this one only when a pgsql:
table connects."""

from __future__ import annotations

import psycopg

from mailferry.tables.sql.drivers import CONNECT_TIMEOUT, QUERY_TIMEOUT, Connection, DriverError
from mailferry.tables.sql.settings import Host, SqlConfig


class PgsqlConnection(Connection):
    def __init__(self, config: SqlConfig, host: Host):
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
            raise DriverError(str(exc).strip(), connecting=True) from None

    def rows(self, sql: str, parameters: list[str]) -> list[tuple]:
        try:
            with self._connection.cursor() as cursor:
                # Prepared once on the server, then only bound and run: a table asks one query
                # again and again (measured: docs/sql-tables.md "Speed").
                cursor.execute(sql, parameters, prepare=True)
                return list(cursor.fetchall()) if cursor.description is not None else []
        except self._errors as exc:
            raise DriverError(str(exc).strip()) from None

    def close(self) -> None:
        try:
            self._connection.close()
        except Exception:
            pass
