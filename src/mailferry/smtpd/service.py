"""One smtpd listener from master.cf, and the sessions on it.

Each session is an asyncio Protocol driving a protocol.ServerConnection:
bytes go in as they arrive, and the decisions the core asks for are made
here: the restrictions (policy/, Postfix's smtpd_check) at connect, HELO,
MAIL, RCPT, DATA and end of data, TLS for STARTTLS, and for a received
message the hand-off to cleanup, whose answer (the queue ID) is what the client
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
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from mailferry import metrics
from mailferry import refusals
from mailferry.anvil.limits import ClientLimits
from mailferry.auth.server import Accepted, AuthSession, Challenge, Refused, SaslServer
from mailferry.config.config import Config, ConfigValueError
from mailferry.config.mastercf import Service
from mailferry.maillog import Log, for_service
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.protocol import replies
from mailferry.protocol.replies import Reply
from mailferry.protocol import server_events as events
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings
from mailferry.cleanup.rewrite import RewriteDeferred
from mailferry.cleanup.service import ContentRefused
from mailferry.queue.store import QueueError
from mailferry.tables import TableError
from mailferry.tables.match_lists import NetworkList
from mailferry.smtpd.recipient_maps import RecipientMaps
from mailferry.policy.client_name import ClientName, client_name, hosts_file_name
from mailferry.policy.dns import DnsClient
from mailferry.policy.engine import Engine
from mailferry.policy.facts import NAME_UNKNOWN, UNKNOWN, SessionFacts
from mailferry.policy.session import SessionPolicy
from mailferry.policy.state import Note
from mailferry.policy.settings import PolicySettings
from mailferry.smtpd.milters import ServiceMilters, SessionMilters, service_milters
from mailferry.milter.session import MilterSession
from mailferry.smtpd.queue_space import QueueSpace
from mailferry.smtpd.client_limits import SessionLimits
from mailferry.smtpd.listener import Listener
from mailferry.smtpd.settings import server_settings
from mailferry.smtpd import transcript
from mailferry.smtpd.debug_peer import DebugPeers, PeerChat
from mailferry.smtpd.transcript import TranscriptSettings
from mailferry.smtpd.tls import TLSSetupError, TlsSettings, established_lines, server_context, tls_level
from mailferry.tlsinfo import describe

MINIMUM_BACKLOG = 1024
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, closing transmission channel\r\n"
# Unread input a session holds while a decision is pending (a lookup, AUTH, the commit); past it,
# reading stops and the rest waits in the kernel (see Session._hold_input).
READ_AHEAD_LIMIT = 256 * 1024


class Cleanup(Protocol):
    """Where an accepted message goes (cleanup.service.CleanupService): it
    returns once the message is durably queued, or raises QueueError."""

    async def enqueue(self, message: NewMessage, queue_id: str, *,
                      milters: MilterSession | None = None) -> str: ...


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    """Everything a session needs that comes from configuration: rebuilt on reload."""

    tls_context: ssl.SSLContext | None
    tls_level: str
    tls: TlsSettings
    settings: ServerSettings
    timeout: int                    # smtpd_timeout, seconds
    per_record_deadline: bool       # smtpd_per_request_deadline (formerly smtpd_per_record_deadline)
    mynetworks: NetworkList
    policy: Engine                  # the restrictions (policy/)
    dns: DnsClient
    peername_lookup: bool           # smtpd_peername_lookup
    limits: ClientLimits            # smtpd_client_*_limit (anvil/)
    auth: SaslServer | None = None  # smtpd_sasl_auth_enable
    content_filter: str = ""        # content_filter as this service sees it (-o content_filter=)
    receive_overrides: frozenset[str] = frozenset()   # receive_override_options, for cleanup
    milters: ServiceMilters | None = None   # smtpd_milters as this service sees it (smtpd/milters.py)
    queue_space: QueueSpace | None = None   # queue_minfree and message_size_limit at MAIL FROM
    transcript: TranscriptSettings | None = None   # notify_classes: the postmaster's transcript
    debug_peers: DebugPeers | None = None   # debug_peer_list, debug_peer_level (smtpd/debug_peer.py)

    @classmethod
    def from_config(cls, config: Config, tls_context: ssl.SSLContext | None,
                    service_name: str = "smtp") -> ServiceProfile:
        dns = DnsClient.from_environment()
        policy = Engine(PolicySettings.from_config(config), dns, RecipientMaps.from_config(config))
        settings = server_settings(config, starttls=tls_context is not None)
        milters = service_milters(config)
        if policy.needs_data_stage or milters is not None:
            settings = replace(settings, data_decision=True)
        return cls(tls_context=tls_context, tls_level=tls_level(config), tls=TlsSettings.from_config(config),
                   settings=settings,
                   timeout=config.time("smtpd_timeout"),
                   per_record_deadline=config.boolean("smtpd_per_request_deadline"),
                   mynetworks=NetworkList(config.get("mynetworks")),
                   policy=policy, dns=dns, peername_lookup=config.boolean("smtpd_peername_lookup"),
                   limits=ClientLimits.from_config(config, service_name),
                   auth=SaslServer.from_config(config, service_name),
                   content_filter=config.get("content_filter").strip(), milters=milters,
                   receive_overrides=frozenset(config.list("receive_override_options")),
                   queue_space=QueueSpace(config.get("queue_directory"), config.size("queue_minfree"),
                                          config.size("message_size_limit")),
                   transcript=_transcript_settings(config), debug_peers=DebugPeers.from_config(config))


def _transcript_settings(config: Config) -> TranscriptSettings | None:
    settings = TranscriptSettings.from_config(config)
    return settings if settings.classes else None


def service_view(config: Config, service: Service) -> Config:
    """main.cf as this master.cf service sees it: with its -o overrides."""
    return config.with_overrides(service.overrides, f"master.cf, line {service.line}")


def listen_backlog(service: Service, config: Config) -> int:
    """The listen queue: as Postfix's master sizes it, the larger of the service's process
    limit and default_process_limit, but never below MINIMUM_BACKLOG, since one of our
    processes serves many sessions (the kernel caps it at net.core.somaxconn). Measured
    with bench/connections: at asyncio's default of 100, 1,000 clients connecting at once
    overflowed it, and a client whose handshake the kernel then dropped waited for a
    greeting that never came."""
    return max(service.maxproc or 0, config.integer("default_process_limit"), MINIMUM_BACKLOG)


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
        self.backlog = listen_backlog(service, view)
        self.listeners: list[Listener] = []
        self.sessions: set[Session] = set()

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        # smtpd_tls_wrappermode: the loop does the handshake before a Session hears of the
        # connection. (Starting it from connection_made loses the race with the ClientHello:
        # uvloop starts reading only after connection_made returns, undoing a pause_reading.)
        implicit = self.profile.tls_context if self.profile.tls.wrappermode else None
        for sock in sockets:
            listener = Listener(sock, lambda: Session(self, self.profile),
                                lambda text: self.log.warning("smtpd", text), implicit,
                                self.profile.timeout if implicit else None, backlog=self.backlog)
            await listener.start()
            self.listeners.append(listener)

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
        except (TableError, ConfigValueError) as problem:
            self.log.warning("smtpd", f"reload: {problem}; keeping the configuration loaded before")

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
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
        self.access_denied: refusals.Refusal | None = None   # client restrictions refused at connect
        self.auth: AuthSession | None = None    # made at the first AUTH (auth/)
        self.milters: SessionMilters | None = None   # smtpd_milters (smtpd/milters.py)
        self._greeted = False
        self._early = b""
        self._busy = False          # a commit or a TLS handshake is under way
        self._input_held = False    # reading paused by _hold_input
        self._stopping = False
        self._closed = False
        self._last_input = 0.0
        self._timer: asyncio.TimerHandle | None = None
        if profile.transcript is not None:
            self.conn.transcript = []   # Postfix's session history, for the postmaster (smtpd/transcript.py)

    # --- the transport's callbacks
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        server = transport.get_extra_info("sockname") or ("", 0)
        self.port = peer[1]
        self.address = _client_address(peer[0])
        self.name = UNKNOWN
        self.client = f"{self.name}[{self.address}]"
        self.in_mynetworks = self.profile.mynetworks.matches(self.address)
        self.limits = SessionLimits(self.profile.limits, self.profile.settings.hostname, self.address)
        # What the restrictions read; the auth helper sets sasl_method/sasl_username here after AUTH.
        self.facts = SessionFacts(self.address, self.port, server_address=_client_address(str(server[0])),
                                  server_port=server[1] if len(server) > 1 else 0, in_mynetworks=self.in_mynetworks)
        self.policy = SessionPolicy(self.profile.policy, self.facts)
        if self.profile.auth is not None:
            self.conn.auth_advertised = self.profile.auth.advertised_to(self.address)
        self.service.sessions.add(self)
        metrics.connection_opened(self.service.service.name)
        self._last_input = time.monotonic()
        self._arm_timer(self.profile.timeout)
        if self.profile.tls.wrappermode and self.profile.tls_context is None:
            self._drop_wrapper_mode()
            return
        # Read now: the event loop may start reading as soon as this returns.
        self._early = self._read_early(transport)
        known = hosts_file_name(self.address)
        if known is not None or not self.profile.peername_lookup:
            self._identified(known or ClientName(UNKNOWN, NAME_UNKNOWN, UNKNOWN, NAME_UNKNOWN))
            return
        self._await_before_greeting(self._look_up_name())

    def _await_before_greeting(self, work) -> None:
        """Nothing is read or answered until `work` is done (the name lookup, connect restrictions)."""
        self._busy = True
        self.transport.pause_reading()
        asyncio.ensure_future(work).add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future) -> None:
        """A bug in a session step must show in the log, not hang the client."""
        if task.cancelled() or task.exception() is None:
            return
        problem = task.exception()
        self.log.warning("smtpd", f"{self.client}: internal error: {type(problem).__name__}: {problem}")
        if not self._closed:
            self.transport.write(SHUTDOWN_REPLY)
            self._note_refusal(Reply(421, "4.3.2", f"internal error: {type(problem).__name__}"))
            self._close()

    async def _look_up_name(self) -> None:
        identity = await client_name(self.profile.dns, self.address)
        if identity.warning:
            self.log.warning("smtpd", identity.warning)
        self._busy = False
        if self._closed:
            return
        self.transport.resume_reading()
        self._identified(identity)

    def _identified(self, identity: ClientName) -> None:
        facts = self.facts
        facts.client_name, facts.client_name_status = identity.name, identity.name_status
        facts.reverse_client_name, facts.reverse_name_status = identity.reverse_name, identity.reverse_status
        self.name = identity.name
        self.client = f"{self.name}[{self.address}]"
        self.log.line("smtpd", f"connect from {self.client}")
        debug_peers = self.profile.debug_peers
        if debug_peers is not None and debug_peers.matches(self.name, self.address):
            self.conn.transcript = PeerChat(self.log, self.client, keep=self.profile.transcript is not None)
        refusal = self.limits.connect(self.client)
        if refusal is not None:
            self._end_with(refusal)
            return
        if self.policy.checks_connect or self.profile.milters is not None:
            self._await_before_greeting(self._check_connect())
            return
        self._greet(None)

    async def _check_connect(self) -> None:
        refusal = await self.policy.connect() if self.policy.checks_connect else None
        milter_greeting = None
        if refusal is None and self.profile.milters is not None:
            milter_greeting = await self._connect_milters(self.profile.milters)
        self._busy = False
        if self._closed:
            return
        self.transport.resume_reading()
        self._log_policy_notes()
        self._greet(refusal, milter_greeting)

    async def _connect_milters(self, milters: ServiceMilters) -> refusals.Refusal | None:
        settings = await milters.for_client(self.address, lambda text: self.log.warning("smtpd", text))
        if settings is None or self._closed:
            return None
        self.milters = SessionMilters(settings, self, self.log, self.profile.settings.hostname)
        return await self.milters.connect()

    def _greet(self, refusal: refusals.Refusal | None, milter_greeting: refusals.Refusal | None = None) -> None:
        """The banner; with smtpd_delay_reject = no and a client refused, the refusal
        instead, and every command but QUIT then gets Postfix's 503 (access_denied). A milter
        that refused the connection gets Postfix's 554 (or 421) greeting; its reply then
        answers the commands (smtpd/milters.py)."""
        transport = self.transport
        early, self._early = self._early + self._read_early(transport), b""
        self._greeted = True
        if self.profile.tls.wrappermode:
            # smtpd_tls_wrappermode (port 465): the loop finished the handshake before
            # connection_made; TLS is on before the greeting.
            self._tls_established(transport.get_extra_info("ssl_object"))
            self.conn.tls_active = True
        if early:
            self.conn.receive(early)  # spoken before the greeting: the core refuses that
        greeting = self.conn.greeting()
        if refusal is not None:
            self.access_denied = refusal
            greeting = refusal.reply.to_bytes()
            self._note_refusal(refusal.reply)
        elif milter_greeting is not None:
            greeting = milter_greeting.reply.to_bytes()
            self._note_refusal(milter_greeting.reply)
        transport.write(greeting)
        if milter_greeting is not None and milter_greeting.reply.closes_connection:
            self._close()
            return
        if early:
            self._advance()

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._early += data   # while the name lookup runs: still before the greeting
            return
        if not self.profile.per_record_deadline or b"\n" in data:
            # With the deadline, smtpd_timeout bounds each whole line, not each read: a client
            # that dribbles a byte at a time (slowloris) cannot hold the session open.
            self._last_input = time.monotonic()
        self.conn.receive(data)
        self._advance()

    def eof_received(self) -> bool:
        if not self._greeted:
            return False   # gone before the greeting: connection_lost says so
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
        self._hold_input()
        if conn.transcript and len(conn.transcript) > self.profile.transcript.flush_threshold:
            self._notify_postmaster()   # Postfix's chat_reset at smtpd_history_flush_threshold
        if self._stopping and not self._busy:
            self._say_goodbye()

    def _hold_input(self) -> None:
        """Backpressure. While a decision is pending the core reads no commands, so what a client
        pipelines meanwhile piles up in its buffer: past READ_AHEAD_LIMIT, stop reading until the
        decision is made, and a client that floods fills its own socket buffers, not our memory
        (Postfix reads only as far as its next command). Every path that ends _busy calls _advance."""
        if self._closed:
            return
        if self._busy and self.conn.unread_bytes > READ_AHEAD_LIMIT:
            if not self._input_held:
                self._input_held = True
                self.transport.pause_reading()
        elif self._input_held and not self._busy:
            self._input_held = False
            self.transport.resume_reading()

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
        if self.access_denied is not None and isinstance(event, events.DECISIONS):
            conn.refuse(refusals.access_denied_for(self.client).reply)
        elif isinstance(event, events.Hello):
            self._hello(event)
        elif isinstance(event, events.MailFrom):
            self._mail_from(event)
        elif isinstance(event, events.RcptTo):
            self._rcpt_to(event)
        elif isinstance(event, events.DataRequested):
            check = self.policy.data()
            if self.milters is not None:
                check = self._then_milters(check, self.milters.data)
            self._await_policy(check, self._data_decided)
        elif isinstance(event, events.MessageReceived):
            self._busy = True
            asyncio.ensure_future(self._message(event))
        elif isinstance(event, events.StartTLSRequested):
            self._start_tls()
        elif isinstance(event, events.AuthRequested):
            if self.profile.auth is None:
                conn.refuse(replies.AUTH_NOT_ENABLED)
            else:
                self.auth = self.profile.auth.session(self.address, self.client, self.facts.server_address)
                self._auth_step(self.auth.begin(event.mechanism, event.initial_response,
                                                conn.auth_mechanisms_now(), conn.tls_active))
        elif isinstance(event, events.AuthResponse):
            self._auth_step(self.auth.respond(event.response))
        elif isinstance(event, events.ProtocolViolation):
            if event.reason == "improper command pipelining":
                self.facts.improper_pipelining = True   # reject_unauth_pipelining reads it
            detail = f": {event.detail}" if event.detail else ""
            self.log.line("smtpd", f"{event.reason} after {event.after} from {self.client}{detail}")
        elif isinstance(event, events.ConnectionLost):
            self.log.line("smtpd", f"lost connection after {event.after} from {self.client}")
            self._closed = True
            self._finish()
            self.transport.close()

    # --- The restrictions: each step that needs an evaluation waits for it, and the
    # --- core holds what the client pipelined meanwhile.
    def _await_policy(self, check, then: Callable[[refusals.Refusal | None], None]) -> None:
        """Run `check` (a coroutine) up to its first wait. A check that needs none (the usual
        permit_mynetworks, reject_unauth_destination: no table to ask, no DNS) is decided here
        and now, and the caller's loop goes on to the next command; only one that waits gets a
        Task. Measured with bench/relay --recipients 50: a Task per RCPT was a tenth of the
        smtpd's CPU (fan-out went from 0.87x to 1.26x Postfix's with this and a faster path parse).

        That first step runs outside any Task, so nothing before a check's first wait may need
        one: asyncio.timeout does, and the milter client uses it, so with milters every check
        gets its Task as before."""
        if self.milters is not None:
            self._busy = True
            asyncio.ensure_future(self._run_policy(check, then)).add_done_callback(self._task_done)
            return
        try:
            waiting_on = check.send(None)
        except StopIteration as done:
            self._log_policy_notes()
            then(done.value)
            return
        except TableError as problem:
            self.log.warning("smtpd", f"{problem}")
            self._log_policy_notes()
            then(refusals.SERVER_CONFIGURATION_REFUSAL)
            return
        except Exception as problem:     # a bug: as _task_done reports one from a Task
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(problem)
            self._task_done(failed)
            return
        self._busy = True
        asyncio.ensure_future(self._run_policy(_Resumed(check, waiting_on), then)).add_done_callback(self._task_done)

    async def _run_policy(self, check, then: Callable[[refusals.Refusal | None], None]) -> None:
        try:
            refusal = await check
        except TableError as problem:
            self.log.warning("smtpd", f"{problem}")
            refusal = refusals.SERVER_CONFIGURATION_REFUSAL
        finally:
            self._busy = False
        if self._closed:
            return
        self._log_policy_notes()
        then(refusal)
        self._advance()

    def _hello(self, event: events.Hello) -> None:
        if not self.policy.checks_helo:
            self.policy.record_helo(event.name, event.extended)
            if self.milters is None:
                self.conn.accept()
                return
        check = self.policy.helo(event.name, event.extended) if self.policy.checks_helo else None
        self._await_policy(self._then_milters(check, lambda: self.milters.helo(event.name)), self._accept_or_refuse)

    async def _then_milters(self, check, milter_step) -> refusals.Refusal | None:
        """The restrictions of a stage, then, if they said yes, the milters of the same stage."""
        refusal = await check if check is not None else None
        if refusal is None and self.milters is not None:
            refusal = await milter_step()
        return refusal

    def _accept_or_refuse(self, refusal: refusals.Refusal | None) -> None:
        if refusal is None:
            self.conn.accept()
        else:
            self.conn.refuse(refusal.reply)

    def _auth_step(self, step) -> None:
        if isinstance(step, Refused):
            self._auth_refused(step)
        elif isinstance(step, Challenge):
            self.conn.auth_challenge(step.text)
        else:
            self._busy = True   # the backend may take a while: hold what the client pipelined
            asyncio.ensure_future(self._auth_verified(step)).add_done_callback(self._task_done)

    async def _auth_verified(self, verification) -> None:
        try:
            outcome = await verification.run()
        finally:
            self._busy = False
        if self._closed:
            return
        if isinstance(outcome, Accepted):
            # What the restrictions read (permit_sasl_authenticated, the sender login checks).
            self.facts.sasl_method, self.facts.sasl_username = outcome.method, outcome.username
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
        if self._over_limit(self.limits.mail(self.client)):
            return
        self.mail = event
        self.recipients = []
        self.queue_id = ""
        sender, size = event.path.address, event.params.size or 0
        if not self.policy.checks_mail:
            self.policy.record_mail(sender, size)
            if self.milters is None:
                self._sender_decided(self._queue_space_refusal())
                return
        check = self.policy.mail(sender, size) if self.policy.checks_mail else None
        self._await_policy(self._mail_stage(check, sender, event.params), self._sender_decided)

    async def _mail_stage(self, check, sender: str, params) -> refusals.Refusal | None:
        """Postfix's mail_cmd order: the sender restrictions, then the queue's free space,
        then the MAIL FROM milters (so no milter sees a sender refused for lack of space)."""
        refusal = await check if check is not None else None
        if refusal is None:
            refusal = self._queue_space_refusal()
        if refusal is None and self.milters is not None:
            refusal = await self.milters.mail(sender, params)
        return refusal

    def _sender_decided(self, refusal: refusals.Refusal | None) -> None:
        if refusal is not None:
            self.mail = None
        self._accept_or_refuse(refusal)

    def _queue_space_refusal(self) -> refusals.Refusal | None:
        """queue_minfree, after the sender restrictions as in Postfix's mail_cmd."""
        space = self.profile.queue_space
        shortage = space.shortage() if space is not None else None
        if shortage is None:
            return None
        refusal = refusals.INSUFFICIENT_STORAGE
        self.policy.session.notes.append(Note("reject", str(refusal.reply)))
        self._log_policy_notes()
        self.log.warning("smtpd", shortage)
        self.policy.end_transaction()
        return refusal

    def _rcpt_to(self, event: events.RcptTo) -> None:
        if self._over_limit(self.limits.rcpt(self.client)):
            return
        check = self.policy.rcpt(event.path.address, event.path.is_routed)
        if self.milters is not None:
            check = self._then_milters(check, lambda: self.milters.rcpt(event.path.address, event.params))
        self._await_policy(check, lambda refusal: self._decide_recipient(event, refusal))

    def _decide_recipient(self, event: events.RcptTo, refusal: refusals.Refusal | None) -> None:
        address = event.path.address
        if refusal is not None:
            self.conn.refuse(refusal.reply)
            return
        if not self.queue_id:
            # Postfix opens the queue file at the first accepted recipient (smtpd_delay_open_until_valid_rcpt).
            self.queue_id = self.service.new_queue_id()
            self.facts.queue_id = self.queue_id
            self.log.line("smtpd", f"{self.queue_id}: client={self.client}{self._sasl_log_fields()}")
        self.recipients.append(Recipient(address, orcpt=event.params.orcpt, notify=event.params.notify))
        self.policy.recipient_accepted(address)
        self.conn.accept()

    def _data_decided(self, refusal: refusals.Refusal | None) -> None:
        self._accept_or_refuse(refusal)

    def _log_policy_notes(self) -> None:
        """What the restrictions asked the log to say, in Postfix's log_whatsup form."""
        notes, warnings = self.policy.session.take_notes()
        for text in warnings:
            self.log.warning("smtpd", text)
        if not notes:
            return
        facts = self.facts
        where = facts.stage
        tail = ""
        if facts.sender is not None:
            tail += f" from=<{facts.sender}>"
        if facts.recipient is not None:
            tail += f" to=<{facts.recipient}>"
        tail += f" proto={facts.protocol}"
        if facts.helo_name is not None:
            tail += f" helo=<{facts.helo_name}>"
        for note in notes:
            self.log.line("smtpd", f"{self.queue_id or 'NOQUEUE'}: {note.whatsup}: {where} from {self.client}: "
                                   f"{note.text};{tail}")

    async def _message(self, event: events.MessageReceived) -> None:
        mail = self.mail
        if self.policy.checks_end_of_data or (event.via == events.BDAT and self.policy.checks_data):
            refusal = await self._end_of_data_refusal(event)
            if refusal is not None:
                self.queue_id, self.recipients = "", []
                self.policy.end_transaction()
                if self.milters is not None:
                    await self.milters.end_transaction()
                self.conn.refuse(refusal.reply)
                self._busy = False
                self._advance()
                return
        actions = self.policy.session.actions
        recipients = self.recipients + [Recipient(address, notify="NEVER") for address in actions.bcc]
        message = NewMessage(
            sender=mail.path.address, recipients=recipients, content=event.content,
            client=ClientInfo(self.name, self.address, self.port, self.conn.helo_name or "",
                              self._protocol(), self.tls_description, self.facts.sasl_username),
            origin="smtp", dsn_ret=mail.params.ret, dsn_envid=mail.params.envid,
            body_type=mail.params.body, smtputf8=mail.params.smtputf8, arrival_time=time.time(),
            hold=bool(actions.hold), discard=actions.discard, redirect=actions.redirect,
            content_filter=actions.filter or self.profile.content_filter, prepend=list(actions.prepend),
            receive_overrides=self.profile.receive_overrides)
        milters = self._milters_for_content(message, self.queue_id)
        queue_id, self.queue_id, self.recipients = self.queue_id, "", []
        self.policy.end_transaction()
        try:
            await self.service.cleanup.enqueue(message, queue_id, milters=milters)
        except ContentRefused as problem:
            # cleanup logged its reject line, as Postfix's cleanup does; smtpd only answers.
            self.conn.refuse(problem.refusal.reply)
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

    async def _end_of_data_refusal(self, event: events.MessageReceived) -> refusals.Refusal | None:
        """smtpd_end_of_data_restrictions (and, for BDAT, the data restrictions that
        DATA met before its 354: the core reads the chunks before asking)."""
        try:
            refusal = None
            if event.via == events.BDAT and self.policy.checks_data:
                refusal = await self.policy.data()
                self._log_policy_notes()
            if refusal is None:
                refusal = await self.policy.end_of_data(event.content)
                self._log_policy_notes()
        except TableError as problem:
            self.log.warning("smtpd", f"{problem}")
            refusal = refusals.SERVER_CONFIGURATION_REFUSAL
        return refusal

    def _milters_for_content(self, message: NewMessage, queue_id: str) -> MilterSession | None:
        """The session's milters for cleanup's content phase, with what they decided before it:
        HOLD and DISCARD at MAIL, RCPT or DATA (after a DISCARD they are asked nothing more)."""
        if self.milters is None:
            return None
        self.milters.queue_id = queue_id
        message.hold = message.hold or bool(self.milters.hold_reason)
        if self.milters.discard:
            message.discard = True
            return None
        return self.milters.milters

    def _protocol(self) -> str:
        """RFC 3848's names, as Postfix writes them in Received:: ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
        if not self.conn.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.conn.tls_active else "") + ("A" if self.facts.sasl_username else "")

    def _sasl_log_fields(self) -> str:
        """Postfix's `, sasl_method=PLAIN, sasl_username=user1` on the client= line."""
        if not self.facts.sasl_username:
            return ""
        return f", sasl_method={self.facts.sasl_method}, sasl_username={self.facts.sasl_username}"

    def _start_tls(self) -> None:
        if self.profile.tls_context is None:
            self.conn.refuse(refusals.TLS_UNAVAILABLE.reply)
            return
        if self._over_limit(self.limits.starttls(self.client)):
            return
        self.conn.accept()
        self._send()
        self._busy = True
        asyncio.ensure_future(self._handshake())

    def _drop_wrapper_mode(self) -> None:
        """Postfix's words: without a certificate, port 465 has nothing to speak TLS with."""
        self.log.warning("smtpd", f"Wrapper-mode request dropped from {self.client} for service "
                                  f"{self.service.service.name}. TLS context initialization failed. "
                                  "For details see earlier warnings in your logs.")
        self._close()

    def _read_early(self, transport: asyncio.Transport) -> bytes:
        """Bytes sent before the greeting; under implicit TLS the socket's bytes are TLS
        records, not the client's words, so nothing is read behind the TLS layer's back."""
        return b"" if self.profile.tls.wrappermode else _already_sent(transport)

    def _tls_established(self, ssl_object) -> None:
        self.tls_description = describe(ssl_object)
        # What the restrictions and the policy service read (encryption_protocol=...).
        name, _, bits = ssl_object.cipher()
        self.facts.tls_protocol, self.facts.tls_cipher, self.facts.tls_cipher_bits = ssl_object.version(), name, bits
        for line in established_lines(self.client, ssl_object, self.profile.tls):
            self.log.line("smtpd", line)
        metrics.tls_inbound("trusted" if self.profile.tls.ask_ccert and ssl_object.getpeercert() else "anonymous",
                            ssl_object.version())

    async def _handshake(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.profile.tls_context,
                                             server_side=True, ssl_handshake_timeout=self.profile.timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.log.line("smtpd", f"SSL_accept error from {self.client}: {exc}")
            metrics.tls_inbound("failed")
            self._close()
            return
        if transport is None:
            self._close()
            return
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls_established(ssl_object)
        refusal = self.limits.tls_established(self.client, ssl_object.session_reused)
        if refusal is not None:
            self._end_with(refusal)
            return
        self.conn.tls_started()
        # What was learned in plaintext is forgotten (RFC 3207 4.2), by the restrictions too:
        # a login before STARTTLS must not permit anything after it.
        self.policy.tls_started()
        self._busy = False
        self._advance()

    # --- client limits (anvil/)
    def _over_limit(self, refusal: refusals.Refusal | None) -> bool:
        """A rate limit refuses this command: the warning, then the 4xx."""
        if refusal is None:
            return False
        self.log.warning("smtpd", refusal.warning)
        self.conn.refuse(refusal.reply)
        return True

    def _end_with(self, refusal: refusals.Refusal) -> None:
        """A limit ends the session: the warning, the 421, and the connection is closed."""
        self.log.warning("smtpd", refusal.warning)
        self.transport.write(refusal.reply.to_bytes())
        self._close()

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
        if self.milters is not None:
            asyncio.ensure_future(self.milters.close())
        self.limits.disconnect()
        self.service.sessions.discard(self)
        metrics.connection_closed(self.service.service.name)
        self.log.line("smtpd", f"disconnect from {self.client} {self.conn.disconnect_summary()}")
        if self.profile.transcript is not None:
            lost = self.conn.last_command != "QUIT" and not self._stopping
            self._notify_postmaster(f"lost connection after {self.conn.last_command}" if lost else "")

    # --- notify_classes: the postmaster's transcript (smtpd/transcript.py)
    def _note_refusal(self, reply: Reply) -> None:
        """A reply written around the core (a greeting refusal, an internal error)."""
        if self.conn.transcript is not None:
            for line in reply.to_bytes().decode("utf-8", "replace").split("\r\n")[:-1]:
                self.conn.transcript.append(f"Out: {line}")
            self.conn.failed_replies.append((reply, False))

    def _notify_postmaster(self, reason: str = "") -> None:
        conn, settings = self.conn, self.profile.transcript
        errors = transcript.errors_to_report(conn.failed_replies, settings.classes)
        history = conn.transcript
        conn.transcript = history.fresh() if isinstance(history, PeerChat) else []
        conn.failed_replies = []
        if not errors:
            return
        message = transcript.notice(settings, self.client, history, errors, reason)
        asyncio.ensure_future(self._post_notice(message))

    async def _post_notice(self, message: NewMessage) -> None:
        try:
            await self.service.cleanup.enqueue(message, self.service.new_queue_id())
        except Exception as problem:   # noqa: BLE001 - a notice is junk mail: never worth more than a warning
            self.log.warning("smtpd", f"postmaster notify: {problem}")


def _already_sent(transport: asyncio.Transport) -> bytes:
    """What the client sent before we could greet it (a spambot that does not
    wait), read straight from the socket before the event loop starts reading."""
    fileno = transport.get_extra_info("socket").fileno()
    try:
        duplicate = os.dup(fileno)
    except OSError:
        return b""      # at the file-descriptor limit: the core reads it the usual way
    with socket.socket(fileno=duplicate) as raw:
        try:
            return raw.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return b""


@lru_cache(maxsize=1024)
def _client_address(address: str) -> str:
    """`::ffff:127.0.0.1` is shown as `127.0.0.1`, as Postfix shows IPv4 clients on a
    dual-stack socket. Cached: parsing an address costs more than the lookup."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class _Resumed:
    """The rest of a coroutine that already ran up to its first wait (`first`: what it yielded
    there), to be awaited by a Task: the Task's sends and throws are passed on to it, as
    `yield from` passes them to a generator."""

    __slots__ = ("coroutine", "first")

    def __init__(self, coroutine, first) -> None:
        self.coroutine = coroutine
        self.first = first

    def __await__(self):
        coroutine, yielded = self.coroutine, self.first
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as thrown:     # noqa: BLE001 (CancelledError included: passed on)
                try:
                    yielded = coroutine.throw(thrown)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as done:
                    return done.value
