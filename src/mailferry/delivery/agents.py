"""From a route's transport name to the agent that delivers: master.cf decides.

A transport name is a master.cf `unix` service (`relay unix - - n - - smtp`);
its command says which agent runs, and its `-o name=value` options are
that agent's view of main.cf. discard, error and retry need no connection
and answer at once. A name with no service, or a command mailferry cannot
run, defers with Postfix's "mail transport unavailable": the mail waits.
"""

from __future__ import annotations

from typing import Protocol

from mailferry.config.config import Config
from mailferry.config.localdomains import open_address_maps
from mailferry.config.mastercf import MasterCf, Service
from mailferry.delivery import oauth2, outcome
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.content_checks import OutgoingChecks
from mailferry.delivery.generic import GenericMaps
from mailferry.delivery.pipe import PipeAgent, PipeSettings
from mailferry.delivery.local import Forwarder, LocalAgent
from mailferry.delivery.session import Resolver
from mailferry.delivery.settings import ClientSettings
from mailferry.delivery.smtp import DeliveryJob, SmtpClient
from mailferry.delivery.spawn import Spawner
from mailferry.delivery.tls import client_context, preload_trust, trust_store_description
from mailferry.delivery.tls_policies import TlsPolicyTable
from mailferry.delivery.virtual import VirtualAgent
from mailferry.maillog import Log
from mailferry.message import DeliveryResult
from mailferry.tables import Maps, TableError, open_maps

CLIENT_COMMANDS = ("smtp", "lmtp")
# master.cf commands whose agent runs here, beside the SMTP/LMTP client: each is made by
# Transports._make_agent. (discard, error and retry answer at once: see immediate().)
LOCAL_AGENT_COMMANDS: tuple[str, ...] = ("local", "pipe", "virtual")


class DeliveryAgent(Protocol):
    """What the scheduler and Transports need of an agent: delivery.smtp.SmtpClient, or a test's script."""

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]: ...

    def forget_dead_destinations(self) -> None: ...

    def close(self) -> None: ...


class Transports:
    def __init__(self, config: Config, master: MasterCf | None, log: Log, dns: Resolver,
                 tables: dict[str, Maps] | None = None, spawner: Spawner | None = None,
                 forwarder: Forwarder | None = None):
        """`tables`: password tables opened at start, while still root (see open_client_tables).
        `spawner`: runs a pipe command or stores into a mailbox with a user's rights
        (master/spawner.py); None where no agent needs one. `forwarder`: queues the copies
        local(8) forwards (qmgr/scheduler.py CleanupForwarder)."""
        self.config = config
        self.spawner = spawner
        self.forwarder = forwarder
        self._tables = tables if tables is not None else {}
        self.master = master
        self.log = log
        self.dns = dns
        self._clients: dict[str, DeliveryAgent] = {}
        self._unavailable: dict[str, str] = {}
        self._oauth2_tokens: oauth2.TokenManager | None = None   # one per process: one refresh at a time

    def command_of(self, transport: str) -> str | None:
        service = self._service(transport)
        if service is None and transport in ("discard", "error", "retry"):
            return transport     # qmgr's own fallbacks: Postfix needs no master.cf line for them either
        return service.command if service is not None else None

    def _service(self, transport: str) -> Service | None:
        return self.master.find(transport, "unix") if self.master is not None else None

    def immediate(self, transport: str, nexthop: str) -> DeliveryResult | None:
        """The result of a transport that needs no connection, or of one that cannot run."""
        command = self.command_of(transport)
        if command == "discard":
            return outcome.sent("2.0.0", nexthop or "discarded")
        if command in ("error", "retry"):
            # error(8) run as `retry` (the stock master.cf line) defers, as in Postfix
            retry = transport == "retry" or command == "retry"
            return (outcome.retry_transport if retry else outcome.error_transport)(nexthop)
        if command in CLIENT_COMMANDS or command in LOCAL_AGENT_COMMANDS:
            return self._client_problem(transport)
        return outcome.deferred("4.3.0", f"mail transport unavailable: {self._why_unavailable(transport, command)}")

    def client(self, transport: str) -> DeliveryAgent:
        """The agent of a transport (made on first use, kept: the SMTP client for its connection cache)."""
        client = self._clients.get(transport)
        if client is None:
            if self.command_of(transport) in LOCAL_AGENT_COMMANDS:
                client = self._make_agent(transport)
                self._clients[transport] = client
            else:
                client = self._make_client(transport)
        return client

    def _make_agent(self, transport: str) -> DeliveryAgent:
        """pipe, local or virtual, with main.cf as its master.cf service sees it."""
        service = self._service(transport)
        if self.spawner is None:
            raise ValueError("no spawner to run deliveries with a user's rights")
        if service.command == "local":
            return _local_agent(_service_config(self.config, self.master, service), self.spawner, self.log,
                                self.forwarder, transport)
        if service.command == "virtual":
            return VirtualAgent.from_config(_service_config(self.config, self.master, service), self.spawner, self.log)
        if service.command == "pipe":
            return PipeAgent(PipeSettings.from_config(_service_config(self.config, self.master, service), service,
                                                      self.master.path), self.spawner, self.log)
        raise ValueError(f"mailferry has no {service.command} delivery agent yet (master.cf service {transport})")

    def _client_problem(self, transport: str) -> DeliveryResult | None:
        if transport in self._unavailable:
            return outcome.deferred("4.3.0", f"mail transport unavailable: {self._unavailable[transport]}")
        try:
            self.client(transport)
        except (ValueError, OSError) as problem:
            self._unavailable[transport] = str(problem)
            self.log.warning(transport, f"cannot start the {transport} delivery agent: {problem}")
            return outcome.deferred("4.3.0", f"mail transport unavailable: {problem}")
        return None

    def _make_client(self, transport: str) -> SmtpClient:
        settings = _client_settings(self.config, self.master, self._service(transport))
        maps = None
        if settings.sasl_enable and settings.sasl_password_maps.strip():
            maps = self._tables.get(settings.sasl_password_maps)
            if maps is None:
                maps = _open_password_maps(settings)
        if settings.tls.offers_tls:
            client_context(settings.tls)      # a bad CAfile is reported now, once, not per message
            if settings.tls.verifies:
                self.log.line(transport, f"TLS certificates are verified with {trust_store_description(settings.tls)}")
        client = SmtpClient(settings, self.dns, self.log, maps, self._tls_policy_table(transport, settings),
                            generic=self._generic_maps(transport, settings),
                            checks=self._content_checks(transport, settings),
                            oauth2_tokens=self._oauth2_token_manager() if maps is not None else None)
        self._clients[transport] = client
        return client

    def _oauth2_token_manager(self) -> oauth2.TokenManager:
        """Shared by every transport: one refresh per settings file, whichever transport needs it."""
        if self._oauth2_tokens is None:
            directory = oauth2.cache_directory(self.config.get("queue_directory"))
            self._oauth2_tokens = oauth2.TokenManager(directory, self.log)
        return self._oauth2_tokens

    def _tls_policy_table(self, transport: str, settings: ClientSettings) -> TlsPolicyTable | None:
        if not settings.tls_policy_maps.strip():
            return None
        try:
            maps = open_maps(settings.tls_policy_maps)
        except TableError as problem:
            raise ValueError(f"{settings.prefix}_tls_policy_maps: {problem}") from None
        config = _service_config(self.config, self.master, self._service(transport))
        return TlsPolicyTable(maps, config, settings.prefix, self.log, transport)

    def _generic_maps(self, transport: str, settings: ClientSettings) -> GenericMaps | None:
        name = client_parameter(settings.prefix, "smtp_generic_maps")
        config = _service_config(self.config, self.master, self._service(transport))
        try:
            maps = open_address_maps(config, name, "generic")
        except TableError as problem:
            raise ValueError(f"{name}: {problem}") from None
        return None if maps is None else GenericMaps(maps)

    def _content_checks(self, transport: str, settings: ClientSettings) -> OutgoingChecks | None:
        """smtp_header_checks and the others (lmtp_* for LMTP), as this service sees them."""
        config = _service_config(self.config, self.master, self._service(transport))
        try:
            return OutgoingChecks.from_config(config, settings.prefix, self.log, transport)
        except TableError as problem:
            raise ValueError(f"{settings.prefix}_header_checks: {problem}") from None

    def _why_unavailable(self, transport: str, command: str | None) -> str:
        if command is None:
            return f"no master.cf service named {transport} (type unix)"
        return f"mailferry has no {command} delivery agent yet (master.cf service {transport})"

    def forget_dead_destinations(self) -> None:
        for client in self._clients.values():
            client.forget_dead_destinations()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _local_agent(config: Config, spawner: Spawner, log: Log, forwarder: Forwarder | None,
                 transport: str) -> LocalAgent:
    try:
        return LocalAgent.from_config(config, spawner, log, forwarder, transport)
    except TableError as problem:
        raise ValueError(f"alias_maps: {problem}") from None


def _service_config(config: Config, master: MasterCf, service: Service) -> Config:
    """main.cf as one master.cf service sees it: with its `-o name=value` options."""
    if not service.overrides:
        return config
    return config.with_overrides(service.overrides, f"{master.path}, line {service.line}")


def _client_settings(config: Config, master: MasterCf, service: Service) -> ClientSettings:
    return ClientSettings.from_config(_service_config(config, master, service), service.name,
                                      lmtp=service.command == "lmtp")


def _open_password_maps(settings: ClientSettings) -> Maps:
    try:
        return open_maps(settings.sasl_password_maps)
    except TableError as problem:
        raise ValueError(f"{settings.prefix}_sasl_password_maps: {problem} (a table only root can "
                         "read is opened when mailferry starts: restart it after such a change)") from None


def reopen_client_tables(tables: dict[str, Maps], config: Config, master: MasterCf | None,
                         log: Log, spawner: Spawner | None = None) -> dict[str, Maps]:
    """At reload, as mail_owner: re-read each password table, so a `postmap`ed change is
    seen. A table only root can read comes from the spawner, which has just read it again
    with root's rights (master/spawner.py: its `password_tables`); without one, the copy
    opened at start stays, and the log says so."""
    root_copies: dict[str, Maps] = getattr(spawner, "password_tables", None) or {}
    fresh: dict[str, Maps] = {}
    for spec in {*tables, *password_table_specs(config, master)}:
        try:
            fresh[spec] = open_maps(spec)
        except TableError as problem:
            if spec in root_copies:
                fresh[spec] = root_copies[spec]
                continue
            if spec not in tables:
                continue      # reported when a transport needs it
            fresh[spec] = tables[spec]
            log.warning("master", f"reload: cannot re-read {spec} as mail_owner ({problem}); the copy "
                                  "read at start stays in use: restart mailferry to read a changed table")
    return fresh


def password_table_specs(config: Config, master: MasterCf | None) -> set[str]:
    specs = set()
    for service in (master.services if master is not None else []):
        if service.type == "unix" and service.command in CLIENT_COMMANDS:
            try:
                settings = _client_settings(config, master, service)
            except ValueError:
                continue
            if settings.sasl_enable and settings.sasl_password_maps.strip():
                specs.add(settings.sasl_password_maps)
    return specs


def open_client_tables(config: Config, master: MasterCf | None, log: Log) -> dict[str, Maps]:
    """Open every SMTP/LMTP client's password table, and load its CA file, while still root.

    Password tables are rightly readable by root alone (the seed's chmod 600),
    and Postfix opens them before it gives up root too. Problems are logged
    here and reported again, per message, when the transport is used.
    """
    tables: dict[str, Maps] = {}
    for service in (master.services if master is not None else []):
        if service.type != "unix" or service.command not in CLIENT_COMMANDS:
            continue
        try:
            settings = _client_settings(config, master, service)
            preload_trust(settings.tls)       # a policy table may ask for verification later
            if settings.tls.offers_tls:
                client_context(settings.tls)
            if settings.sasl_enable and settings.sasl_password_maps.strip() \
                    and settings.sasl_password_maps not in tables:
                tables[settings.sasl_password_maps] = _open_password_maps(settings)
        except (ValueError, OSError) as problem:
            text = str(problem)
            where = "" if "master.cf" in text or "main.cf" in text else f"master.cf, line {service.line}: "
            log.warning(service.name, f"{where}{text}")
    return tables
