"""One smtpd service's SASL settings (main.cf's smtpd_sasl_*), and each session's AUTH.

What is offered in EHLO (ehlo_settings): PLAIN and LOGIN, less what
smtpd_sasl_security_options (in plaintext) and smtpd_sasl_tls_security_options (after
STARTTLS) exclude; nothing before STARTTLS with smtpd_tls_auth_only; nothing at all without
smtpd_sasl_auth_enable. smtpd_sasl_exceptions_networks hides AUTH from EHLO for those clients
(they may still use it, as in Postfix); broken_sasl_auth_clients adds the old `AUTH=` line.

A session's steps (AuthSession): the AUTH command is first counted against
smtpd_client_auth_rate_limit (450 past it, unless the client is in
smtpd_client_event_limit_exceptions); the mechanism's challenges go out as 334; the
credentials go to the backend; its verdict becomes 235, 535 (after the backend's failure
delay) or 454. smtpd counts every 535 and 454 as an error, so smtpd_error_sleep_time and
the soft and hard error limits slow down and then end a guessing client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mailferry import metrics
from mailferry import refusals
from mailferry.anvil import clients
from mailferry.auth.mechanisms import MECHANISMS, PLAINTEXT_MECHANISMS, Challenge, Credentials, Exchange, Malformed
from mailferry.auth.verdict import OK, TEMPFAIL, Backend, ClientContext, Verdict
from mailferry.config.config import Config, ConfigValueError
from mailferry.config.inspect import SASL_SECURITY_OPTIONS
from mailferry.tables.match_lists import NetworkList

SECURITY_OPTIONS = frozenset(SASL_SECURITY_OPTIONS)
# What each option removes from PLAIN and LOGIN: both send the password as it is, resist no
# active attack or dictionary, and authenticate neither the server nor with forward secrecy.
_EXCLUDES_PLAINTEXT = frozenset({"noplaintext", "noactive", "mutual_auth", "forward_secrecy"})


def offered_mechanisms(options: list[str], where: str) -> tuple[str, ...]:
    unknown = [option for option in options if option.lower() not in SECURITY_OPTIONS]
    if unknown:
        raise ConfigValueError(where, f"unknown SASL security option {unknown[0]!r}; known: "
                               + ", ".join(sorted(SECURITY_OPTIONS)))
    if any(option.lower() in _EXCLUDES_PLAINTEXT for option in options):
        return tuple(mechanism for mechanism in MECHANISMS if mechanism not in PLAINTEXT_MECHANISMS)
    return MECHANISMS


def ehlo_settings(config: Config) -> dict:
    """The ServerSettings fields that say what AUTH EHLO offers, and when."""
    if not config.boolean("smtpd_sasl_auth_enable"):
        return {}
    return {
        "auth_mechanisms": offered_mechanisms(config.list("smtpd_sasl_security_options"),
                                              config.where("smtpd_sasl_security_options")),
        "auth_mechanisms_tls": offered_mechanisms(config.list("smtpd_sasl_tls_security_options"),
                                                  config.where("smtpd_sasl_tls_security_options")),
        "auth_requires_tls": config.boolean("smtpd_tls_auth_only"),
        "auth_broken_clients": config.boolean("broken_sasl_auth_clients"),
    }


def open_backend(config: Config, warn=lambda text: None) -> Backend:
    sasl_type = config.get("smtpd_sasl_type").strip().lower()
    path = config.get("smtpd_sasl_path").strip()
    failure_delay = float(config.time("smtpd_error_sleep_time"))
    local_domain = config.get("smtpd_sasl_local_domain").strip()
    try:
        if sasl_type == "dovecot":
            from mailferry.auth.dovecot import DovecotBackend
            return DovecotBackend(path, config.get("queue_directory"))
        if sasl_type == "table":
            from mailferry.auth.table import TableBackend
            return TableBackend(path, local_domain, failure_delay, warn)
        if sasl_type == "ldap":
            from mailferry.auth.ldap_bind import LdapBindBackend
            return LdapBindBackend(path, local_domain, failure_delay, warn)
    except ValueError as error:
        raise ConfigValueError(config.where("smtpd_sasl_path"), str(error)) from None
    raise ConfigValueError(config.where("smtpd_sasl_type"), (
        f"{sasl_type!r} is not a SASL type mailferry has: use dovecot (Dovecot's auth socket), "
        "table (mailferry's password table) or ldap (bind to a directory); Cyrus SASL is not supported"))


@dataclass(frozen=True, slots=True)
class Accepted:
    method: str
    username: str


@dataclass(frozen=True, slots=True)
class Refused:
    refusal: refusals.Refusal
    warning: str = ""       # for the log, Postfix's "SASL PLAIN authentication failed: ..."


class SaslServer:
    """smtpd_sasl_* for one smtpd service (None from from_config when AUTH is off)."""

    def __init__(self, backend: Backend, service_name: str, sasl_service: str, exceptions: NetworkList | None,
                 rate_limit: int, rate_unit: float, rate_exceptions: NetworkList,
                 authenticated_header: bool):
        self.backend = backend
        self.service_name = service_name
        self.sasl_service = sasl_service
        self.exceptions = exceptions
        self.rate_limit = rate_limit
        self.rate_unit = rate_unit
        self.rate_exceptions = rate_exceptions
        self.authenticated_header = authenticated_header

    @classmethod
    def from_config(cls, config: Config, service_name: str, warn=lambda text: None) -> SaslServer | None:
        if not config.boolean("smtpd_sasl_auth_enable"):
            return None
        exceptions = config.get("smtpd_sasl_exceptions_networks").strip()
        return cls(open_backend(config, warn), service_name, config.get("smtpd_sasl_service"),
                   NetworkList(exceptions) if exceptions else None,
                   config.integer("smtpd_client_auth_rate_limit"), float(config.time("anvil_rate_time_unit")),
                   NetworkList(config.get("smtpd_client_event_limit_exceptions")),
                   config.boolean("smtpd_sasl_authenticated_header"))

    def advertised_to(self, address: str) -> bool:
        return self.exceptions is None or not self.exceptions.matches(address)

    def session(self, address: str, client: str, local_address: str) -> AuthSession:
        return AuthSession(self, address, client, local_address)

    def close(self) -> None:
        self.backend.close()


class AuthSession:
    """The AUTH exchanges of one SMTP session. `begin` for AUTH, `respond` for each line after
    a 334; each returns a Challenge (send 334), a Refused, or a Verification to await."""

    def __init__(self, server: SaslServer, address: str, client: str, local_address: str):
        self.server = server
        self.address = address
        self.client = client            # name[address], for the log
        self.local_address = local_address
        self._exchange: Exchange | None = None
        self._tls_active = False

    def begin(self, mechanism: str, initial: str | None, offered: tuple[str, ...],
              tls_active: bool) -> Challenge | Refused | Verification:
        server = self.server
        if server.rate_limit > 0 and not server.rate_exceptions.matches(self.address):
            rate = clients.table().record(clients.AUTH, server.service_name, self.address, server.rate_unit)
            if rate > server.rate_limit:
                refusal = refusals.auth_rate_exceeded(self.address, rate, server.service_name)
                return Refused(refusal, f"AUTH command rate limit exceeded: {rate} from {self.client} "
                                        f"for service {server.service_name}")
        if mechanism not in offered:
            reason = f"Invalid authentication mechanism: '{_printable(mechanism)}'"
            return self._failed(mechanism, reason, "")
        self._exchange = Exchange(mechanism)
        self._tls_active = tls_active
        return self._next(self._exchange.start(initial))

    def respond(self, response: str) -> Challenge | Refused | Verification:
        if self._exchange is None:
            raise RuntimeError("respond() without an AUTH exchange")
        return self._next(self._exchange.next(response))

    def _next(self, step) -> Challenge | Refused | Verification:
        exchange = self._exchange
        if isinstance(step, Challenge):
            return step
        self._exchange = None
        if isinstance(step, Malformed):
            return self._failed(exchange.mechanism, step.reason, exchange.username_seen)
        context = ClientContext(self.address, self.local_address, self._tls_active, self.server.sasl_service)
        return Verification(self, exchange.mechanism, step, context)

    def _failed(self, mechanism: str, reason: str, username: str) -> Refused:
        return Refused(refusals.auth_failed(reason), self._warning(mechanism, reason, username))

    def _warning(self, mechanism: str, reason: str, username: str) -> str:
        metrics.auth_failed(mechanism)    # every "authentication failed" line is made here
        return (f"{self.client}: SASL {_printable(mechanism)} authentication failed: {reason}, "
                f"sasl_username={_printable(username) or '(unavailable)'}")


class Verification:
    """Credentials on their way to the backend. `run()` never raises for a backend problem."""

    def __init__(self, session: AuthSession, mechanism: str, credentials: Credentials, context: ClientContext):
        self.session = session
        self.mechanism = mechanism
        self.credentials = credentials
        self.context = context

    async def run(self) -> Accepted | Refused:
        backend = self.session.server.backend
        try:
            verdict = await backend.verify(self.credentials, self.context)
        except Exception as error:   # a bug or an unforeseen library error: never a 235, never a crash
            verdict = Verdict(TEMPFAIL, reason=f"Authentication backend error: {type(error).__name__}")
        if verdict.outcome == OK:
            return Accepted(self.mechanism, _printable(verdict.username))
        username = verdict.username or self.credentials.username
        reason = verdict.reason or "(reason unavailable)"
        warning = self.session._warning(self.mechanism, reason, username)
        if verdict.outcome == TEMPFAIL:
            return Refused(refusals.auth_unavailable(reason), warning)
        if backend.failure_delay:
            await asyncio.sleep(backend.failure_delay)
        return Refused(refusals.auth_failed(reason), warning)


def _printable(text: str) -> str:
    """As Postfix's printable(): what a client sent never writes control characters to the log."""
    return "".join(char if char.isprintable() else "?" for char in text)
