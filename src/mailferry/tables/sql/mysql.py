"""The mysql driver: PyMySQL (see drivers.py). Imported at the top: the daemon imports every
module before it gives up root (master/server.py); the CLI imports this one only when a mysql:
table connects."""

from __future__ import annotations

import pymysql

from mailferry.tables.sql.drivers import CONNECT_TIMEOUT, QUERY_TIMEOUT, Connection, DriverError
from mailferry.tables.sql.settings import Host, SqlConfig


class MysqlConnection(Connection):
    def __init__(self, config: SqlConfig, host: Host):
        self._errors = (pymysql.MySQLError, OSError)
        get = config.get
        options: dict = {"user": get("user") or None, "password": get("password"),
                         "database": get("dbname"), "charset": get("charset"),
                         "connect_timeout": CONNECT_TIMEOUT, "read_timeout": QUERY_TIMEOUT,
                         "write_timeout": QUERY_TIMEOUT, "autocommit": True}
        if host.kind == "unix" and host.text.lower() == "localhost" and get("option_file"):
            pass        # the option file's `socket` (PyMySQL prefers an argument to the file)
        elif host.kind == "unix":
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
            # The chain is verified whenever a CA is given; the server's name too with
            # tls_verify_cert = yes (docs/sql-tables.md). PyMySQL's ssl_verify_* arguments would
            # replace this dict, CA included: only the dict is passed.
            tls["check_hostname"] = verify == "yes"
            tls["verify_mode"] = verify == "yes" or "ca" in tls or "capath" in tls
            options["ssl"] = tls
        self._require_result_set = config.settings.boolean("require_result_set")
        try:
            self._connection = pymysql.connect(**options)
        except self._errors as exc:
            raise DriverError(str(exc), connecting=True) from None

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
