"""The SMTP and LMTP client: Postfix's smtp(8) and lmtp(8) in one agent.

For each delivery job (one message, the recipients that share one next
hop) it finds a session to the next hop: an idle cached one, or a new
one (DNS, connect, greeting, EHLO/LHLO, STARTTLS per the TLS policy,
AUTH with the password table's credentials). It then runs one pipelined
transaction (protocol/smtp_client.Transaction) and reports a result per
recipient through delivery/outcome.py. A healthy session goes back to the
cache for the next message to the same next hop.

Concurrency: at most `<service>_destination_concurrency_limit` sessions
per next hop at once.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

from mailferry.delivery import outcome
from mailferry.delivery.connection import Connection, ConnectionLost
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.settings import ClientSettings
from mailferry.message import DeliveryResult, QueuedMessage, Recipient
from mailferry.protocol import smtp_client as proto

SMTP_PORT = 25
LMTP_PORT = 24


@dataclass(slots=True)
class DeliveryJob:
    message: QueuedMessage
    content: bytes
    recipients: list[Recipient]
    nexthop: str


class _SetupFailed(Exception):
    """This server cannot take the mail now; try the next one, report `result` if none can."""

    def __init__(self, result: DeliveryResult, connect_failure: bool = False):
        super().__init__(result.reason)
        self.result = result
        self.connect_failure = connect_failure


@dataclass(frozen=True, slots=True)
class Hop:
    """One next hop as written (`[smtp.gmail.com]:587`, `example.com`, `unix:/path`)."""

    written: str
    host: str           # no brackets, no port; a path for a UNIX socket
    port: int | None
    use_mx: bool
    unix: bool = False
    bracketed: bool = False   # `[host]`: used as written (no MX, no parent-domain policy lookups)

    @property
    def domain(self) -> str:
        return self.host


def parse_hop(written: str, lmtp: bool) -> Hop:
    text = written.strip()
    if lmtp:
        if text.startswith("unix:"):
            return Hop(written, text[5:], None, False, unix=True)
        if text.startswith("inet:"):
            text = text[5:]
    default_port = LMTP_PORT if lmtp else SMTP_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        return Hop(written, host, _port(port, default_port, written), False, bracketed=True)
    host, colon, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not colon:
        host = text
    return Hop(written, host.rstrip(".").lower(), _port(port, default_port, written), not lmtp)


def _port(text: str, default: int, written: str) -> int:
    if not text:
        return default
    if text.isdigit():
        return int(text)
    import socket
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"next hop {written}: unknown port {text!r}") from None


class SmtpClient:
    def __init__(self, settings: ClientSettings, dns, log, password_maps=None, tls_policies=None):
        """`tls_policies`: a delivery.tls_policies.TlsPolicyTable (smtp_tls_policy_maps), or None."""
        self.settings = settings
        self.tls_policies = tls_policies
        self.dns = dns
        self.log = log
        self.password_maps = password_maps
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._jobs: dict[str, int] = {}     # jobs holding or waiting for each destination's slot
        self._idle: dict[tuple, list[tuple[Connection, asyncio.TimerHandle]]] = {}
        self._dead: dict[str, tuple[float, str]] = {}
        self.program = settings.transport

    # --- the job

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]:
        limit = self.settings.recipient_limit
        results: list[DeliveryResult] = []
        for start in range(0, len(job.recipients), limit):
            results += await self._deliver_some(job, job.recipients[start:start + limit])
        return results

    async def _deliver_some(self, job: DeliveryJob, recipients: list[Recipient]) -> list[DeliveryResult]:
        slot = self._slots.get(job.nexthop)
        if slot is None:
            slot = self._slots[job.nexthop] = asyncio.Semaphore(self.settings.concurrency_limit)
        self._jobs[job.nexthop] = self._jobs.get(job.nexthop, 0) + 1
        try:
            async with slot:
                return await self._deliver_in_slot(job, recipients)
        finally:
            self._jobs[job.nexthop] -= 1
            if not self._jobs[job.nexthop]:      # no job waits: forget the destination's slot
                del self._jobs[job.nexthop], self._slots[job.nexthop]

    async def _deliver_in_slot(self, job: DeliveryJob, recipients: list[Recipient]) -> list[DeliveryResult]:
        suspended = self._suspended(job.nexthop)
        if suspended is not None:
            return [suspended] * len(recipients)
        for _ in range(2):   # a cached session may have died while idle: one fresh try
            began = time.monotonic()
            try:
                connection = await self._session(job)
            except _SetupFailed as failure:
                if failure.connect_failure:
                    self._mark_dead(job.nexthop, failure.result.reason)
                return [failure.result] * len(recipients)
            setup = time.monotonic() - began
            results = await self._transaction(connection, job, recipients)
            if results is not None:
                for result in results:
                    result.setup_seconds = setup
                return results
        return [outcome.deferred("4.4.2", f"lost connection with {connection.peer} "
                                 "while sending MAIL FROM", connection.relay)] * len(recipients)

    # --- dead destinations: after a failed connect, the rest of the queue waits

    def _mark_dead(self, nexthop: str, reason: str) -> None:
        self._dead[nexthop] = (time.monotonic() + 1.0, reason)

    def _suspended(self, nexthop: str) -> DeliveryResult | None:
        dead = self._dead.get(nexthop)
        if dead is None:
            return None
        until, reason = dead
        if time.monotonic() >= until:
            del self._dead[nexthop]
            return None
        return outcome.deferred("4.4.1", f"delivery temporarily suspended: {reason}")

    def forget_dead_destinations(self) -> None:
        """postqueue -f: try every destination now."""
        self._dead.clear()

    # --- sessions

    def _cache_key(self, job: DeliveryJob) -> tuple:
        if self.settings.sasl_enable and self.settings.sender_dependent_authentication:
            return (job.nexthop, job.message.sender)
        return (job.nexthop,)

    async def _session(self, job: DeliveryJob) -> Connection:
        cached = self._take_idle(self._cache_key(job))
        if cached is not None:
            return cached
        try:
            hop = parse_hop(job.nexthop, self.settings.lmtp)
        except ValueError as error:
            raise _SetupFailed(outcome.deferred("4.3.5", str(error))) from None
        policy = await self._tls_policy(hop)
        last: _SetupFailed | None = None
        for host, address, port in await self._targets(hop):
            try:
                return await self._open(hop, host, address, port, job, policy)
            except _SetupFailed as failure:
                last = failure
        assert last is not None
        raise last

    async def _targets(self, hop: Hop) -> list[tuple[str, str, int | None]]:
        if hop.unix:
            return [("localhost", hop.host, None)]
        from mailferry.delivery.dns import DnsError
        try:
            targets = await self.dns.targets(hop.host, hop.port, hop.use_mx)
        except DnsError as error:
            raise _SetupFailed(outcome.from_dns_error(error)) from None
        limit = self.settings.mx_address_limit
        if limit > 0:
            targets = targets[:limit]
        if not targets:
            raise _SetupFailed(outcome.deferred("4.4.3", f"Host or domain name not found: {hop.host}"))
        return [(target.hostname, target.address, target.port) for target in targets]

    async def _tls_policy(self, hop: Hop):
        """smtp_tls_security_level, unless smtp_tls_policy_maps has an entry for this next hop."""
        if self.tls_policies is None or hop.unix:
            return self.settings.tls
        from mailferry.delivery.tls_policies import TlsPolicyError
        try:
            policy = await self.tls_policies.policy_for(hop.written, hop.domain, hop.bracketed)
        except TlsPolicyError as problem:
            raise _SetupFailed(outcome.deferred("4.7.5", f"TLS policy lookup problem: {problem}")) from None
        return policy or self.settings.tls

    async def _open(self, hop: Hop, host: str, address: str, port: int | None,
                    job: DeliveryJob, policy) -> Connection:
        connection = await self._connect(host, address, port)
        try:
            await self._greet(connection)
            await self._hello(connection)
            if policy.offers_tls and not hop.unix:
                await self._start_tls(connection, hop, policy)
            if self.settings.sasl_enable:
                await self._authenticate(connection, hop, job)
        except ConnectionLost as lost:
            connection.close()
            raise _SetupFailed(outcome.deferred("4.4.2", str(lost))) from None
        except _SetupFailed:
            connection.close(proto.QUIT)
            raise
        return connection

    async def _connect(self, host: str, address: str, port: int | None) -> Connection:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                if port is None:
                    reader, writer = await asyncio.open_unix_connection(address, limit=1 << 20)
                else:
                    reader, writer = await asyncio.open_connection(address, port, limit=1 << 20)
        except TimeoutError:
            raise _SetupFailed(outcome.deferred(
                "4.4.1", f"connect to {host}[{address}]{_port_text(port)}: Connection timed out"),
                connect_failure=True) from None
        except OSError as error:
            reason = error.strerror or str(error)
            raise _SetupFailed(outcome.deferred(
                "4.4.1", f"connect to {host}[{address}]{_port_text(port)}: {reason}"),
                connect_failure=True) from None
        return Connection(reader, writer, host, address, port)

    async def _greet(self, connection: Connection) -> None:
        reply = await connection.reply(self.settings.helo_timeout, "receiving the initial server greeting")
        if reply.code >= 500 and not self.settings.skip_5xx_greeting:
            # smtp_skip_5xx_greeting = no: a server that refuses everyone means it.
            raise _SetupFailed(outcome.bounced(
                reply.enhanced or "5.0.0", f"host {connection.peer} refused to talk to me: {reply}",
                connection.relay))
        if reply.code != 220:
            raise _SetupFailed(outcome.deferred(
                reply.enhanced or "4.3.0", f"host {connection.peer} refused to talk to me: {reply}",
                connection.relay))

    async def _hello(self, connection: Connection) -> None:
        name = self.settings.helo_name
        verb = "LHLO" if self.settings.lmtp else "EHLO"
        reply = await connection.command(proto.hello_command(name, self.settings.lmtp),
                                         self.settings.helo_timeout, f"performing the {verb} handshake")
        if reply.code == 250:
            connection.extensions = proto.Extensions.from_reply(reply)
            return
        if not self.settings.lmtp and reply.code >= 500:
            # An old server without ESMTP: HELO, and none of the extensions.
            reply = await connection.command(proto.helo_command(name), self.settings.helo_timeout,
                                             "performing the HELO handshake")
            if reply.code == 250:
                connection.extensions = proto.Extensions()
                return
        raise _SetupFailed(outcome.deferred(
            reply.enhanced or "4.3.0",
            f"host {connection.peer} refused to talk to me: {reply} (in reply to {verb} command)",
            connection.relay))

    async def _start_tls(self, connection: Connection, hop: Hop, policy) -> None:
        from mailferry.delivery import tls
        if not connection.extensions.starttls:
            if policy.requires_tls:
                raise _SetupFailed(outcome.deferred(
                    "4.7.4", f"TLS is required, but was not offered by host {connection.peer}",
                    connection.relay))
            return
        reply = await connection.command(proto.STARTTLS, self.settings.helo_timeout, "sending STARTTLS")
        if reply.code != 220:
            if policy.requires_tls:
                raise _SetupFailed(outcome.deferred(
                    "4.7.4", f"TLS is required, but host {connection.peer} refused to start TLS: {reply}",
                    connection.relay))
            return
        try:
            context = tls.client_context(policy)
        except ValueError as error:
            raise _SetupFailed(outcome.deferred("4.7.5", f"cannot start TLS: {error}", connection.relay)) from None
        name = tls.server_name(policy, hop.domain, connection.host)
        try:
            async with asyncio.timeout(self.settings.helo_timeout):
                await connection.writer.start_tls(context, server_hostname=name)
        except ssl.SSLCertVerificationError as error:
            self.log.line(self.program, tls.verification_failure(
                error, connection.host, connection.address, connection.port))
            raise _SetupFailed(outcome.deferred("4.7.5", "Server certificate not verified",
                                                connection.relay)) from None
        except (ssl.SSLError, OSError, TimeoutError) as error:
            connection.closed = True
            raise _SetupFailed(outcome.deferred(
                "4.7.5", f"Cannot start TLS: handshake failure with {connection.peer}: "
                         f"{getattr(error, 'reason', None) or error}", connection.relay)) from None
        ssl_object = connection.writer.get_extra_info("ssl_object")
        trust = "Untrusted"
        if policy.verifies:
            names = tls.expected_names(policy, hop.domain, connection.host)
            certificate = ssl_object.getpeercert()
            if not tls.certificate_matches(certificate, names):
                self.log.line(self.program, tls.name_mismatch(
                    connection.host, connection.address, connection.port, names, certificate))
                raise _SetupFailed(outcome.deferred("4.7.5", "Server certificate not verified",
                                                    connection.relay))
            trust = "Verified"
        connection.tls = trust
        self.log.line(self.program, tls.established_line(
            trust, connection.host, connection.address, connection.port, ssl_object))
        await self._hello(connection)

    async def _authenticate(self, connection: Connection, hop: Hop, job: DeliveryJob) -> None:
        from mailferry.delivery import sasl
        if self.password_maps is None:
            return
        try:
            credentials = await sasl.find_credentials(
                self.password_maps, sender=job.message.sender,
                sender_dependent=self.settings.sender_dependent_authentication,
                hostname=connection.host, nexthop=hop.written)
        except sasl.SaslLookupError as error:
            raise _SetupFailed(outcome.deferred("4.3.0", f"SASL password lookup failed: {error}",
                                                connection.relay)) from None
        offered = connection.extensions.auth
        if credentials is None or not offered:
            return       # as Postfix: no password for this server, or it does not do AUTH
        prefix = self.settings.prefix
        if connection.tls:
            options = self.settings.sasl_tls_security_options
            parameter = client_parameter(prefix, "smtp_sasl_tls_security_options")
        else:
            options = self.settings.sasl_security_options
            parameter = client_parameter(prefix, "smtp_sasl_security_options")
        try:
            mechanism = sasl.choose_mechanism(
                offered, mechanism_filter=self.settings.sasl_mechanism_filter,
                security_options=options, options_parameter=parameter,
                filter_parameter=client_parameter(prefix, "smtp_sasl_mechanism_filter"))
        except (sasl.NoMechanism, ValueError) as why:
            self.log.warning(self.program, f"SASL authentication failure: cannot authenticate to "
                                           f"server {connection.relay}: {why}")
            raise _SetupFailed(outcome.deferred(
                "4.7.0", f"SASL authentication failed; cannot authenticate to server "
                         f"{connection.peer}: {why}", connection.relay)) from None
        await self._sasl_exchange(connection, sasl.SaslExchange(mechanism, credentials), mechanism)

    async def _sasl_exchange(self, connection: Connection, exchange, mechanism: str) -> None:
        timeout = self.settings.helo_timeout
        reply = await connection.command(proto.auth_command(mechanism, exchange.initial_response()),
                                         timeout, "performing SASL authentication")
        rounds = 0
        while reply.code == 334 and rounds < 4:
            rounds += 1
            try:
                answer = exchange.answer(proto.decode_challenge(reply))
            except (ValueError, proto.ClientProtocolError):
                answer = None
            if answer is None:
                reply = await connection.command(b"*\r\n", timeout, "performing SASL authentication")
                break
            reply = await connection.command(proto.auth_answer(answer), timeout,
                                             "performing SASL authentication")
        if reply.code == 235:
            connection.authenticated = True
            return
        self.log.warning(self.program, f"SASL authentication failed; server {connection.peer} said: {reply}")
        text = f"SASL authentication failed; server {connection.peer} said: {reply}"
        if reply.code >= 500 and not self.settings.sasl_soft_bounce:
            raise _SetupFailed(outcome.bounced(reply.enhanced or "5.7.8", text, connection.relay))
        raise _SetupFailed(outcome.deferred(reply.enhanced or "4.7.8", text, connection.relay))

    # --- the transaction

    async def _transaction(self, connection: Connection, job: DeliveryJob,
                           recipients: list[Recipient]) -> list[DeliveryResult] | None:
        """Results per recipient; None when a reused session turned out dead before any reply."""
        refused = self._refuse_before_sending(connection, job)
        if refused is not None:
            self._release(connection, job)
            return [refused] * len(recipients)
        began = time.monotonic()
        reused = connection.uses > 0
        connection.uses += 1
        transaction = proto.Transaction(
            self._mail_command(connection, job.message, len(job.content)),
            [self._rcpt_command(connection, recipient) for recipient in recipients],
            proto.data_payload(job.content),
            pipelining=connection.extensions.pipelining, lmtp=self.settings.lmtp)
        replies = 0
        try:
            if connection.needs_reset:
                reply = await connection.command(proto.RSET, self.settings.reply_timeout, "sending RSET")
                if reply.code != 250:
                    raise ConnectionLost(f"host {connection.peer} refused RSET: {reply}")
            connection.needs_reset = False
            output = transaction.start()
            while True:
                connection.send(output)
                if transaction.done:
                    break
                await connection.flush(self.settings.data_timeout)
                reply = await connection.reply(self.settings.reply_timeout, _doing(transaction))
                replies += 1
                output = transaction.receive(reply)
        except (ConnectionLost, proto.ClientProtocolError) as lost:
            connection.close()
            if reused and replies == 0:
                return None
            return self._partial_results(transaction, connection, recipients, str(lost), began)
        connection.needs_reset = transaction.needs_reset
        results = [self._result(decided, connection) for decided in transaction.results]
        elapsed = time.monotonic() - began
        for result in results:
            result.transfer_seconds = elapsed
        if transaction.session_usable:
            self._release(connection, job)
        else:
            connection.close()
        return results

    def _refuse_before_sending(self, connection: Connection, job: DeliveryJob) -> DeliveryResult | None:
        extensions = connection.extensions
        size = len(job.content)
        if extensions.size and size > extensions.size:
            return outcome.bounced("5.3.4", f"message size {size} exceeds size limit {extensions.size} "
                                            f"of server {connection.peer}", connection.relay)
        if job.message.smtputf8 and not extensions.smtputf8:
            return outcome.bounced("5.6.7", f"SMTPUTF8 is required, but was not offered by host "
                                            f"{connection.peer}", connection.relay)
        return None

    @staticmethod
    def _mail_command(connection: Connection, message: QueuedMessage, size: int) -> bytes:
        extensions = connection.extensions
        dsn = extensions.dsn
        return proto.mail_command(
            message.sender,
            size=size if extensions.size is not None else None,
            body=message.body_type if extensions.eightbitmime and message.body_type in ("8BITMIME",) else None,
            ret=message.dsn_ret if dsn else None,
            envid=message.dsn_envid if dsn else None,
            smtputf8=message.smtputf8 and extensions.smtputf8)

    @staticmethod
    def _rcpt_command(connection: Connection, recipient: Recipient) -> bytes:
        if not connection.extensions.dsn:
            return proto.rcpt_command(recipient.address)
        orcpt = recipient.orcpt
        if orcpt:
            # Stored decoded (type;address); RFC 3461 wants the address as xtext on the wire.
            kind, _, address = orcpt.partition(";")
            orcpt = f"{kind};{proto.encode_xtext(address)}"
        return proto.rcpt_command(recipient.address, notify=recipient.notify, orcpt=orcpt)

    def _result(self, decided, connection: Connection) -> DeliveryResult:
        reply, stage = decided
        return outcome.from_reply(reply, connection.relay, connection.host, connection.address, stage)

    def _partial_results(self, transaction, connection: Connection, recipients: list[Recipient],
                         reason: str, began: float) -> list[DeliveryResult]:
        """A session that broke mid-way: decided recipients keep their answer, the rest wait."""
        elapsed = time.monotonic() - began
        results = []
        for index in range(len(recipients)):
            decided = transaction.results[index] if index < len(transaction.results) else None
            result = self._result(decided, connection) if decided is not None else \
                outcome.deferred("4.4.2", reason, connection.relay)
            result.transfer_seconds = elapsed
            results.append(result)
        return results

    # --- the connection cache

    def _release(self, connection: Connection, job: DeliveryJob) -> None:
        settings = self.settings
        too_old = time.monotonic() - connection.created > settings.reuse_time_limit
        too_used = settings.reuse_count_limit and connection.uses >= settings.reuse_count_limit
        if connection.closed or not settings.cache_connections or too_old or too_used:
            connection.close(proto.QUIT)
            return
        key = self._cache_key(job)
        timer = asyncio.get_running_loop().call_later(settings.cache_time_limit, self._expire, key, connection)
        self._idle.setdefault(key, []).append((connection, timer))

    def _take_idle(self, key: tuple) -> Connection | None:
        idle = self._idle.get(key)
        found = None
        while idle and found is None:
            connection, timer = idle.pop()
            timer.cancel()
            if not connection.closed and not connection.reader.at_eof():
                found = connection
            else:
                connection.close()
        if idle is not None and not idle:
            del self._idle[key]
        return found

    def _expire(self, key: tuple, connection: Connection) -> None:
        idle = self._idle.get(key, [])
        for index, (cached, _) in enumerate(idle):
            if cached is connection:
                del idle[index]
                break
        if not idle:
            self._idle.pop(key, None)
        connection.close(proto.QUIT)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection, timer in idle:
                timer.cancel()
                connection.close(proto.QUIT)
        self._idle.clear()


def _doing(transaction) -> str:
    """Postfix's words for where a session broke: `... while sending RCPT TO`."""
    stage = transaction.stage
    if stage == proto.END_OF_DATA_STAGE:
        return "sending end of data -- message may be sent more than once"
    return f"sending {stage or 'MAIL FROM'}"


def _port_text(port: int | None) -> str:
    return f":{port}" if port is not None else ""
