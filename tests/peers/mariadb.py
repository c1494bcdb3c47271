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
import subprocess
from pathlib import Path

from tests.peers import (PeerError, free_port, give_to_peer, require_tool, stop_process, tail_file,
                         unprivileged_ids, wait_for_port)

HOST = "127.0.0.1"


class MariaDB:
    def __init__(self, directory: Path, port: int = 0, tls: tuple[Path, Path, Path] | None = None):
        """`tls`: (certificate, key, CA certificate) PEM files: the server offers TLS with them."""
        self.directory = Path(directory)
        self.tls = tls
        self.port = port or free_port(HOST)
        self.data = self.directory / "data"
        self.socket = self.directory / "mysqld.sock"
        self.log_path = self.directory / "error.log"
        self.process: subprocess.Popen | None = None
        self._installed = False

    def _install(self) -> None:
        user, _, _ = unprivileged_ids()
        give_to_peer(self.directory)
        give_to_peer(self.data)
        installed = subprocess.run(
            [require_tool("mariadb-install-db"), "--no-defaults", f"--datadir={self.data}",
             f"--user={user}", "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True)
        if installed.returncode != 0:
            raise PeerError(f"mariadb-install-db ({self.data}) failed with {installed.returncode}:\n"
                            f"{installed.stdout[-2000:]}{installed.stderr[-2000:]}")
        self._installed = True

    def start(self, timeout: float = 30.0) -> "MariaDB":
        if not self._installed:
            self._install()
        user, _, _ = unprivileged_ids()
        with open(self.directory / "mariadbd.out", "ab") as out:
            self.process = subprocess.Popen(
                [require_tool("mariadbd"), "--no-defaults", f"--datadir={self.data}",
                 f"--socket={self.socket}", f"--port={self.port}", f"--bind-address={HOST}",
                 f"--user={user}", f"--pid-file={self.directory / 'mariadbd.pid'}",
                 f"--log-error={self.log_path}", "--skip-log-bin", "--skip-name-resolve",
                 "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--max-connections=200",
                 *self._tls_options()],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(HOST, self.port, timeout, process=self.process, log=self.log_path, what="mariadbd")
        except PeerError as error:
            self.stop()
            raise PeerError(f"mariadbd ({self.data}) did not start: {error}") from None
        return self

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

    def execute(self, *statements: str, database: str | None = None) -> list[tuple]:
        """Run statements as root over the unix socket; the rows of the last one."""
        import pymysql
        connection = pymysql.connect(unix_socket=str(self.socket), user="root", database=database,
                                     autocommit=True, connect_timeout=10)
        try:
            with connection.cursor() as cursor:
                rows: list[tuple] = []
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall())
                return rows
        finally:
            connection.close()

    def stop(self) -> None:
        if stop_process(self.process, timeout=30) not in (None, 0):
            print(f"mariadbd stopped with status {self.process.returncode}: {tail_file(self.log_path)}")
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# --- the seed's alias routing as SQL rows, and the session fixture ------------------------------

DATABASE = "mail"
USER = "postfix"
PASSWORD = "s3cret'pw"     # a quote in it: the driver must not splice it either
TLS_USER = "postfix_tls"


def alias_rows() -> list[tuple[str, str, int]]:
    """(address, goto, active): the seed's LDAP directory (tests/peers/slapd.py) as a table, plus
    keys that quote characters must reach literally."""
    from tests.peers.slapd import (SEED_ADDRESSES, SEED_ROUTING_ADDRESS, SHARED_ADDRESS, SHARED_ROUTING_ADDRESSES,
                                   STAR_ADDRESS, STAR_ROUTING_ADDRESS)
    rows = [(address, SEED_ROUTING_ADDRESS, 1) for address in SEED_ADDRESSES]
    rows += [(STAR_ADDRESS, STAR_ROUTING_ADDRESS, 1)]
    rows += [(SHARED_ADDRESS, goto, 1) for goto in SHARED_ROUTING_ADDRESSES]
    rows += [(address, goto, 1) for address, goto in QUOTED_ROWS]
    rows += [("inactive@example.com", "inactive@mail1.internal", 0)]
    return rows


# Stored keys holding quote characters: each must be found by itself, exactly.
QUOTED_ROWS = (("o'brien@example.com", "obrien@mail1.internal"),
               ("back\\slash@example.com", "backslash@mail1.internal"),
               ("per%cent@example.com", "percent@mail1.internal"),
               ("under_score@example.com", "underscore@mail1.internal"))


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
