"""One session's part in the client limits (anvil/), where smtpd.c asks anvil.

Each method counts its event in the table every smtpd process shares and answers the Refusal
to give when a limit is exceeded (None to go on). A client in smtpd_client_event_limit_exceptions
is never counted, as Postfix sends anvil nothing for it. `disconnect` must run once at the end of
every session that `connect` counted; a worker that dies before has its sessions forgotten by the
master (anvil/clients.py).
"""

from __future__ import annotations

from mailferry import refusals
from mailferry.anvil import clients
from mailferry.anvil.limits import ClientLimits


class SessionLimits:
    def __init__(self, limits: ClientLimits, hostname: str, address: str):
        self.limits = limits
        self.hostname = hostname
        self.address = address
        self.counted = limits.applies_to(address)
        self._connection: clients.Connection | None = None

    def connect(self, client: str) -> refusals.Refusal | None:
        """Before the greeting: the 421 instead of the 220 when too many sessions are open, or
        too many were opened in the window."""
        if not self.counted:
            return None
        limits = self.limits
        self._connection = connection = clients.table().connect(limits.service, self.address, limits.unit)
        if 0 < limits.connection_count < connection.count:
            return refusals.too_many_connections(self.hostname, self.address, connection.count, client,
                                                 limits.service)
        if 0 < limits.connection_rate < connection.rate:
            return refusals.connection_rate_exceeded(self.hostname, self.address, connection.rate, client,
                                                     limits.service)
        return None

    def disconnect(self) -> None:
        if self._connection is not None:
            clients.table().disconnect(self._connection)
            self._connection = None

    def mail(self, client: str) -> refusals.Refusal | None:
        rate = self._record(clients.MAIL, self.limits.message_rate)
        if rate:
            return refusals.message_rate_exceeded(self.address, rate, client, self.limits.service)
        return None

    def rcpt(self, client: str) -> refusals.Refusal | None:
        rate = self._record(clients.RCPT, self.limits.recipient_rate)
        if rate:
            return refusals.recipient_rate_exceeded(self.address, rate, client, self.limits.service)
        return None

    def starttls(self, client: str) -> refusals.Refusal | None:
        """Before a handshake: refused (454) once the client has made too many new TLS sessions."""
        limit = self.limits.new_tls_rate
        if not self.counted or limit <= 0:
            return None
        if clients.table().rate(clients.NEWTLS, self.limits.service, self.address, self.limits.unit) > limit:
            return refusals.starttls_rate_refused(client, self.limits.service)
        return None

    def tls_established(self, client: str, session_reused: bool) -> refusals.Refusal | None:
        """After a handshake: a new (not resumed) TLS session counts; over the limit, the session ends."""
        if session_reused:
            return None
        rate = self._record(clients.NEWTLS, self.limits.new_tls_rate)
        if rate:
            return refusals.new_tls_rate_exceeded(self.hostname, rate, client, self.limits.service)
        return None

    def _record(self, kind: int, limit: int) -> int:
        """Count one event when its limit is on; the rate if it is now over the limit, else 0."""
        if not self.counted or limit <= 0:
            return 0
        rate = clients.table().record(kind, self.limits.service, self.address, self.limits.unit)
        return rate if rate > limit else 0
