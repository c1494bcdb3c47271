"""A scripted SMTP server on 127.0.0.1 for the client's tests, and what those tests share.

    peer = await ScriptedPeer({"RCPT": "550 5.1.1 no such user"}).start()
    ... deliver to peer.nexthop ...
    peer.sessions[0].commands  -> ["EHLO client.test", "MAIL FROM:<...>", "RCPT TO:<...>", ...]
    peer.events                -> [("connect", 1), ("MAIL", 1), (".", 1), ("closed", 1), ...] in order

A reply is the text to send (several lines joined with CRLF), STALL (never answer: the
client's timeout must end the session), HANGUP (close without a word), or a function of
(session, command line) that returns one of those, or a coroutine that does (a gate).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.delivery.dns import Target
from mailferry.delivery.settings import ClientSettings
from mailferry.delivery.smtp import DeliveryJob
from mailferry.message import QueuedMessage, Recipient

STALL = None
HANGUP = "<hang up>"

DEFAULT_REPLIES = {
    "GREETING": "220 peer.test ESMTP scripted",
    "EHLO": "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES",
    "LHLO": "250-peer.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES",
    "HELO": "250 peer.test",
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    ".": "250 2.0.0 Ok: queued as SCRIPTED",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
}


@dataclass
class Session:
    number: int                     # 1 for the first connection the peer accepted
    commands: list[str] = field(default_factory=list)   # as received; "." for the end of DATA
    messages: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def verbs(self) -> list[str]:
        return [command.split(" ", 1)[0].split(":", 1)[0].upper() for command in self.commands]


Reply = str | None | Callable


class ScriptedPeer:
    def __init__(self, replies: dict[str, Reply] | None = None, *, port: int = 0):
        """`port`: 0 for any free one. A "CONTENT" reply of STALL stops reading after 354."""
        self.replies = {**DEFAULT_REPLIES, **(replies or {})}
        self.sessions: list[Session] = []
        self.events: list[tuple[str, int]] = []
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = port

    async def start(self) -> ScriptedPeer:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def nexthop(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> ScriptedPeer:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # --- what happened, and waiting for it

    def record(self, what: str, session: Session) -> None:
        self.events.append((what, session.number))
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds, re-checking whenever the peer records something."""
        async with asyncio.timeout(timeout):
            while not predicate():
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), 0.05)   # also re-check state the peer does not record
                except TimeoutError:
                    pass

    def seen(self, what: str, number: int | None = None) -> int:
        return sum(1 for event, session in self.events if event == what and number in (None, session))

    # --- the server

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        session = Session(len(self.sessions) + 1)
        self.sessions.append(session)
        self.record("connect", session)
        try:
            await self._converse(session, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass      # close(): end quietly (the stream server logs a handler that ends cancelled)
        finally:
            writer.close()
            session.closed.set()
            self.record("closed", session)
            self._tasks.discard(task)

    async def _converse(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._answer("GREETING", session, "", reader, writer):
            return
        while True:
            line = await reader.readline()
            if not line:
                return
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            session.commands.append(command)
            verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
            self.record(verb, session)
            sent = await self._answer(verb, session, command, reader, writer)
            if not sent or verb == "QUIT":
                return
            if verb == "DATA" and sent.startswith("354"):
                if self.replies.get("CONTENT", "read") is STALL:
                    await asyncio.Event().wait()      # neither read nor answer, until the peer is closed
                content = b""
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    content += line
                session.messages.append(content)
                session.commands.append(".")
                self.record(".", session)
                if not await self._answer(".", session, ".", reader, writer):
                    return

    async def _answer(self, verb: str, session: Session, command: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> str | None:
        """The reply sent, or None when the session ends here (stalled until the client left, or hung up)."""
        reply = self.replies.get(verb, "502 5.5.2 Error: command not recognized")
        if callable(reply):
            reply = reply(session, command)
            if inspect.isawaitable(reply):
                reply = await reply
        if reply is STALL:
            while await reader.read(65536):    # say nothing; read until the client gives up
                pass
            return None
        if reply == HANGUP:
            return None
        self.record(f"answered {verb}", session)
        writer.write(reply.encode() + b"\r\n")
        await writer.drain()
        return reply


# --- the client's side: settings, a resolver, a job

def client_settings(**changes) -> ClientSettings:
    """Postfix's defaults (an empty main.cf), with `changes`. A `reply_timeout` given alone is
    the deadline of every reply (MAIL, RCPT, DATA, end of data), not only of RSET."""
    config = Config("/nonexistent", parse_main_cf("", "/nonexistent/main.cf"))
    if "reply_timeout" in changes:
        changes = {"mail_timeout": None, "rcpt_timeout": None, "data_init_timeout": None,
                   "data_done_timeout": None, **changes}
    return replace(ClientSettings.from_config(config, "smtp", lmtp=False), **changes)


class LoopbackResolver:
    """Every next hop is one server, mx.test at 127.0.0.1 (the port from the next hop)."""

    def __init__(self):
        self.asked: list[str] = []

    async def targets(self, host: str, port: int | None, use_mx: bool, lookup=None) -> list[Target]:
        self.asked.append(host)
        return [Target("mx.test", "127.0.0.1", port, None)]

    async def dnssec_probe(self, probe: str) -> list[str]:
        return []


class FakeClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_job(nexthop: str, *addresses: str, content: bytes = b"Subject: test\r\n\r\nhello\r\n",
             sender: str = "sender@example.test") -> DeliveryJob:
    recipients = [Recipient(address) for address in addresses or ("rcpt@example.test",)]
    message = QueuedMessage("4SCRIPTED", "active", sender, recipients, len(content), 0.0)
    return DeliveryJob(message, content, recipients, nexthop)
