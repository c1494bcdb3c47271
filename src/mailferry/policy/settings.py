"""Everything the restriction engine reads from main.cf, read once per configuration.

Tables named in the restriction lists (check_*_access TABLE, a bare
`type:table` item, smtpd_sender_login_maps, rbl_reply_maps) are opened here,
so a table that cannot be opened is a TableError at start or reload, never
at the first RCPT. Restriction classes (smtpd_restriction_classes) are read
as parameters of their own, as Postfix does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailferry.config.config import Config
from mailferry.config.localdomains import VirtualAliasDomains, address_domain_matcher, local_domain_matcher
from mailferry.policy.access import AccessOrder
from mailferry.routing.addresses import Canonicalizer
from mailferry.policy.policy_service import PolicyClient, PolicyServiceSettings
from mailferry.policy.sender_login import SenderLogins
from mailferry.syntax import split_list
from mailferry.tables import Maps, open_maps
from mailferry.tables.match_lists import DomainList

STAGES = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
          "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
          "smtpd_end_of_data_restrictions")

# Restrictions followed by a table.
TABLE_RESTRICTIONS = frozenset({
    "check_client_access", "check_reverse_client_access", "check_helo_access", "check_sender_access",
    "check_recipient_access", "check_sasl_access", "check_etrn_access",
})
# Restrictions followed by some other argument.
ARGUMENT_RESTRICTIONS = frozenset({
    "check_policy_service", "reject_rbl_client", "reject_rbl", "permit_dnswl_client", "reject_rhsbl_client",
    "permit_rhswl_client", "reject_rhsbl_reverse_client", "reject_rhsbl_helo", "reject_rhsbl_sender",
    "reject_rhsbl_recipient", "sleep",
})


@dataclass(frozen=True, slots=True)
class Codes:
    reject: int = 554
    defer: int = 450
    access_map_reject: int = 554
    access_map_defer: int = 450
    relay_domains_reject: int = 554
    unknown_client_reject: int = 450
    unknown_address_reject: int = 450
    unknown_hostname_reject: int = 450
    invalid_hostname_reject: int = 501
    non_fqdn_reject: int = 504
    maps_rbl_reject: int = 554
    plaintext_reject: int = 450
    multi_recipient_bounce_reject: int = 550

    @classmethod
    def from_config(cls, config: Config) -> Codes:
        read = config.integer
        return cls(reject=read("reject_code"), defer=read("defer_code"),
                   access_map_reject=read("access_map_reject_code"),
                   access_map_defer=read("access_map_defer_code"),
                   relay_domains_reject=read("relay_domains_reject_code"),
                   unknown_client_reject=read("unknown_client_reject_code"),
                   unknown_address_reject=read("unknown_address_reject_code"),
                   unknown_hostname_reject=read("unknown_hostname_reject_code"),
                   invalid_hostname_reject=read("invalid_hostname_reject_code"),
                   non_fqdn_reject=read("non_fqdn_reject_code"),
                   maps_rbl_reject=read("maps_rbl_reject_code"),
                   plaintext_reject=read("plaintext_reject_code"),
                   multi_recipient_bounce_reject=read("multi_recipient_bounce_reject_code"))


@dataclass(slots=True)
class PolicySettings:
    lists: dict[str, list[str]]                 # stage parameter -> its restrictions
    classes: dict[str, list[str]]               # smtpd_restriction_classes
    codes: Codes
    delay_reject: bool
    soft_bounce: bool
    sasl_enabled: bool
    reject_unlisted_sender: bool
    reject_unlisted_recipient: bool
    relay_before_recipient: bool
    null_access_key: str
    unknown_address_tempfail_defers_if_permit: bool
    unknown_helo_tempfail_defers_if_permit: bool
    default_rbl_reply: str
    access_order: AccessOrder
    canonicalizer: Canonicalizer
    relay_domains: DomainList
    virtual_domains: list[VirtualAliasDomains]
    tables: dict[str, Maps] = field(default_factory=dict)
    policy_clients: dict[str, PolicyClient] = field(default_factory=dict)
    rbl_reply_maps: Maps | None = None
    sender_logins: SenderLogins | None = None
    login_header_check: bool = False
    inet_addresses: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Config) -> PolicySettings:
        lists = {name: config.list(name) for name in STAGES}
        classes = {name: config.list(name) for name in config.list("smtpd_restriction_classes")}
        is_local = local_domain_matcher(config)
        canonicalizer = Canonicalizer(is_local, config.get("myhostname"), config.get("myorigin"),
                                      config.boolean("allow_percent_hack"), config.boolean("swap_bangpath"),
                                      config.boolean("resolve_dequoted_address"),
                                 config.boolean("resolve_numeric_domain"))
        parent_styles = config.list("parent_domain_matches_subdomains")
        logins = None
        if config.get("smtpd_sender_login_maps").strip():
            logins = SenderLogins(open_maps(config.get("smtpd_sender_login_maps")), canonicalizer,
                                  address_domain_matcher(config), config.get("recipient_delimiter"))
        service_defaults = _policy_service_settings(config)
        settings = cls(
            lists=lists, classes=classes, codes=Codes.from_config(config),
            delay_reject=config.boolean("smtpd_delay_reject"), soft_bounce=config.boolean("soft_bounce"),
            sasl_enabled=config.boolean("smtpd_sasl_auth_enable"),
            reject_unlisted_sender=config.boolean("smtpd_reject_unlisted_sender"),
            reject_unlisted_recipient=config.boolean("smtpd_reject_unlisted_recipient"),
            relay_before_recipient=config.boolean("smtpd_relay_before_recipient_restrictions"),
            null_access_key=config.get("smtpd_null_access_lookup_key"),
            unknown_address_tempfail_defers_if_permit=_defers_if_permit(config, "unknown_address_tempfail_action"),
            unknown_helo_tempfail_defers_if_permit=_defers_if_permit(config, "unknown_helo_hostname_tempfail_action"),
            default_rbl_reply=config.raw("default_rbl_reply") or "",   # $rbl_* are expanded per reply
            access_order=AccessOrder("smtpd_access_maps" in parent_styles, config.get("recipient_delimiter")),
            canonicalizer=canonicalizer,
            relay_domains=DomainList(config.get("relay_domains"), "relay_domains" in parent_styles),
            virtual_domains=[VirtualAliasDomains(config.get(name))
                             for name in ("virtual_alias_domains", "virtual_mailbox_domains")],
            sender_logins=logins,
            login_header_check=config.boolean("smtpd_sender_login_header_check"),
        )
        if config.get("rbl_reply_maps").strip():
            settings.rbl_reply_maps = open_maps(config.get("rbl_reply_maps"))
        for restrictions in [*lists.values(), *classes.values()]:
            settings._open_arguments(restrictions, service_defaults, config.get("queue_directory"))
        return settings

    def _open_arguments(self, restrictions: list[str], service_defaults: PolicyServiceSettings,
                        queue_directory: str) -> None:
        index = 0
        while index < len(restrictions):
            item = restrictions[index]
            name = item.lower()
            if name in TABLE_RESTRICTIONS or name in ARGUMENT_RESTRICTIONS:
                argument = restrictions[index + 1] if index + 1 < len(restrictions) else ""
                if name in TABLE_RESTRICTIONS and argument:
                    self._open_table(argument)
                elif name == "check_policy_service" and argument and argument not in self.policy_clients:
                    self.policy_clients[argument] = PolicyClient.from_spec(argument, service_defaults,
                                                                           queue_directory)
                index += 2
                continue
            if ":" in item and not item.startswith("{"):
                self._open_table(item)   # a bare table: the stage's own check_*_access
            index += 1

    def _open_table(self, spec: str) -> None:
        if spec not in self.tables:
            self.tables[spec] = open_maps(spec)

    def close(self) -> None:
        for client in self.policy_clients.values():
            client.close()


def _defers_if_permit(config: Config, name: str) -> bool:
    return config.get(name).strip().lower() == "defer_if_permit"


def _policy_service_settings(config: Config) -> PolicyServiceSettings:
    return PolicyServiceSettings(
        timeout=float(config.time("smtpd_policy_service_timeout")),
        max_idle=float(config.time("smtpd_policy_service_max_idle")),
        max_ttl=float(config.time("smtpd_policy_service_max_ttl")),
        request_limit=config.integer("smtpd_policy_service_request_limit"),
        retry_delay=float(config.time("smtpd_policy_service_retry_delay")),
        try_limit=config.integer("smtpd_policy_service_try_limit"),
        default_action=config.get("smtpd_policy_service_default_action"),
        policy_context=config.get("smtpd_policy_service_policy_context"))


def split_restrictions(value: str) -> list[str]:
    return split_list(value)
