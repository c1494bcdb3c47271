"""What the private SQL servers (tests/peers/mariadb.py, tests/peers/postgresql.py) share: a
data directory made once, a server in the foreground whose pid the fixture owns, on 127.0.0.1
and a free port, stop()/start() on the same port and data for failover tests; and the rows both
hold (the seed's alias routing).

A server fills in its own name, `_prepare()` (mariadb-install-db, initdb), `_command()`,
`_connect()` for `execute()`, and where it differs `_wait_until_ready()` and `_shut_down()`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.peers import PeerError, free_port, stop_process, tail_file, wait_for_port

HOST = "127.0.0.1"


class SqlServer:
    name = "the SQL server"   # the server program, for messages
    stop_timeout = 10.0       # seconds stop() gives the server after SIGTERM before SIGKILL

    def __init__(self, directory: Path, port: int = 0, log_name: str = "server.log",
                 output_name: str | None = None):
        """`log_name`: the server's own log in `directory`; `output_name`: where its standard
        output and error go (the log itself when None)."""
        self.directory = Path(directory)
        self.port = port or free_port(HOST)
        self.data = self.directory / "data"
        self.log_path = self.directory / log_name
        self.output_path = self.directory / output_name if output_name else self.log_path
        self.process: subprocess.Popen | None = None
        self._prepared = False

    # --- what each server fills in

    def _prepare(self) -> None:
        """Make the data directory (runs once, before the first start)."""
        raise NotImplementedError

    def _command(self) -> tuple[list[str], dict]:
        """The server's command line and Popen's further options (user, cwd)."""
        raise NotImplementedError

    def _connect(self, database: str | None):
        """A DB-API connection as the superuser over the unix socket, in autocommit."""
        raise NotImplementedError

    def _wait_until_ready(self, timeout: float) -> None:
        """After the port opened: wait until queries are answered (nothing more by default)."""

    def _shut_down(self) -> None:
        """Before stop()'s SIGTERM: the server's own quicker shutdown, if it has one."""

    # --- shared

    def _run_setup(self, command: list[str], **options) -> None:
        """Run one step of _prepare(); PeerError with its output if it fails."""
        done = subprocess.run(command, capture_output=True, text=True, **options)
        if done.returncode != 0:
            raise PeerError(f"{Path(command[0]).name} ({self.data}) failed with {done.returncode}:\n"
                            f"{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self, timeout: float = 30.0):
        if not self._prepared:
            self._prepare()
            self._prepared = True
        command, options = self._command()
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                            stderr=subprocess.STDOUT, **options)
        try:
            wait_for_port(HOST, self.port, timeout, process=self.process, log=self.log_path, what=self.name)
            self._wait_until_ready(timeout)
        except PeerError as error:
            self.stop()
            raise PeerError(f"{self.name} ({self.data}) did not start: {error}") from None
        return self

    def execute(self, *statements: str, database: str | None = None) -> list[tuple]:
        """Run statements as the superuser over the unix socket; the rows of the last one."""
        connection = self._connect(database)
        try:
            with connection.cursor() as cursor:
                rows: list[tuple] = []
                for statement in statements:
                    cursor.execute(statement)
                    rows = list(cursor.fetchall()) if cursor.description is not None else []
                return rows
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._shut_down()
        if stop_process(self.process, timeout=self.stop_timeout) not in (None, 0):
            print(f"{self.name} stopped with status {self.process.returncode}: {tail_file(self.log_path)}")
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# --- the rows both servers hold ------------------------------------------------------------------

DATABASE = "mail"
USER = "postfix"
PASSWORD = "s3cret'pw"     # a quote in it: the driver must not splice it either


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
