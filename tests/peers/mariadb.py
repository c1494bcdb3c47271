"""A private MariaDB server on loopback, for the mysql: table tests (issue 15).

`mariadb-install-db` makes a fresh data directory (once), then `mariadbd --no-defaults` runs in the
foreground (the fixture owns its pid) as the unprivileged peer user (nobody when we are root:
mariadbd refuses root), on 127.0.0.1 and a free port, with its unix socket in the same private
directory. Nothing from /etc/mysql is read. root@localhost has no password on the socket
(--auth-root-authentication-method=normal): the fixture loads data through it.

Controls for failover tests: stop()/start() (same port, same data).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.peers import give_to_peer, require_tool, unprivileged_ids
from tests.peers.sql_server import DATABASE, HOST, PASSWORD, USER, SqlServer, alias_rows


class MariaDB(SqlServer):
    name = "mariadbd"
    stop_timeout = 30.0

    def __init__(self, directory: Path, port: int = 0, tls: tuple[Path, Path, Path] | None = None):
        """`tls`: (certificate, key, CA certificate) PEM files: the server offers TLS with them."""
        super().__init__(directory, port, log_name="error.log", output_name="mariadbd.out")
        self.tls = tls
        self.socket = self.directory / "mysqld.sock"

    def _prepare(self) -> None:
        user, _, _ = unprivileged_ids()
        give_to_peer(self.directory)
        give_to_peer(self.data)
        self._run_setup([require_tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}",
                         f"--user={user}", "--auth-root-authentication-method=normal", "--skip-test-db"])

    def _command(self) -> tuple[list[str], dict]:
        user, _, _ = unprivileged_ids()
        return ([require_tool("mariadbd"), "--no-defaults", f"--datadir={self.data}",
                 f"--socket={self.socket}", f"--port={self.port}", f"--bind-address={HOST}",
                 f"--user={user}", f"--pid-file={self.directory / 'mariadbd.pid'}",
                 f"--log-error={self.log_path}", "--skip-log-bin", "--skip-name-resolve",
                 "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--max-connections=200",
                 *self._tls_options()], {})

    def _tls_options(self) -> list[str]:
        """mariadbd reads its key after becoming the peer user: copies it may read."""
        if self.tls is None:
            return []
        _, uid, gid = unprivileged_ids()
        options = []
        for option, source in zip(("--ssl-cert", "--ssl-key", "--ssl-ca"), self.tls):
            copy = self.directory / f"tls-{option[6:]}.pem"
            shutil.copyfile(source, copy)
            os.chown(copy, uid, gid)
            copy.chmod(0o600)
            options.append(f"{option}={copy}")
        return options

    def _connect(self, database: str | None):
        import pymysql
        return pymysql.connect(unix_socket=str(self.socket), user="root", database=database,
                               autocommit=True, connect_timeout=10)


# --- the seed's alias routing as SQL rows (tests/peers/sql_server.py alias_rows) ------------------

TLS_USER = "postfix_tls"


def _sql_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def load_aliases(server: MariaDB) -> None:
    values = ", ".join(f"({_sql_text(a)}, {_sql_text(g)}, {active})" for a, g, active in alias_rows())
    server.execute(
        f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4",
        f"CREATE TABLE {DATABASE}.aliases (address VARCHAR(255) NOT NULL, goto VARCHAR(255) NOT NULL, "
        f"active INT NOT NULL DEFAULT 1)",
        f"INSERT INTO {DATABASE}.aliases (address, goto, active) VALUES {values}",
        f"CREATE USER '{USER}'@'%' IDENTIFIED BY {_sql_text(PASSWORD)}",
        f"CREATE USER '{USER}'@'localhost' IDENTIFIED BY {_sql_text(PASSWORD)}",
        f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'%'",
        f"GRANT SELECT ON {DATABASE}.* TO '{USER}'@'localhost'",
        # The same rights, over TLS only: proves a table's tls_* settings are used.
        f"CREATE USER '{TLS_USER}'@'%' IDENTIFIED BY {_sql_text(PASSWORD)} REQUIRE SSL",
        f"GRANT SELECT ON {DATABASE}.* TO '{TLS_USER}'@'%'")
