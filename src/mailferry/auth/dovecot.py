"""smtpd_sasl_type = dovecot: a client of Dovecot's authentication protocol (version 1).

    smtpd_sasl_path = private/auth          a UNIX socket, relative to queue_directory
    smtpd_sasl_path = /run/dovecot/auth-client
    smtpd_sasl_path = inet:127.0.0.1:12345

The dialogue (Dovecot's "Authentication protocol", as Postfix's xsasl_dovecot_server speaks it):

    C: VERSION 1 2 / CPID <pid>
    S: VERSION 1 2 / MECH PLAIN plaintext / ... / SPID / CUID / COOKIE / DONE
    C: AUTH <id> PLAIN service=smtp nologin lip=.. rip=.. [secured] resp=<base64>
    S: OK <id> user=<name> | FAIL <id> [reason=..] [temp] [user=..] | CONT <id> <base64>

mailferry runs the mechanism itself (mechanisms.py) and hands Dovecot the credentials as one
PLAIN response, whichever of PLAIN or LOGIN the client used: one mechanism implementation, and
one request a login. One connection per smtpd service carries every session's requests, told
apart by request id; it is opened on first use and again after it is lost.

Differences from Postfix: a FAIL that Dovecot marks `temp` (its passdb is down) is a 454, where
Postfix says 535; a Dovecot that cannot be reached is a 454, as in Postfix.
"""

from __future__ import annotations

import asyncio
import os

from mailferry.auth.mechanisms import PLAIN, Credentials
from mailferry.auth.verdict import FAIL, OK, TEMPFAIL, ClientContext, Verdict

HANDSHAKE_TIMEOUT = 10.0
# How long to wait for Dovecot's answer: its auth_failure_delay (2 s) plus a slow passdb.
ANSWER_TIMEOUT = 60.0
CANNOT_CONNECT = "Can't connect to authentication server"
CONNECTION_LOST = "Connection lost to authentication server"


class DovecotProtocolError(Exception):
    pass


def parse_path(path: str, queue_directory: str) -> tuple[str, str | tuple[str, int]]:
    """smtpd_sasl_path -> ("unix", path) or ("inet", (host, port))."""
    if path.startswith("inet:"):
        host, _, port = path[len("inet:"):].rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"smtpd_sasl_path = {path}: expected inet:host:port")
        return "inet", (host, int(port))
    if path.startswith("unix:"):
        path = path[len("unix:"):]
    if not path:
        raise ValueError("smtpd_sasl_path is empty: name Dovecot's auth socket (private/auth, or inet:host:port)")
    return "unix", path if path.startswith("/") else os.path.join(queue_directory, path)


class DovecotBackend:
    name = "dovecot"
    failure_delay = 0.0

    def __init__(self, sasl_path: str, queue_directory: str):
        self.kind, self.target = parse_path(sasl_path, queue_directory)
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    def describe(self) -> str:
        return f"inet:{self.target[0]}:{self.target[1]}" if self.kind == "inet" else str(self.target)

    async def verify(self, credentials: Credentials, client: ClientContext) -> Verdict:
        if any(char in credentials.username + credentials.authzid for char in "\t\n\r"):
            return Verdict(FAIL, reason="invalid characters in the username")
        for attempt in range(2):
            try:
                connection = await self._connected()
            except (OSError, asyncio.TimeoutError, DovecotProtocolError) as error:
                return Verdict(TEMPFAIL, reason=f"{CANNOT_CONNECT}: {_describe(error)}")
            try:
                return await connection.authenticate(credentials, client)
            except ConnectionError:
                # Dovecot restarted since the connection was made: once more on a new one, as Postfix.
                if attempt:
                    return Verdict(TEMPFAIL, reason=CONNECTION_LOST)
        return Verdict(TEMPFAIL, reason=CONNECTION_LOST)

    async def _connected(self) -> _Connection:
        if self._connection is not None and self._connection.alive:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None or not self._connection.alive:
                self._connection = await asyncio.wait_for(self._open(), HANDSHAKE_TIMEOUT)
            return self._connection

    async def _open(self) -> _Connection:
        if self.kind == "inet":
            reader, writer = await asyncio.open_connection(*self.target)
        else:
            reader, writer = await asyncio.open_unix_connection(self.target)
        connection = _Connection(reader, writer)
        try:
            await connection.handshake()
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.mechanisms: dict[str, set[str]] = {}
        self.alive = True
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Verdict]] = {}
        self._reader_task: asyncio.Task | None = None

    async def handshake(self) -> None:
        self.writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode("ascii"))
        await self.writer.drain()
        while True:
            line = await self.reader.readline()
            if not line:
                raise DovecotProtocolError("the auth server closed the connection during the handshake")
            fields = line.decode("utf-8", "replace").rstrip("\n").split("\t")
            if fields[0] == "VERSION" and (len(fields) < 2 or fields[1] != "1"):
                raise DovecotProtocolError(f"unsupported auth protocol version {fields[1:]}")
            if fields[0] == "MECH" and len(fields) > 1:
                self.mechanisms[fields[1].upper()] = set(fields[2:])
            if fields[0] == "DONE":
                break
        self._reader_task = asyncio.ensure_future(self._read_answers())

    async def authenticate(self, credentials: Credentials, client: ClientContext) -> Verdict:
        if PLAIN not in self.mechanisms:
            return Verdict(TEMPFAIL, reason="the Dovecot auth server does not offer PLAIN (auth_mechanisms)")
        self._next_id += 1
        request_id = self._next_id
        fields = ["AUTH", str(request_id), PLAIN, f"service={client.service}", "nologin",
                  f"lip={client.local_address}", f"rip={client.address}"]
        if client.tls_active:
            fields.append("secured")
        fields.append(f"resp={credentials.plain_response()}")
        answer: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self.writer.write(("\t".join(fields) + "\n").encode("utf-8"))
            await self.writer.drain()
            return await asyncio.wait_for(asyncio.shield(answer), ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            return Verdict(TEMPFAIL, reason=f"no answer from the authentication server in {ANSWER_TIMEOUT:g} s")
        finally:
            self._waiting.pop(request_id, None)

    async def _read_answers(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                self._answer(line.decode("utf-8", "replace").rstrip("\n").split("\t"))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.alive = False
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(ConnectionError(CONNECTION_LOST))
            self.writer.close()

    def _answer(self, fields: list[str]) -> None:
        if len(fields) < 2 or not fields[1].isdigit():
            return
        waiting = self._waiting.get(int(fields[1]))
        if waiting is None or waiting.done():
            return
        waiting.set_result(_verdict(fields[0], fields[2:]))

    def close(self) -> None:
        self.alive = False
        if self._reader_task is not None:
            self._reader_task.cancel()
        self.writer.close()


def _verdict(command: str, arguments: list[str]) -> Verdict:
    values = dict(argument.partition("=")[::2] for argument in arguments)
    # A user name may be UTF-8 (it is matched against smtpd_sender_login_maps); the reason is
    # sent to the client in a reply, which must be ASCII.
    user = "".join(char if char.isprintable() else "?" for char in values.get("user", ""))
    reason = _printable(values.get("reason", ""))
    if command == "OK":
        if not user:
            # Dovecot always names the user it logged in: an OK without one is a broken
            # server, not a wrong password, so the client must try again rather than give up.
            return Verdict(TEMPFAIL, reason="Authentication backend error: OK without a user")
        return Verdict(OK, username=user)
    if command == "FAIL":
        outcome = TEMPFAIL if "temp" in values else FAIL
        return Verdict(outcome, username=user, reason=reason)
    # CONT (PLAIN never needs one) or anything else is not Dovecot's protocol: the server is at
    # fault, not the client's credentials.
    return Verdict(TEMPFAIL, reason=f"Authentication backend error: unexpected answer {_printable(command[:20])}")


def _printable(text: str) -> str:
    """What the auth server sent, fit for a reply and a log line: printable ASCII only (a reply
    carries no 8-bit text unless the client asked for SMTPUTF8)."""
    return "".join(char if char.isprintable() and char.isascii() else "?" for char in text)


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer in {HANDSHAKE_TIMEOUT:g} s"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
