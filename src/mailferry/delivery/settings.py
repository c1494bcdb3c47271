"""What one SMTP or LMTP client service reads from main.cf and its master.cf `-o` options.

Postfix gives the LMTP client its own copy of every parameter (`lmtp_*`,
with `lhlo` for `helo`); per-transport limits are `<service>_destination_*`
with `default_destination_*` behind them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailferry.config.config import ConfigValueError
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.dns import DEFAULT_LOOKUP, HostLookup
from mailferry.protocol.smtp_client import DATA_STAGE, END_OF_DATA_STAGE, MAIL_FROM, RCPT_TO
from mailferry.delivery.tls import TlsPolicy
from mailferry.tlsparams import log_level

DEFAULT_LIMITS = {
    "destination_concurrency_limit": "default_destination_concurrency_limit",
    "destination_recipient_limit": "default_destination_recipient_limit",
}


@dataclass(frozen=True, slots=True)
class ClientSettings:
    transport: str                 # the master.cf service name (smtp, relay, lmtp, ...)
    lmtp: bool
    helo_name: str
    connect_timeout: float | None  # None: no limit (lmtp_connect_timeout = 0)
    helo_timeout: float
    reply_timeout: float           # RSET, and a reply whose stage has no deadline of its own below
    data_timeout: float            # sending the message content
    tls: TlsPolicy
    sasl_enable: bool
    sasl_password_maps: str
    sender_dependent_authentication: bool
    sasl_security_options: list[str]
    sasl_tls_security_options: list[str]
    sasl_mechanism_filter: list[str]
    sasl_soft_bounce: bool
    concurrency_limit: int
    recipient_limit: int
    cache_connections: bool
    cache_time_limit: float
    reuse_time_limit: float
    reuse_count_limit: int
    mx_address_limit: int
    skip_5xx_greeting: bool
    tls_policy_maps: str = ""
    tls_loglevel: int = 0            # smtp_tls_loglevel: 1 logs "... TLS connection established to ..."
    note_starttls_offer: bool = False  # smtp_tls_note_starttls_offer
    # Postfix's per-reply deadlines; None: reply_timeout.
    mail_timeout: float | None = None        # smtp_mail_timeout
    rcpt_timeout: float | None = None        # smtp_rcpt_timeout
    data_init_timeout: float | None = None   # smtp_data_init_timeout
    data_done_timeout: float | None = None   # smtp_data_done_timeout
    bind_address: str = ""           # smtp_bind_address: the source of IPv4 connections
    bind_address6: str = ""          # smtp_bind_address6: the source of IPv6 connections
    bind_address_enforce: bool = False   # smtp_bind_address_enforce: a failed bind defers
    lookup: HostLookup = DEFAULT_LOOKUP  # smtp_dns_support_level, smtp_host_lookup, smtp_address_preference
    dnssec_probe: str = "ns:."
    balance_inet_protocols: bool = True  # smtp_balance_inet_protocols

    def reply_timeout_at(self, stage: str | None) -> float:
        """How long to wait for the reply to `stage` (protocol/smtp_client.py Transaction.stage)."""
        own = {MAIL_FROM: self.mail_timeout, RCPT_TO: self.rcpt_timeout, DATA_STAGE: self.data_init_timeout,
               END_OF_DATA_STAGE: self.data_done_timeout}.get(stage)
        return self.reply_timeout if own is None else own

    @property
    def prefix(self) -> str:
        return "lmtp" if self.lmtp else "smtp"

    @classmethod
    def from_config(cls, config, transport: str, lmtp: bool) -> ClientSettings:
        prefix = "lmtp" if lmtp else "smtp"

        def value(smtp_name: str, kind: str = "get"):
            return getattr(config, kind)(client_parameter(prefix, smtp_name))

        return cls(
            transport=transport, lmtp=lmtp,
            helo_name=value("smtp_helo_name"),
            connect_timeout=float(value("smtp_connect_timeout", "time")) or None,
            helo_timeout=float(value("smtp_helo_timeout", "time")),
            reply_timeout=float(max(value(name, "time") for name in (
                "smtp_mail_timeout", "smtp_rcpt_timeout", "smtp_data_init_timeout", "smtp_data_done_timeout"))),
            data_timeout=float(value("smtp_data_xfer_timeout", "time")),
            tls=TlsPolicy.from_config(config, prefix),
            sasl_enable=value("smtp_sasl_auth_enable", "boolean"),
            sasl_password_maps=value("smtp_sasl_password_maps"),
            sender_dependent_authentication=value("smtp_sender_dependent_authentication", "boolean"),
            sasl_security_options=value("smtp_sasl_security_options", "list"),
            sasl_tls_security_options=value("smtp_sasl_tls_security_options", "list"),
            sasl_mechanism_filter=value("smtp_sasl_mechanism_filter", "list"),
            sasl_soft_bounce=value("smtp_sasl_auth_soft_bounce", "boolean"),
            concurrency_limit=per_transport(config, transport, "destination_concurrency_limit"),
            recipient_limit=per_transport(config, transport, "destination_recipient_limit"),
            cache_connections=value("smtp_connection_cache_on_demand", "boolean"),
            cache_time_limit=float(value("smtp_connection_cache_time_limit", "time")),
            reuse_time_limit=float(value("smtp_connection_reuse_time_limit", "time")),
            reuse_count_limit=value("smtp_connection_reuse_count_limit", "integer"),
            mx_address_limit=value("smtp_mx_address_limit", "integer"),
            skip_5xx_greeting=value("smtp_skip_5xx_greeting", "boolean"),
            tls_policy_maps=value("smtp_tls_policy_maps"),
            tls_loglevel=_tls_log_level(config, client_parameter(prefix, "smtp_tls_loglevel")),
            note_starttls_offer=value("smtp_tls_note_starttls_offer", "boolean"),
            mail_timeout=float(value("smtp_mail_timeout", "time")),
            rcpt_timeout=float(value("smtp_rcpt_timeout", "time")),
            data_init_timeout=float(value("smtp_data_init_timeout", "time")),
            data_done_timeout=float(value("smtp_data_done_timeout", "time")),
            bind_address=_bind_address(config, client_parameter(prefix, "smtp_bind_address"), 4),
            bind_address6=_bind_address(config, client_parameter(prefix, "smtp_bind_address6"), 6),
            bind_address_enforce=value("smtp_bind_address_enforce", "boolean"),
            lookup=_host_lookup(config, prefix),
            dnssec_probe=config.get("dnssec_probe"),
            balance_inet_protocols=value("smtp_balance_inet_protocols", "boolean"),
        )


def per_transport(config, transport: str, suffix: str) -> int:
    """`relay_destination_concurrency_limit`, else `default_destination_concurrency_limit`."""
    name = f"{transport}_{suffix}"
    if config.raw(name) is not None:
        value = config.integer(name)
    else:
        value = config.integer(DEFAULT_LIMITS[suffix])
    return value if value > 0 else 1_000_000


def _tls_log_level(config, name: str) -> int:
    try:
        return log_level(config.get(name))
    except ValueError as exc:
        raise ConfigValueError(config.where(name), str(exc)) from None


def _bind_address(config, name: str, version: int) -> str:
    """A numeric address, `[...]` allowed, as Postfix's smtp_connect_addr takes it; Postfix
    stops with "bad smtp_bind_address parameter" on anything else, mailferry refuses the transport."""
    text = config.get(name).strip()
    if not text:
        return ""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise ConfigValueError(config.where(name), f"bad value {text}: expected a numeric IPv{version} "
                                                   f"address (a host name is not allowed)") from None
    if address.version != version:
        other = name + "6" if version == 4 else name[:-1]
        raise ConfigValueError(config.where(name), f"bad value {text}: not an IPv{version} address "
                                                   f"(an IPv{address.version} source belongs in {other})")
    return str(address)


def _host_lookup(config, prefix: str) -> HostLookup:
    names = [client_parameter(prefix, name) for name in
             ("smtp_dns_support_level", "smtp_host_lookup", "smtp_address_preference")]
    level, methods, preference = names
    try:
        return HostLookup.from_values(config.get(level), config.boolean("disable_dns_lookups"),
                                      config.list(methods), config.get(preference))
    except ValueError as problem:
        index, text = problem.args
        raise ConfigValueError(config.where(names[index]), text) from None


def bind_address_problems(config, master) -> list[str]:
    """For `check`: each smtp_bind_address(6) / lmtp_ twin that is no numeric address of its
    family, in main.cf or a client service's -o (the value lint cannot judge alone)."""
    views = [(config, prefix) for prefix in ("smtp", "lmtp")]
    for service in (master.services if master is not None else []):
        if service.type == "unix" and service.command in ("smtp", "lmtp") and service.overrides:
            views.append((config.with_overrides(service.overrides, f"{master.path}, line {service.line}"),
                          service.command))
    found: list[str] = []
    for view, prefix in views:
        for name, version in (("smtp_bind_address", 4), ("smtp_bind_address6", 6)):
            try:
                _bind_address(view, client_parameter(prefix, name), version)
            except ConfigValueError as problem:
                if str(problem) not in found:
                    found.append(str(problem))
    return found
