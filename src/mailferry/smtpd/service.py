"""One smtpd listener from master.cf, and the sessions on it.

Each session is an asyncio Protocol driving a protocol.ServerConnection:
bytes go in as they arrive, and the decisions the core asks for are made
here: relay control for RCPT, TLS for STARTTLS, and for a received message
the hand-off to cleanup, whose answer (the queue ID) is what the client
hears. Nothing is answered 250 before the queue's commit returned; a queue
failure is a 4xx. While a message is being committed the core holds
everything the client pipelined behind it.

A Protocol rather than streams: measured with bench/intake, a stream
session cost a task per connection and a future per read, and the event
loop, not the disk, was what limited intake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from mailferry import refusals
from mailferry.auth.server import Accepted, AuthSession, Challenge, Refused, SaslServer
from mailferry.config.config import Config
from mailferry.config.localdomains import local_domain_matcher
from mailferry.config.mastercf import Service
from mailferry.maillog import Log, for_service
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.protocol import replies
from mailferry.protocol import server_events as events
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings
from mailferry.cleanup.rewrite import RewriteDeferred
from mailferry.queue.store import QueueError
from mailferry.tables import TableError
from mailferry.tables.match_lists import NetworkList
from mailferry.smtpd.recipient_maps import RecipientMaps
from mailferry.smtpd.relay import ClientFacts, RelayPolicy
from mailferry.smtpd.settings import server_settings
from mailferry.smtpd.tls import TLSSetupError, TlsSettings, established_lines, server_context, tls_level
from mailferry.tlsinfo import describe

SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, closing transmission channel\r\n"


class Cleanup(Protocol):
    """Where an accepted message goes (cleanup.service.CleanupService): it
    returns once the message is durably queued, or raises QueueError."""

    async def enqueue(self, message: NewMessage, queue_id: str) -> str: ...


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    """Everything a session needs that comes from configuration: rebuilt on reload."""

    tls_context: ssl.SSLContext | None
    tls_level: str
    tls: TlsSettings
    settings: ServerSettings
    timeout: int                    # smtpd_timeout, seconds
    mynetworks: NetworkList
    relay: RelayPolicy
    recipient_maps: RecipientMaps
    auth: SaslServer | None = None  # smtpd_sasl_auth_enable

    @classmethod
    def from_config(cls, config: Config, tls_context: ssl.SSLContext | None,
                    service_name: str = "smtp") -> ServiceProfile:
        relay = RelayPolicy(config.get("smtpd_relay_restrictions"), config.get("smtpd_recipient_restrictions"),
                            local_domain_matcher(config), config.get("relay_domains"),
                            refusals.RestrictionCodes.from_config(config))
        return cls(tls_context=tls_context, tls_level=tls_level(config), tls=TlsSettings.from_config(config),
                   settings=server_settings(config, starttls=tls_context is not None),
                   timeout=config.time("smtpd_timeout"), mynetworks=NetworkList(config.get("mynetworks")),
                   relay=relay, recipient_maps=RecipientMaps.from_config(config),
                   auth=SaslServer.from_config(config, service_name))


def service_view(config: Config, service: Service) -> Config:
    """main.cf as this master.cf service sees it: with its -o overrides."""
    return config.with_overrides(service.overrides, f"master.cf, line {service.line}")


class SmtpdService:
    def __init__(self, service: Service, config: Config, tls_context: ssl.SSLContext | None,
                 cleanup: Cleanup, log: Log, new_queue_id: Callable[[], str]):
        self.service = service
        self.cleanup = cleanup
        view = service_view(config, service)
        self._main_log = log
        self.log = for_service(log, view.get("syslog_name"))
        self.new_queue_id = new_queue_id
        self.profile = ServiceProfile.from_config(view, tls_context, service.name)
        self.servers: list[asyncio.AbstractServer] = []
        self.sessions: set[Session] = set()

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        # smtpd_tls_wrappermode: the loop does the handshake before a Session hears of the
        # connection. (Starting it from connection_made loses the race with the ClientHello:
        # uvloop starts reading only after connection_made returns, undoing a pause_reading.)
        implicit = self.profile.tls_context if self.profile.tls.wrappermode else None
        for listener in sockets:
            server = await loop.create_server(lambda: Session(self, self.profile), sock=listener, ssl=implicit,
                                              ssl_handshake_timeout=self.profile.timeout if implicit else None)
            self.servers.append(server)

    def reload(self, config: Config, service: Service | None) -> None:
        if service is not None:
            self.service = service
        view = service_view(config, self.service)
        self.log = for_service(self._main_log, view.get("syslog_name"))
        try:
            tls_context = server_context(view)
        except TLSSetupError as exc:
            # Root-only keys cannot be read again once root is given up: keep the ones read at start.
            self.log.warning("smtpd", f"reload: {exc}; keeping the TLS certificate loaded at start")
            tls_context = self.profile.tls_context
        try:
            self.profile = ServiceProfile.from_config(view, tls_context, self.service.name)
        except TableError as problem:
            self.log.warning("smtpd", f"reload: {problem}; keeping the configuration loaded before")

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.shut_down()
        deadline = time.monotonic() + 30
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class Session(asyncio.Protocol):
    """One SMTP session. Every method runs on the event loop; only the
    message hand-off and the TLS handshake are asynchronous."""

    def __init__(self, service: SmtpdService, profile: ServiceProfile):
        self.service = service
        self.profile = profile
        self.log = service.log
        self.conn = ServerConnection(profile.settings)
        self.transport: asyncio.Transport | None = None
        self.queue_id = ""
        self.recipients: list[Recipient] = []
        self.mail: events.MailFrom | None = None
        self.tls_description = ""
        self.auth: AuthSession | None = None
        self.sasl_method = ""
        self.sasl_username = ""
        self._busy = False          # a commit or a TLS handshake is under way
        self._stopping = False
        self._closed = False
        self._last_input = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- the transport's callbacks
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        self.port = peer[1]
        self.address, self.name = _client_identity(peer[0])
        self.client = f"{self.name}[{self.address}]"
        self.in_mynetworks = self.profile.mynetworks.matches(self.address)
        if self.profile.auth is not None:
            local = (transport.get_extra_info("sockname") or ("",))[0]
            self.auth = self.profile.auth.session(self.address, self.client, _client_identity(local)[0])
            self.conn.auth_advertised = self.profile.auth.advertised_to(self.address)
        self.service.sessions.add(self)
        self.log.line("smtpd", f"connect from {self.client}")
        self._last_input = time.monotonic()
        self._arm_timer(self.profile.timeout)
        if self.profile.tls.wrappermode:
            self._implicit_tls_started()
            return
        early = _already_sent(transport)
        if early:
            self.conn.receive(early)  # spoken before the greeting: the core refuses that
        transport.write(self.conn.greeting())
        if early:
            self._advance()

    def data_received(self, data: bytes) -> None:
        self._last_input = time.monotonic()
        self.conn.receive(data)
        self._advance()

    def eof_received(self) -> bool:
        self.conn.receive(b"")
        self._advance()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            self._closed = True
            if self.conn.last_command not in ("QUIT",) and not self._stopping:
                self.log.line("smtpd", f"lost connection after {self.conn.last_command} from {self.client}")
            self._finish()

    # --- driving the protocol core
    def _advance(self) -> None:
        """Answer everything the core can answer now; stop at a decision that must wait."""
        conn = self.conn
        while not self._busy and not self._closed:
            event = conn.next_event()
            if event is events.NEED_DATA or event is events.PAUSED:
                break
            if event is events.CLOSED:
                # The last words (221, or a 421) go out now: a delayed write would die with the connection.
                self.transport.write(self.conn.data_to_send())
                self._close()
                return
            self._handle(event)
        self._send()
        if self._stopping and not self._busy:
            self._say_goodbye()

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if not data or self._closed:
            return
        delay = self.conn.reply_delay
        if delay:
            # smtpd_error_sleep_time: slow down a client that keeps making errors.
            self.transport.pause_reading()
            self._busy = True
            asyncio.get_running_loop().call_later(delay, self._send_delayed, data)
            return
        self.transport.write(data)

    def _send_delayed(self, data: bytes) -> None:
        self._busy = False
        if self._closed:
            return
        self.transport.write(data)
        self.transport.resume_reading()
        self._advance()

    def _handle(self, event: events.Event) -> None:
        conn = self.conn
        if isinstance(event, events.Hello):
            conn.accept()
        elif isinstance(event, events.MailFrom):
            self._mail_from(event)
        elif isinstance(event, events.RcptTo):
            self._rcpt_to(event)
        elif isinstance(event, events.MessageReceived):
            self._busy = True
            asyncio.ensure_future(self._message(event))
        elif isinstance(event, events.StartTLSRequested):
            self._start_tls()
        elif isinstance(event, events.AuthRequested):
            if self.auth is None:
                conn.refuse(replies.AUTH_NOT_ENABLED)
            else:
                self._auth_step(self.auth.begin(event.mechanism, event.initial_response,
                                                conn.auth_mechanisms_now(), conn.tls_active))
        elif isinstance(event, events.AuthResponse):
            self._auth_step(self.auth.respond(event.response))
        elif isinstance(event, events.ProtocolViolation):
            detail = f": {event.detail}" if event.detail else ""
            self.log.line("smtpd", f"{event.reason} after {event.after} from {self.client}{detail}")
        elif isinstance(event, events.ConnectionLost):
            self.log.line("smtpd", f"lost connection after {event.after} from {self.client}")
            self._closed = True
            self._finish()
            self.transport.close()

    def _auth_step(self, step) -> None:
        if isinstance(step, Refused):
            self._auth_refused(step)
        elif isinstance(step, Challenge):
            self.conn.auth_challenge(step.text)
        else:
            self._busy = True   # the backend may take a while: hold what the client pipelined
            asyncio.ensure_future(self._auth_verified(step))

    async def _auth_verified(self, verification) -> None:
        try:
            outcome = await verification.run()
        finally:
            self._busy = False
        if self._closed:
            return
        if isinstance(outcome, Accepted):
            self.sasl_method, self.sasl_username = outcome.method, outcome.username
            self.conn.accept()
        else:
            self._auth_refused(outcome)
        self._advance()

    def _auth_refused(self, refused: Refused) -> None:
        if refused.warning:
            self.log.warning("smtpd", refused.warning)
        self.conn.refuse(refused.refusal.reply)

    def _mail_from(self, event: events.MailFrom) -> None:
        if self.profile.tls_level == "encrypt" and not self.conn.tls_active:
            self.conn.refuse(refusals.STARTTLS_REQUIRED.reply)
            return
        self.mail = event
        self.recipients = []
        self.queue_id = ""
        self.conn.accept()

    def _rcpt_to(self, event: events.RcptTo) -> None:
        address = event.path.address
        facts = ClientFacts(self.address, self.in_mynetworks, self.sasl_username)
        refusal = self.profile.relay.check_recipient(facts, address, event.path.is_routed)
        if refusal is None and self.profile.recipient_maps.enabled:
            # Table lookups may wait (LDAP): the core holds what the client pipelined meanwhile.
            self._busy = True
            asyncio.ensure_future(self._check_recipient_maps(event))
            return
        self._decide_recipient(event, refusal)

    async def _check_recipient_maps(self, event: events.RcptTo) -> None:
        try:
            refusal = await self.profile.recipient_maps.check(event.path.address)
        finally:
            self._busy = False
        if not self._closed:
            self._decide_recipient(event, refusal)
            self._advance()

    def _decide_recipient(self, event: events.RcptTo, refusal: refusals.Refusal | None) -> None:
        address = event.path.address
        if refusal is not None:
            self._log_reject(event, refusal.reply)
            if refusal.warning:
                self.log.warning("smtpd", refusal.warning)
            self.conn.refuse(refusal.reply)
            return
        if not self.queue_id:
            # Postfix opens the queue file at the first accepted recipient (smtpd_delay_open_until_valid_rcpt).
            self.queue_id = self.service.new_queue_id()
            self.log.line("smtpd", f"{self.queue_id}: client={self.client}{self._sasl_log_fields()}")
        self.recipients.append(Recipient(address, orcpt=event.params.orcpt, notify=event.params.notify))
        self.conn.accept()

    def _log_reject(self, event: events.RcptTo, reply: replies.Reply) -> None:
        sender = self.mail.path.address if self.mail else ""
        self.log.line("smtpd", (
            f"NOQUEUE: reject: RCPT from {self.client}: {reply}; "
            f"from=<{sender}> to=<{event.path.address}> proto={'ESMTP' if self.conn.esmtp else 'SMTP'} "
            f"helo=<{self.conn.helo_name or ''}>"))

    async def _message(self, event: events.MessageReceived) -> None:
        mail = self.mail
        message = NewMessage(
            sender=mail.path.address, recipients=self.recipients, content=event.content,
            client=ClientInfo(self.name, self.address, self.port, self.conn.helo_name or "",
                              self._protocol(), self.tls_description, self.sasl_username),
            origin="smtp", dsn_ret=mail.params.ret, dsn_envid=mail.params.envid,
            body_type=mail.params.body, smtputf8=mail.params.smtputf8, arrival_time=time.time())
        queue_id, self.queue_id, self.recipients = self.queue_id, "", []
        try:
            await self.service.cleanup.enqueue(message, queue_id)
        except RewriteDeferred as problem:
            # cleanup logged its warning, as Postfix's does; smtpd only answers.
            self.conn.refuse(refusals.rewrite_failure(problem.enhanced_status, problem.reply_text,
                                                      str(problem)).reply)
        except QueueError as problem:
            refusal = refusals.queue_failure(problem)
            self.log.warning("cleanup", f"{queue_id}: {refusal.log_reason}")
            self.conn.refuse(refusal.reply)
        else:
            self.conn.accept_message(queue_id)
        finally:
            self._busy = False
        self._advance()

    def _protocol(self) -> str:
        """RFC 3848's names, as Postfix writes them in Received:: ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.conn.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.conn.tls_active else "") + ("A" if self.sasl_username else "")

    def _sasl_log_fields(self) -> str:
        """Postfix's `, sasl_method=PLAIN, sasl_username=user1` on the client= line."""
        if not self.sasl_username:
            return ""
        return f", sasl_method={self.sasl_method}, sasl_username={self.sasl_username}"

    def _start_tls(self) -> None:
        if self.profile.tls_context is None:
            self.conn.refuse(refusals.TLS_UNAVAILABLE.reply)
            return
        self.conn.accept()
        self._send()
        self._busy = True
        asyncio.ensure_future(self._handshake())

    def _implicit_tls_started(self) -> None:
        """smtpd_tls_wrappermode (port 465): the handshake is done, the greeting comes now."""
        if self.profile.tls_context is None:
            # Postfix's words: without a certificate there is nothing to speak TLS with.
            self.log.warning("smtpd", f"Wrapper-mode request dropped from {self.client} for service "
                                      f"{self.service.service.name}. TLS context initialization failed. "
                                      "For details see earlier warnings in your logs.")
            self._close()
            return
        self._tls_established(self.transport.get_extra_info("ssl_object"))
        self.conn.tls_active = True
        self.transport.write(self.conn.greeting())

    def _tls_established(self, ssl_object) -> None:
        self.tls_description = describe(ssl_object)
        for line in established_lines(self.client, ssl_object, self.profile.tls):
            self.log.line("smtpd", line)

    async def _handshake(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.profile.tls_context,
                                             server_side=True, ssl_handshake_timeout=self.profile.timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.log.line("smtpd", f"SSL_accept error from {self.client}: {exc}")
            self._close()
            return
        if transport is None:
            self._close()
            return
        self.transport = transport
        self._tls_established(transport.get_extra_info("ssl_object"))
        self.conn.tls_started()
        self.sasl_method = self.sasl_username = ""   # as the core forgets everything said in plaintext
        self._busy = False
        self._advance()

    # --- time-outs and the end
    def _arm_timer(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_timeout)

    def _check_timeout(self) -> None:
        """One timer per session, re-armed lazily: cheaper than a timer per read."""
        if self._closed:
            return
        idle = time.monotonic() - self._last_input
        if idle < self.profile.timeout or self._busy:
            self._arm_timer(max(self.profile.timeout - idle, 1.0))
            return
        self.log.line("smtpd", f"timeout after {self.conn.last_command} from {self.client}")
        self.transport.write(self.conn.timeout_reply())
        self._close()

    def shut_down(self) -> None:
        """Stop: an idle session hears 421 now; a busy one (say, committing a
        message) finishes that first and hears it right after."""
        self._stopping = True
        if not self._busy:
            self._say_goodbye()

    def _say_goodbye(self) -> None:
        if not self._closed:
            self.transport.write(SHUTDOWN_REPLY)
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finish()
        self.transport.close()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.service.sessions.discard(self)
        self.log.line("smtpd", f"disconnect from {self.client} {self.conn.disconnect_summary()}")


def _already_sent(transport: asyncio.Transport) -> bytes:
    """What the client sent before we could greet it (a spambot that does not
    wait), read straight from the socket before the event loop starts reading."""
    fileno = transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fileno)) as raw:
        try:
            return raw.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return b""


@lru_cache(maxsize=1024)
def _client_identity(address: str) -> tuple[str, str]:
    """(address, name): `::ffff:127.0.0.1` is shown as `127.0.0.1`, as Postfix shows IPv4
    clients on a dual-stack socket; loopback clients are `localhost`, others `unknown`
    until the DNS resolver lands. Cached: parsing an address costs more than the lookup."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address, "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), "localhost" if ip.is_loopback else "unknown"
