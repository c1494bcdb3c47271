"""smtpd_client_*_limit for one smtpd service, as smtpd.c reads them.

A limit of 0 means none. A client in smtpd_client_event_limit_exceptions (Postfix's "hoggers",
default $mynetworks) is neither counted nor limited: Postfix sends anvil no event for it at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry.config.config import Config
from mailferry.tables.match_lists import NetworkList


@dataclass(frozen=True, slots=True)
class ClientLimits:
    service: str                # the master.cf service name: anvil's clients are per service
    unit: float                 # anvil_rate_time_unit, seconds
    connection_count: int       # smtpd_client_connection_count_limit
    connection_rate: int        # smtpd_client_connection_rate_limit
    message_rate: int           # smtpd_client_message_rate_limit
    recipient_rate: int         # smtpd_client_recipient_rate_limit
    new_tls_rate: int           # smtpd_client_new_tls_session_rate_limit
    auth_rate: int              # smtpd_client_auth_rate_limit
    exceptions: NetworkList     # smtpd_client_event_limit_exceptions

    @classmethod
    def from_config(cls, config: Config, service: str) -> ClientLimits:
        return cls(service=service, unit=float(config.time("anvil_rate_time_unit")),
                   connection_count=config.integer("smtpd_client_connection_count_limit"),
                   connection_rate=config.integer("smtpd_client_connection_rate_limit"),
                   message_rate=config.integer("smtpd_client_message_rate_limit"),
                   recipient_rate=config.integer("smtpd_client_recipient_rate_limit"),
                   new_tls_rate=config.integer("smtpd_client_new_tls_session_rate_limit"),
                   auth_rate=config.integer("smtpd_client_auth_rate_limit"),
                   exceptions=NetworkList(config.get("smtpd_client_event_limit_exceptions")))

    def applies_to(self, address: str) -> bool:
        return not self.exceptions.matches(address)
