"""One smtpd listener from master.cf, and the sessions on it.

Each session drives a protocol.ServerConnection: the bytes go in, and the
decisions it asks for are made here: relay control for RCPT, TLS for
STARTTLS, and for a received message the hand-off to cleanup, whose answer
(the queue ID) is what the client hears. Nothing is answered 250 before
the queue's commit returned; a queue failure is a 4xx.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

from mailferry.config.config import Config
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.protocol import smtp_server as smtp
from mailferry.queue.store import QueueError, QueueFull
from mailferry.smtpd.networks import NetworkList
from mailferry.smtpd.relay import ClientFacts, RelayPolicy
from mailferry.smtpd.settings import server_settings
from mailferry.smtpd.tls import TLSSetupError, describe, server_context, tls_level

READ_SIZE = 65536
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, closing transmission channel\r\n"


class ServiceProfile:
    """Everything a session needs that comes from configuration: rebuilt on reload."""

    def __init__(self, config: Config, tls_context):
        from mailferry.config.localdomains import local_domain_matcher
        self.config = config
        self.tls_context = tls_context
        self.tls_level = tls_level(config)
        self.settings = server_settings(config, starttls=self.tls_context is not None)
        self.timeout = config.time("smtpd_timeout")
        self.mynetworks = NetworkList(config.get("mynetworks"))
        self.relay = RelayPolicy(config.get("smtpd_relay_restrictions"),
                                 config.get("smtpd_recipient_restrictions"),
                                 local_domain_matcher(config), config.get("relay_domains"),
                                 config.integer("relay_domains_reject_code"))
        self.hostname = config.get("myhostname")


def service_view(config: Config, service) -> Config:
    """main.cf as this master.cf service sees it: with its -o overrides."""
    return config.with_overrides(service.overrides, f"master.cf, line {service.line}")


class SmtpdService:
    def __init__(self, service, config: Config, tls_context, cleanup, log, new_queue_id):
        self.service = service
        self.cleanup = cleanup
        self.log = log
        self.new_queue_id = new_queue_id
        self.profile = ServiceProfile(service_view(config, service), tls_context)
        self.servers: list[asyncio.AbstractServer] = []
        self.sessions: set[Session] = set()

    async def start(self, sockets) -> None:
        for listener in sockets:
            server = await asyncio.start_server(self._accept, sock=listener, limit=READ_SIZE)
            self.servers.append(server)

    def reload(self, config: Config, service) -> None:
        if service is not None:
            self.service = service
        view = service_view(config, self.service)
        try:
            tls_context = server_context(view)
        except TLSSetupError as exc:
            # Root-only keys cannot be read again once root is given up: keep the ones read at start.
            self.log.warning("smtpd", f"reload: {exc}; keeping the TLS certificate loaded at start")
            tls_context = self.profile.tls_context
        self.profile = ServiceProfile(view, tls_context)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, self.profile, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.shut_down()
        deadline = time.monotonic() + 30
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class Session:
    def __init__(self, service: SmtpdService, profile: ServiceProfile,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.service = service
        self.profile = profile
        self.log = service.log
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        self.address, self.port = _plain_address(peer[0]), peer[1]
        self.name = _client_name(self.address)
        self.client = f"{self.name}[{self.address}]"
        self.in_mynetworks = profile.mynetworks.matches(self.address)
        self.conn = smtp.ServerConnection(profile.settings)
        self.queue_id = ""
        self.recipients: list[Recipient] = []
        self.mail: smtp.MailFrom | None = None
        self.tls_description = ""
        self._stopping = False
        self._idle = False

    def shut_down(self) -> None:
        """Stop: an idle session hears 421 now; a busy one (say, committing a
        message) finishes that first and hears it before its next read."""
        self._stopping = True
        if self._idle:
            self._write(SHUTDOWN_REPLY)
            self.writer.close()

    async def run(self) -> None:
        self.log.line("smtpd", f"connect from {self.client}")
        try:
            self._write(self.conn.greeting())
            await self._serve()
        except (ConnectionError, OSError) as exc:
            self.log.line("smtpd", f"lost connection after {self.conn.last_command} from {self.client}: {exc}")
        finally:
            self.log.line("smtpd", f"disconnect from {self.client} {self.conn.disconnect_summary()}")
            self.writer.close()

    async def _serve(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is smtp.NEED_DATA:
                if not await self._flush_and_read():
                    return
            elif event is smtp.CLOSED:
                await self._flush()
                return
            else:
                await self._handle(event)

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            delay = self.conn.reply_delay
            if delay:
                await asyncio.sleep(delay)
            self._write(data)
            await self.writer.drain()

    def _write(self, data: bytes) -> None:
        self.writer.write(data)

    async def _flush_and_read(self) -> bool:
        await self._flush()
        if self._stopping:
            await self._say_goodbye()
            return False
        self._idle = True
        try:
            # asyncio.timeout costs one timer; wait_for would cost a task per read.
            async with asyncio.timeout(self.profile.timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            self.log.line("smtpd", f"timeout after {self.conn.last_command} from {self.client}")
            self._write(self.conn.timeout_reply())
            await self.writer.drain()
            return False
        finally:
            self._idle = False
        if self._stopping:
            return False  # shut_down() said goodbye while we waited
        self.conn.receive(data)
        return True

    async def _say_goodbye(self) -> None:
        self._write(SHUTDOWN_REPLY)
        await self.writer.drain()

    async def _handle(self, event) -> None:
        conn = self.conn
        if isinstance(event, smtp.Hello):
            conn.accept()
        elif isinstance(event, smtp.MailFrom):
            self._mail_from(event)
        elif isinstance(event, smtp.RcptTo):
            self._rcpt_to(event)
        elif isinstance(event, smtp.MessageReceived):
            await self._message(event)
        elif isinstance(event, smtp.StartTLSRequested):
            await self._start_tls()
        elif isinstance(event, (smtp.AuthRequested, smtp.AuthResponse)):
            conn.reject(503, "5.5.1", "Error: authentication not enabled")
        elif isinstance(event, smtp.ProtocolViolation):
            detail = f": {event.detail}" if event.detail else ""
            self.log.line("smtpd", f"{event.reason} after {event.after} from {self.client}{detail}")
        elif isinstance(event, smtp.ConnectionLost):
            self.log.line("smtpd", f"lost connection after {event.after} from {self.client}")

    def _mail_from(self, event: smtp.MailFrom) -> None:
        if self.profile.tls_level == "encrypt" and not self.conn.tls_active:
            self.conn.reject(530, "5.7.0", "Must issue a STARTTLS command first")
            return
        self.mail = event
        self.recipients = []
        self.queue_id = ""
        self.conn.accept()

    def _rcpt_to(self, event: smtp.RcptTo) -> None:
        address = event.path.address
        facts = ClientFacts(self.address, self.in_mynetworks)
        rejection = self.profile.relay.check_recipient(facts, address, event.path.is_routed)
        if rejection is not None:
            self._log_reject(event, rejection.code, rejection.enhanced, rejection.text)
            if rejection.log_reason.startswith("unknown"):
                self.log.warning("smtpd", rejection.log_reason)
            self.conn.reject(rejection.code, rejection.enhanced, rejection.text)
            return
        if not self.queue_id:
            # Postfix opens the queue file at the first accepted recipient (smtpd_delay_open_until_valid_rcpt).
            self.queue_id = self.service.new_queue_id()
            self.log.line("smtpd", f"{self.queue_id}: client={self.client}")
        self.recipients.append(Recipient(address, orcpt=event.params.orcpt, notify=event.params.notify))
        self.conn.accept()

    def _log_reject(self, event: smtp.RcptTo, code: int, enhanced: str, text: str) -> None:
        sender = self.mail.path.address if self.mail else ""
        self.log.line("smtpd", (
            f"NOQUEUE: reject: RCPT from {self.client}: {code} {enhanced} {text}; "
            f"from=<{sender}> to=<{event.path.address}> proto={'ESMTP' if self.conn.esmtp else 'SMTP'} "
            f"helo=<{self.conn.helo_name or ''}>"))

    async def _message(self, event: smtp.MessageReceived) -> None:
        mail = self.mail
        message = NewMessage(
            sender=mail.path.address, recipients=self.recipients, content=event.content,
            client=ClientInfo(self.name, self.address, self.port, self.conn.helo_name or "",
                              self._protocol(), self.tls_description),
            origin="smtp", dsn_ret=mail.params.ret, dsn_envid=mail.params.envid,
            body_type=mail.params.body, smtputf8=mail.params.smtputf8, arrival_time=time.time())
        queue_id, self.queue_id, self.recipients = self.queue_id, "", []
        try:
            await self.service.cleanup.enqueue(message, queue_id)
        except QueueFull:
            self.log.warning("cleanup", f"{queue_id}: queue is full: mail refused with 452 4.3.1")
            self.conn.reject(452, "4.3.1", "Insufficient system storage")
            return
        except QueueError as problem:
            self.log.warning("cleanup", f"{queue_id}: queue file write error: {problem}")
            self.conn.reject(451, "4.3.0", "Error: queue file write error")
            return
        self.conn.accept_message(queue_id)

    def _protocol(self) -> str:
        if not self.conn.esmtp:
            return "SMTP"
        return "ESMTPS" if self.conn.tls_active else "ESMTP"

    async def _start_tls(self) -> None:
        context = self.profile.tls_context
        if context is None:
            self.conn.reject(454, "4.7.0", "TLS not available due to local problem")
            return
        self.conn.accept()
        await self._flush()
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=self.profile.timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.log.line("smtpd", f"SSL_accept error from {self.client}: {exc}")
            raise ConnectionError("TLS handshake failed") from exc
        ssl_object = self.writer.get_extra_info("ssl_object")
        self.tls_description = describe(ssl_object)
        self.log.line("smtpd", f"Anonymous TLS connection established from {self.client}: {self.tls_description}")
        self.conn.tls_started()


def _plain_address(address: str) -> str:
    """`::ffff:127.0.0.1` → `127.0.0.1`, as Postfix shows IPv4 clients on a dual-stack socket."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _client_name(address: str) -> str:
    """Loopback clients are `localhost`; others `unknown` until the DNS resolver lands."""
    try:
        return "localhost" if ipaddress.ip_address(address).is_loopback else "unknown"
    except ValueError:
        return "unknown"
