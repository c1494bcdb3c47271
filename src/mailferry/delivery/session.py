"""Opening an SMTP/LMTP session: find the servers, connect, greeting, EHLO/LHLO, STARTTLS, AUTH.

The next hop's servers are tried in order (MX preference, then address)
until one is ready for mail; when none is, the last server's failure is
what the mail reports. The session is then handed to the client for its
transaction. Whether a failure defers or bounces is delivery/outcome.py's
decision; here is only where it happens.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

from mailferry import metrics
from mailferry.delivery import oauth2, outcome, sasl, tls
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.connection import Connection, ConnectionLost
from mailferry.delivery.dns import DnsError, HostLookup, Target, balance_families
from mailferry.delivery.nexthop import Hop, parse_hop
from mailferry.delivery.sasl import PasswordMaps
from mailferry.delivery.settings import ClientSettings
from mailferry.delivery.tls import TlsPolicy
from mailferry.delivery.tls_policies import TlsPolicyError
from mailferry.maillog import Log
from mailferry.message import DeliveryResult
from mailferry.protocol import smtp_client as proto

READ_LIMIT = 1 << 20     # the stream reader's buffer: long EHLO replies and pipelined answers fit


class Resolver(Protocol):
    """delivery.dns.NexthopResolver: the servers of a next hop, best first."""

    async def targets(self, host: str, port: int | None, use_mx: bool, lookup: HostLookup = ...) -> list[Target]: ...

    async def dnssec_probe(self, probe: str) -> list[str]: ...


class TlsPolicies(Protocol):
    """delivery.tls_policies.TlsPolicyTable (smtp_tls_policy_maps)."""

    async def policy_for(self, nexthop: str, domain: str, bracketed: bool) -> TlsPolicy | None: ...


class SetupFailed(Exception):
    """This server cannot take the mail now; try the next one, report `result` if none can."""

    def __init__(self, result: DeliveryResult, connect_failure: bool = False):
        super().__init__(result.reason)
        self.result = result
        self.connect_failure = connect_failure


class SessionSetup:
    def __init__(self, settings: ClientSettings, dns: Resolver, log: Log, password_maps: PasswordMaps | None = None,
                 tls_policies: TlsPolicies | None = None, oauth2_tokens: oauth2.TokenManager | None = None):
        self.settings = settings
        self.dns = dns
        self.log = log
        self.password_maps = password_maps
        self.tls_policies = tls_policies
        self.oauth2_tokens = oauth2_tokens
        self.program = settings.transport

    async def open(self, nexthop: str, sender: str) -> Connection:
        """A session ready for MAIL FROM; SetupFailed with the result to report when none is."""
        try:
            hop = parse_hop(nexthop, self.settings.lmtp)
        except ValueError as error:
            raise SetupFailed(outcome.deferred("4.3.5", str(error))) from None
        policy = await self._tls_policy(hop)
        last: SetupFailed | None = None
        for host, address, port in await self._targets(hop):
            try:
                return await self._open(hop, host, address, port, sender, policy)
            except SetupFailed as failure:
                last = failure
        assert last is not None
        raise last

    async def _targets(self, hop: Hop) -> list[tuple[str, str, int | None]]:
        if hop.unix:
            return [("localhost", hop.host, None)]
        lookup = self.settings.lookup
        try:
            if lookup.dnssec:
                for warning in await self.dns.dnssec_probe(self.settings.dnssec_probe):
                    self.log.warning(self.program, warning)
            targets = await self.dns.targets(hop.host, hop.port, hop.use_mx, lookup)
        except ValueError as error:     # a malformed dnssec_probe: Postfix stops, the mail waits here
            raise SetupFailed(outcome.deferred("4.3.5", str(error))) from None
        except DnsError as error:
            raise SetupFailed(outcome.from_dns_error(error)) from None
        limit = self.settings.mx_address_limit
        if limit > 0:
            if self.settings.balance_inet_protocols:
                targets = balance_families(targets, limit)
            targets = targets[:limit]
        if not targets:
            raise SetupFailed(outcome.deferred("4.4.3", f"Host or domain name not found: {hop.host}"))
        return [(target.hostname, target.address, target.port) for target in targets]

    async def _tls_policy(self, hop: Hop) -> TlsPolicy:
        """smtp_tls_security_level, unless smtp_tls_policy_maps has an entry for this next hop."""
        if self.tls_policies is None or hop.unix:
            return self.settings.tls
        try:
            policy = await self.tls_policies.policy_for(hop.written, hop.domain, hop.bracketed)
        except TlsPolicyError as problem:
            raise SetupFailed(outcome.deferred("4.7.5", f"TLS policy lookup problem: {problem}")) from None
        return policy or self.settings.tls

    async def _open(self, hop: Hop, host: str, address: str, port: int | None,
                    sender: str, policy: TlsPolicy) -> Connection:
        connection = await self._connect(host, address, port)
        try:
            await self._greet(connection)
            await self._hello(connection)
            if policy.offers_tls and not hop.unix:
                await self._start_tls(connection, hop, policy)
            elif self.settings.note_starttls_offer and connection.extensions.starttls:
                self.log.line(self.program, f"Host offered STARTTLS: [{connection.host}]")
            if self.settings.sasl_enable:
                await self._authenticate(connection, hop, sender)
        except ConnectionLost as lost:
            connection.close()
            raise SetupFailed(outcome.session_lost(str(lost))) from None
        except SetupFailed:
            connection.close(proto.QUIT)
            raise
        return connection

    async def _connect(self, host: str, address: str, port: int | None) -> Connection:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                if port is None:
                    reader, writer = await asyncio.open_unix_connection(address, limit=READ_LIMIT)
                elif self.settings.bind_address or self.settings.bind_address6:
                    reader, writer = await self._connect_from(address, port)
                else:
                    reader, writer = await asyncio.open_connection(address, port, limit=READ_LIMIT)
        except TimeoutError:
            raise SetupFailed(outcome.connect_failed(host, address, port, "Connection timed out"),
                              connect_failure=True) from None
        except OSError as error:
            reason = error.strerror or str(error)
            raise SetupFailed(outcome.connect_failed(host, address, port, reason), connect_failure=True) from None
        return Connection(reader, writer, host, address, port)

    async def _connect_from(self, address: str, port: int):
        """smtp_bind_address (IPv4) or smtp_bind_address6 (IPv6) as the source, as Postfix's
        smtp_connect_addr: a failed bind is a warning, and the connection goes out from the
        system's choice of address, unless smtp_bind_address_enforce defers the mail."""
        ipv6 = ":" in address
        source = self.settings.bind_address6 if ipv6 else self.settings.bind_address
        if not source:
            return await asyncio.open_connection(address, port, limit=READ_LIMIT)
        sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
            except OSError as error:
                self.log.warning(self.program, f"smtp_connect_addr: bind {source}: {error.strerror or error}")
                if self.settings.bind_address_enforce:
                    raise SetupFailed(outcome.deferred("4.4.0", "server configuration error")) from None
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
            return await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
        except BaseException:
            sock.close()
            raise

    async def _greet(self, connection: Connection) -> None:
        reply = await connection.reply(self.settings.helo_timeout, "receiving the initial server greeting")
        if reply.code != 220:
            raise SetupFailed(outcome.greeting_refused(reply, connection.peer, connection.relay,
                                                       self.settings.skip_5xx_greeting))

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
        raise SetupFailed(outcome.hello_refused(reply, connection.peer, verb, connection.relay))

    async def _start_tls(self, connection: Connection, hop: Hop, policy: TlsPolicy) -> None:
        if not connection.extensions.starttls:
            if policy.requires_tls:
                raise SetupFailed(outcome.deferred(
                    "4.7.4", f"TLS is required, but was not offered by host {connection.peer}",
                    connection.relay))
            return
        reply = await connection.command(proto.STARTTLS, self.settings.helo_timeout, "sending STARTTLS")
        if reply.code != 220:
            if policy.requires_tls:
                raise SetupFailed(outcome.deferred(
                    "4.7.4", f"TLS is required, but host {connection.peer} refused to start TLS: {reply}",
                    connection.relay))
            return
        try:
            context = tls.client_context(policy)
        except ValueError as error:
            raise SetupFailed(outcome.deferred("4.7.5", f"cannot start TLS: {error}", connection.relay)) from None
        name = tls.server_name(policy, hop.domain, connection.host)
        try:
            async with asyncio.timeout(self.settings.helo_timeout):
                await connection.writer.start_tls(context, server_hostname=name)
        except ssl.SSLCertVerificationError as error:
            self.log.line(self.program, tls.verification_failure(
                error, connection.host, connection.address, connection.port))
            metrics.tls_outbound("failed")
            raise SetupFailed(outcome.deferred("4.7.5", "Server certificate not verified",
                                               connection.relay)) from None
        except (ssl.SSLError, OSError, TimeoutError) as error:
            connection.closed = True
            metrics.tls_outbound("failed")
            raise SetupFailed(outcome.deferred(
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
                metrics.tls_outbound("failed")
                raise SetupFailed(outcome.deferred("4.7.5", "Server certificate not verified",
                                                   connection.relay))
            trust = "Verified"
        connection.tls = trust
        metrics.tls_outbound(trust, ssl_object.version())
        if self.settings.tls_loglevel >= 1:
            self.log.line(self.program, tls.established_line(
                trust, connection.host, connection.address, connection.port, ssl_object))
        await self._hello(connection)

    async def _authenticate(self, connection: Connection, hop: Hop, sender: str) -> None:
        if self.password_maps is None:
            return
        try:
            credentials = await sasl.find_credentials(
                self.password_maps, sender=sender,
                sender_dependent=self.settings.sender_dependent_authentication,
                hostname=connection.host, nexthop=hop.written)
        except sasl.SaslLookupError as error:
            raise SetupFailed(outcome.deferred("4.3.0", f"SASL password lookup failed: {error}",
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
                filter_parameter=client_parameter(prefix, "smtp_sasl_mechanism_filter"),
                supported=credentials.mechanisms)
        except (sasl.NoMechanism, ValueError) as why:
            self.log.warning(self.program, f"SASL authentication failure: cannot authenticate to "
                                           f"server {connection.relay}: {why}")
            raise SetupFailed(outcome.deferred(
                "4.7.0", f"SASL authentication failed; cannot authenticate to server "
                         f"{connection.peer}: {why}", connection.relay)) from None
        if credentials.oauth2_settings is not None:
            await self._oauth2(connection, hop, credentials, mechanism)
            return
        await self._sasl_exchange(connection, sasl.SaslExchange(mechanism, credentials), mechanism)

    async def _oauth2(self, connection: Connection, hop: Hop, credentials: sasl.Credentials, mechanism: str) -> None:
        """XOAUTH2/OAUTHBEARER with a fresh token; a refused token is refreshed and tried once more."""
        def defer(why: str) -> SetupFailed:
            return SetupFailed(outcome.deferred("4.7.0", f"SASL authentication failed; cannot authenticate to "
                                                         f"server {connection.peer}: {why}", connection.relay))
        if self.oauth2_tokens is None:
            raise defer("no OAuth2 token cache in this process")
        try:
            settings = oauth2.load_settings(credentials.oauth2_settings)
            user = credentials.username or settings.user
            token = await self.oauth2_tokens.access_token(settings)
            for attempt in (1, 2):
                exchange = oauth2.OAuth2Exchange(mechanism, user, token, hop.domain, connection.port)
                reply = await self._sasl_round(connection, exchange, mechanism)
                if reply.code == 235:
                    connection.authenticated = True
                    return
                refused = exchange.refused_token or reply.code == 535
                if attempt == 2 or not refused:
                    break
                detail = exchange.error_text()
                self.log.line(self.program, f"server {connection.peer} refused the OAuth2 access token for {user}"
                                            f"{f' ({detail})' if detail else ''}: {reply}; refreshing it")
                token = await self.oauth2_tokens.access_token(settings, stale=token)
        except oauth2.OAuth2Error as why:
            self.log.warning(self.program, f"SASL authentication failure: cannot authenticate to server "
                                           f"{connection.relay}: {why}")
            raise defer(str(why)) from None
        except ValueError as why:
            raise defer(str(why)) from None
        raise self._refused(connection, reply)

    async def _sasl_exchange(self, connection: Connection, exchange: sasl.SaslExchange, mechanism: str) -> None:
        reply = await self._sasl_round(connection, exchange, mechanism)
        if reply.code == 235:
            connection.authenticated = True
            return
        raise self._refused(connection, reply)

    def _refused(self, connection: Connection, reply) -> SetupFailed:
        self.log.warning(self.program, f"SASL authentication failed; server {connection.peer} said: {reply}")
        return SetupFailed(outcome.sasl_refused(reply, connection.peer, connection.relay,
                                                self.settings.sasl_soft_bounce))

    async def _sasl_round(self, connection: Connection, exchange, mechanism: str):
        """One AUTH command and its challenges; the final reply."""
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
        return reply
