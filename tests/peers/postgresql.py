"""A private PostgreSQL server on loopback, for the pgsql: table tests (issue 15).

`initdb` (once) and `postgres` run as the unprivileged peer user (nobody when we are root:
PostgreSQL refuses root), started directly with Popen(user=...) so the fixture owns the
postmaster's pid. It listens on 127.0.0.1 and a free port, with its unix socket in the same
private directory; nothing from /etc/postgresql is read. Local (socket) connections are trusted,
TCP ones need a password (scram-sha-256), as a real server would. fsync is off: test data.

Controls for failover tests: stop()/start() (same port, same data).
"""

from __future__ import annotations

import glob
import signal
import subprocess
import time
from pathlib import Path

from tests.peers import PeerError, give_to_peer, tail_file, unprivileged_ids
from tests.peers.sql_server import DATABASE, HOST, PASSWORD, USER, SqlServer, alias_rows

SUPERUSER = "postgres"


def _binary(name: str) -> str:
    """Debian keeps the server's programs under /usr/lib/postgresql/VERSION/bin, off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise PeerError(f"{name} (PostgreSQL server) is required: run scripts/setup --test")
    return found[-1]


class PostgreSQL(SqlServer):
    name = "postgres"

    def __init__(self, directory: Path, port: int = 0):
        super().__init__(directory, port, log_name="postgres.log")

    def _prepare(self) -> None:
        user, _, _ = unprivileged_ids()
        give_to_peer(self.directory)
        self._run_setup([_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
                        user=user, cwd=self.directory)

    def _command(self) -> tuple[list[str], dict]:
        user, _, _ = unprivileged_ids()
        return ([_binary("postgres"), "-D", str(self.data), "-k", str(self.directory), "-h", HOST,
                 "-p", str(self.port), "-c", "fsync=off", "-c", "max_connections=200"],
                {"user": user, "cwd": self.directory})

    def _wait_until_ready(self, timeout: float) -> None:
        """The port opens while the database is still "starting up": wait for a query to work."""
        import psycopg
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise PeerError(f"no query answered: {error}\n{tail_file(self.log_path)}") from None
            time.sleep(0.05)

    def _connect(self, database: str | None):
        import psycopg
        return psycopg.connect(host=str(self.directory), port=self.port, user=SUPERUSER,
                               dbname=database or "postgres", autocommit=True, connect_timeout=10)

    def _shut_down(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown: clients are disconnected, not waited for."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            pass


# --- the same alias rows as the MariaDB peer (tests/peers/sql_server.py alias_rows) ---------------

def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"       # standard_conforming_strings: \\ is literal


def load_aliases(server: PostgreSQL) -> None:
    values = ", ".join(f"({_sql_text(a)}, {_sql_text(g)}, {active})" for a, g, active in alias_rows())
    server.execute(f"CREATE ROLE {USER} LOGIN PASSWORD {_sql_text(PASSWORD)}", f"CREATE DATABASE {DATABASE}")
    server.execute("CREATE TABLE aliases (address TEXT NOT NULL, goto TEXT NOT NULL, active INT NOT NULL DEFAULT 1)",
                   f"INSERT INTO aliases (address, goto, active) VALUES {values}",
                   f"GRANT SELECT ON aliases TO {USER}", database=DATABASE)
