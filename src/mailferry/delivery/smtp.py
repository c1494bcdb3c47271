"""The SMTP and LMTP client: Postfix's smtp(8) and lmtp(8) in one agent.

For each delivery job (one message, the recipients that share one next
hop) it takes a slot for the next hop (delivery/destinations.py), finds a
session: an idle cached one (delivery/session_cache.py) or a new one
(delivery/session.py: DNS, connect, greeting, EHLO/LHLO, STARTTLS, AUTH).
It then runs one pipelined transaction (protocol/smtp_client.Transaction)
per `<service>_destination_recipient_limit` recipients and reports a
result per recipient through delivery/outcome.py. A healthy session goes
back to the cache for the next message to the same next hop.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mailferry.delivery import outcome
from mailferry.delivery.connection import Connection, ConnectionLost
from mailferry.delivery.content_checks import ChecksDeferred, OutgoingChecks
from mailferry.delivery.destinations import Destinations
from mailferry.delivery.generic import GenericMaps, MapDeferred
from mailferry.delivery.oauth2 import TokenManager
from mailferry.delivery.sasl import PasswordMaps
from mailferry.delivery.session import Resolver, SessionSetup, SetupFailed, TlsPolicies
from mailferry.delivery.session_cache import SessionCache, session_key
from mailferry.delivery.settings import ClientSettings
from mailferry.maillog import Log
from mailferry.message import DeliveryResult, QueuedMessage, Recipient
from mailferry.protocol import smtp_client as proto


@dataclass(slots=True)
class DeliveryJob:
    message: QueuedMessage
    content: bytes
    recipients: list[Recipient]
    nexthop: str


class DestinationLimits(Protocol):
    """delivery.destinations.Destinations: qmgr's per-destination limits, as the client needs them."""

    def slot(self, nexthop: str) -> AbstractAsyncContextManager[None]: ...

    def mark_dead(self, nexthop: str, reason: str) -> None: ...

    def dead_reason(self, nexthop: str) -> str | None: ...

    def forget_dead(self) -> None: ...


class SmtpClient:
    def __init__(self, settings: ClientSettings, dns: Resolver, log: Log, password_maps: PasswordMaps | None = None,
                 tls_policies: TlsPolicies | None = None, destinations: DestinationLimits | None = None,
                 generic: GenericMaps | None = None, checks: OutgoingChecks | None = None,
                 oauth2_tokens: TokenManager | None = None):
        """`tls_policies`: smtp_tls_policy_maps, or None. `destinations`: shared limits, else this client's own.
        `generic`: smtp_generic_maps (lmtp_generic_maps), or None. `checks`: smtp_header_checks
        and the others (lmtp_*), or None. `oauth2_tokens`: access tokens for oauth2: entries."""
        self.settings = settings
        self.log = log
        self.generic = generic
        self.checks = checks
        self.setup = SessionSetup(settings, dns, log, password_maps, tls_policies, oauth2_tokens)
        self.cache = SessionCache(settings)
        self.destinations = destinations if destinations is not None else Destinations(settings.concurrency_limit)

    # --- the job

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]:
        if self.checks is not None:   # before smtp_generic_maps, as in Postfix's smtp_header_rewrite
            try:
                job = dataclasses.replace(job, content=await self.checks.apply(job.message.queue_id, job.content))
            except ChecksDeferred as problem:
                return [outcome.deferred("4.3.0", str(problem))] * len(job.recipients)
        if self.generic is not None:
            try:
                job = await self._generic(job)
            except MapDeferred as problem:
                self.log.warning(self.settings.transport, f"{job.message.queue_id}: {problem}")
                return [outcome.deferred("4.3.0", str(problem))] * len(job.recipients)
        limit = self.settings.recipient_limit
        results: list[DeliveryResult] = []
        for start in range(0, len(job.recipients), limit):
            results += await self._deliver_some(job, job.recipients[start:start + limit])
        return results

    async def _deliver_some(self, job: DeliveryJob, recipients: list[Recipient]) -> list[DeliveryResult]:
        unsendable = self._unsendable(job, recipients)
        sendable = [recipient for recipient in recipients if id(recipient) not in unsendable]
        results: dict[int, DeliveryResult] = dict(unsendable)
        if sendable:
            async with self.destinations.slot(job.nexthop):
                for recipient, result in zip(sendable, await self._deliver_in_slot(job, sendable)):
                    results[id(recipient)] = result
        return [results[id(recipient)] for recipient in recipients]

    def _unsendable(self, job: DeliveryJob, recipients: list[Recipient]) -> dict[int, DeliveryResult]:
        """Recipients (by id) whose address, or the sender's, cannot be put in an SMTP command
        (a CR, LF or NUL in it would end the line early and smuggle in a command of its own):
        they wait, with the reason, and are never sent. smtpd and sendmail never let such an
        address in; a table or a queue file from elsewhere might."""
        def problem(build) -> str | None:
            try:
                build()
            except ValueError as error:
                return str(error)
            return None
        reason = problem(lambda: proto.mail_command(job.message.sender))
        refused = {}
        for recipient in recipients:
            text = reason or problem(lambda: proto.rcpt_command(recipient.address))
            if text:
                self.log.warning(self.settings.transport, f"{job.message.queue_id}: {text}")
                refused[id(recipient)] = outcome.deferred("4.1.7" if reason else "4.1.3",
                                                          f"not sent: {text}")
        return refused

    async def _deliver_in_slot(self, job: DeliveryJob, recipients: list[Recipient]) -> list[DeliveryResult]:
        dead = self.destinations.dead_reason(job.nexthop)
        if dead is not None:
            return [outcome.destination_suspended(dead)] * len(recipients)
        for _ in range(2):   # a cached session may have died while idle: one fresh try
            began = time.monotonic()
            try:
                connection = await self._session(job)
            except SetupFailed as failure:
                if failure.connect_failure:
                    self.destinations.mark_dead(job.nexthop, failure.result.reason)
                return [failure.result] * len(recipients)
            setup = time.monotonic() - began
            results = await self._transaction(connection, job, recipients)
            if results is not None:
                for result in results:
                    result.setup_seconds = setup
                return results
        return [outcome.session_lost(f"lost connection with {connection.peer} while sending MAIL FROM",
                                     connection.relay)] * len(recipients)

    async def _generic(self, job: DeliveryJob) -> DeliveryJob:
        """The job as smtp_generic_maps has it leave: sender, recipients, headers."""
        generic = self.generic
        message = dataclasses.replace(job.message, sender=await generic.sender(job.message.sender))
        mapped = DeliveryJob(message, await generic.content(job.content), await generic.recipients(job.recipients),
                             job.nexthop)
        for warning in generic.warnings:
            self.log.warning(self.settings.transport, f"{job.message.queue_id}: {warning}")
        generic.warnings.clear()
        return mapped

    def forget_dead_destinations(self) -> None:
        """postqueue -f: try every destination now."""
        self.destinations.forget_dead()

    # --- sessions

    async def _session(self, job: DeliveryJob) -> Connection:
        cached = self.cache.take(self._cache_key(job))
        if cached is not None:
            return cached
        return await self.setup.open(job.nexthop, job.message.sender)

    def _cache_key(self, job: DeliveryJob) -> tuple[str, ...]:
        return session_key(self.settings, job.nexthop, job.message.sender)

    def _release(self, connection: Connection, job: DeliveryJob) -> None:
        self.cache.put(self._cache_key(job), connection)

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
                reply = await connection.reply(self.settings.reply_timeout_at(transaction.stage),
                                               _doing(transaction))
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
            return outcome.too_big_for_server(size, extensions.size, connection.peer, connection.relay)
        if job.message.smtputf8 and not extensions.smtputf8:
            return outcome.smtputf8_not_offered(connection.peer, connection.relay)
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

    def _result(self, decided: tuple[proto.ServerReply, str], connection: Connection) -> DeliveryResult:
        reply, stage = decided
        return outcome.from_reply(reply, connection.relay, connection.host, connection.address, stage)

    def _partial_results(self, transaction: proto.Transaction, connection: Connection, recipients: list[Recipient],
                         reason: str, began: float) -> list[DeliveryResult]:
        """A session that broke mid-way: decided recipients keep their answer, the rest wait."""
        elapsed = time.monotonic() - began
        results = []
        for index in range(len(recipients)):
            decided = transaction.results[index] if index < len(transaction.results) else None
            result = self._result(decided, connection) if decided is not None else \
                outcome.session_lost(reason, connection.relay)
            result.transfer_seconds = elapsed
            results.append(result)
        return results

    def close(self) -> None:
        self.cache.close()


def _doing(transaction: proto.Transaction) -> str:
    """Postfix's words for where a session broke: `... while sending RCPT TO`."""
    stage = transaction.stage
    if stage == proto.END_OF_DATA_STAGE:
        return "sending end of data -- message may be sent more than once"
    return f"sending {stage or 'MAIL FROM'}"
