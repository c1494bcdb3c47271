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

from tests.peers import (PeerError, free_port, give_to_peer, stop_process, tail_file, unprivileged_ids,
                         wait_for_port)

HOST = "127.0.0.1"
SUPERUSER = "postgres"


def _binary(name: str) -> str:
    """Debian keeps the server's programs under /usr/lib/postgresql/VERSION/bin, off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise PeerError(f"{name} (PostgreSQL server) is required: run scripts/setup --test")
    return found[-1]


class PostgreSQL:
    def __init__(self, directory: Path, port: int = 0):
        self.directory = Path(directory)
        self.port = port or free_port(HOST)
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._initialized = False

    def _initdb(self) -> None:
        user, _, _ = unprivileged_ids()
        give_to_peer(self.directory)
        made = subprocess.run(
            [_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
             "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, user=user, cwd=self.directory)
        if made.returncode != 0:
            raise PeerError(f"initdb ({self.data}) failed with {made.returncode}:\n"
                            f"{made.stdout[-2000:]}{made.stderr[-2000:]}")
        self._initialized = True

    def start(self, timeout: float = 30.0) -> "PostgreSQL":
        if not self._initialized:
            self._initdb()
        user, _, _ = unprivileged_ids()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [_binary("postgres"), "-D", str(self.data), "-k", str(self.directory), "-h", HOST,
                 "-p", str(self.port), "-c", "fsync=off", "-c", "max_connections=200"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, user=user,
                cwd=self.directory)
        try:
            wait_for_port(HOST, self.port, timeout, process=self.process, log=self.log_path, what="postgres")
            self._wait_until_ready(timeout)
        except PeerError as error:
            self.stop()
            raise PeerError(f"postgres ({self.data}) did not start: {error}") from None
        return self

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

    def execute(self, *statements: str, database: str = "postgres") -> list[tuple]:
        """Run statements as the superuser over the unix socket; the rows of the last one."""
        import psycopg
        with psycopg.connect(host=str(self.directory), port=self.port, user=SUPERUSER, dbname=database,
                             autocommit=True, connect_timeout=10) as connection:
            rows: list[tuple] = []
            for statement in statements:
                cursor = connection.execute(statement)
                rows = cursor.fetchall() if cursor.description is not None else []
            return rows

    def stop(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown: clients are disconnected, not waited for."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        if stop_process(self.process) not in (None, 0):
            print(f"postgres stopped with status {self.process.returncode}: {tail_file(self.log_path)}")
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# --- the same alias rows as the MariaDB peer, and the session fixture ---------------------------

DATABASE = "mail"
USER = "postfix"
PASSWORD = "s3cret'pw"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"       # standard_conforming_strings: \\ is literal


def load_aliases(server: PostgreSQL) -> None:
    from tests.peers.mariadb import alias_rows
    values = ", ".join(f"({_sql_text(a)}, {_sql_text(g)}, {active})" for a, g, active in alias_rows())
    server.execute(f"CREATE ROLE {USER} LOGIN PASSWORD {_sql_text(PASSWORD)}", f"CREATE DATABASE {DATABASE}")
    server.execute("CREATE TABLE aliases (address TEXT NOT NULL, goto TEXT NOT NULL, active INT NOT NULL DEFAULT 1)",
                   f"INSERT INTO aliases (address, goto, active) VALUES {values}",
                   f"GRANT SELECT ON aliases TO {USER}", database=DATABASE)
