"""What a backend answers about one set of credentials, and what it is told about the client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailferry.auth.mechanisms import Credentials

OK = "ok"
FAIL = "fail"           # wrong password, unknown user: 535
TEMPFAIL = "tempfail"   # the backend could not answer: 454, never 535


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str
    username: str = ""      # on OK: the name the backend knows the user by (sasl_username)
    reason: str = ""        # for the reply and the log; never a password


@dataclass(frozen=True, slots=True)
class ClientContext:
    """What Dovecot's auth protocol is told about the session (lip, rip, secured, service)."""

    address: str
    local_address: str
    tls_active: bool
    service: str = "smtp"   # smtpd_sasl_service


class Backend(Protocol):
    """One smtpd_sasl_type. `verify` never raises for a backend that is down: it answers TEMPFAIL."""

    name: str
    # Built-in backends answer a wrong password at once; smtpd waits this long before 535
    # (Dovecot's auth server waits auth_failure_delay itself).
    failure_delay: float

    async def verify(self, credentials: Credentials, client: ClientContext) -> Verdict: ...

    def close(self) -> None: ...
