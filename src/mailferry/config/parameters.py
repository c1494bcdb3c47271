"""The one table of every Postfix parameter mailferry knows.

Each parameter has its default as a raw, unexpanded string (the way
`postconf -d` prints it), a kind, mailferry's status, and for times the unit
a bare number is in (`maximal_queue_lifetime = 5` is five days,
`smtpd_timeout = 5` five seconds).

Where the facts come from: scripts/gen-parameters reads an installed
Postfix (`postconf -d`, postconf(5)) and writes parameters_data.py with the
names, defaults, kinds and units; mailferry's own defaults are applied there
too. Statuses are decided here, by hand: to mark a parameter implemented,
add its name to IMPLEMENTED_PARAMETERS below. One line, no regeneration.

Statuses:
- IMPLEMENTED: mailferry does what Postfix does with it.
- NO_EFFECT: accepted without a warning, and it makes no difference to
  mailferry (install paths, Postfix's own internals).
- NOT_YET: a real setting that mailferry does not act on yet.

The dict is built on first use; importing this module only compiles one
string, so the CLI can import it on start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry.config import parameters_data

IMPLEMENTED = "implemented"
NO_EFFECT = "no-effect"
NOT_YET = "not-yet"
STATUSES = (IMPLEMENTED, NO_EFFECT, NOT_YET)

KINDS = ("bool", "time", "size", "int", "str", "list")
TIME_UNITS = "smhdw"


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    default: str | None  # None: computed at start-up, see COMPUTED
    kind: str  # one of KINDS
    status: str  # one of STATUSES
    time_unit: str  # unit of a bare number, for kind "time"; "" otherwise
    # What the value may be beyond its kind (config/values.py check_choices): "one" of `choices`,
    # "some" of them (a list of words), "soft" (one of them, else a warning: Postfix falls back),
    # or "syntax" with choices[0] naming a reader in values.py.
    shape: str = ""
    choices: tuple[str, ...] = ()


IMPLEMENTED_PARAMETERS = frozenset({
    # The restriction engine (policy/; docs/restrictions.md)
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
    "smtpd_delay_reject",
    "smtpd_restriction_classes",
    "smtpd_relay_before_recipient_restrictions",
    "smtpd_reject_unlisted_sender",
    "smtpd_null_access_lookup_key",
    "smtpd_sender_login_maps",
    "smtpd_sender_login_header_check",
    "smtpd_peername_lookup",
    "reject_code",
    "defer_code",
    "access_map_reject_code",
    "access_map_defer_code",
    "unknown_client_reject_code",
    "unknown_address_reject_code",
    "unknown_hostname_reject_code",
    "invalid_hostname_reject_code",
    "non_fqdn_reject_code",
    "maps_rbl_reject_code",
    "plaintext_reject_code",
    "multi_recipient_bounce_reject_code",
    "unknown_address_tempfail_action",
    "unknown_helo_hostname_tempfail_action",
    "default_rbl_reply",
    "rbl_reply_maps",
    "smtpd_policy_service_timeout",
    "smtpd_policy_service_max_idle",
    "smtpd_policy_service_max_ttl",
    "smtpd_policy_service_request_limit",
    "smtpd_policy_service_retry_delay",
    "smtpd_policy_service_try_limit",
    "smtpd_policy_service_default_action",
    "smtpd_policy_service_policy_context",
    # local(8) and aliases (delivery/local.py, cli/newaliases.py; docs/local-delivery.md)
    "alias_maps",
    "alias_database",
    "allow_mail_to_commands",
    "allow_mail_to_files",
    "command_expansion_filter",
    "command_time_limit",
    "default_privs",
    "deliver_lock_attempts",
    "deliver_lock_delay",
    "stale_lock_time",
    "enable_original_recipient",
    "export_environment",
    "forward_path",
    "home_mailbox",
    "luser_relay",
    "mail_spool_directory",
    "mailbox_command",
    "mailbox_delivery_lock",
    "mailbox_size_limit",
    "owner_request_special",
    "prepend_delivered_header",
    # The milter client (milter/, smtpd/milters.py, cleanup/milters.py; docs/milter.md)
    "smtpd_milters",
    "smtpd_milter_maps",
    "milter_default_action",
    "milter_protocol",
    "milter_connect_timeout",
    "milter_command_timeout",
    "milter_content_timeout",
    "milter_connect_macros",
    "milter_helo_macros",
    "milter_mail_macros",
    "milter_rcpt_macros",
    "milter_data_macros",
    "milter_end_of_header_macros",
    "milter_end_of_data_macros",
    "milter_macro_daemon_name",
    "milter_macro_v",
    "milter_macro_defaults",
    "2bounce_notice_recipient",
    "bounce_queue_lifetime",
    "bounce_size_limit",
    "default_destination_concurrency_limit",
    "default_destination_recipient_limit",
    "delay_warning_time",
    # Milters for mail from sendmail/pickup (local/pickup_milters.py; docs/milter.md)
    "non_smtpd_milters",
    # Content filters (smtpd and pickup stamp it, qmgr routes by it; docs/content-filter.md)
    "content_filter",
    "default_filter_nexthop",
    # Header and body checks (content/, cleanup/checks.py, delivery/content_checks.py; docs/content-checks.md)
    "header_checks",
    "mime_header_checks",
    "nested_header_checks",
    "body_checks",
    "header_size_limit",
    "body_checks_size_limit",
    "disable_mime_input_processing",
    "strict_mime_encoding_domain",
    "mime_boundary_length_limit",
    "mime_nesting_limit",
    "smtp_header_checks",
    "smtp_mime_header_checks",
    "smtp_nested_header_checks",
    "smtp_body_checks",
    "lmtp_header_checks",
    "lmtp_mime_header_checks",
    "lmtp_nested_header_checks",
    "lmtp_body_checks",
    "receive_override_options",
    "mailbox_transport",
    "maximal_backoff_time",
    "maximal_queue_lifetime",
    "minimal_backoff_time",
    "qmgr_message_active_limit",
    "recipient_delimiter",
    # virtual(8) hosted mailboxes, address classes and RCPT-time recipient tables
    # (delivery/virtual.py, routing/classes.py, smtpd/recipient_maps.py; docs/virtual-delivery.md)
    "virtual_mailbox_domains",
    "virtual_mailbox_maps",
    "virtual_mailbox_base",
    "virtual_uid_maps",
    "virtual_gid_maps",
    "virtual_minimum_uid",
    "virtual_mailbox_limit",
    "virtual_mailbox_lock",
    "virtual_transport",
    "deliver_lock_attempts",
    "deliver_lock_delay",
    "stale_lock_time",
    "local_recipient_maps",
    "unknown_local_recipient_reject_code",
    "unknown_virtual_mailbox_reject_code",
    "relay_recipient_maps",
    "unknown_relay_recipient_reject_code",
    "show_user_unknown_table_name",
    # pipe(8) (delivery/pipe.py; docs/pipe.md)
    "command_time_limit",
    "export_environment",
    "transport_time_limit",
    # SMTP AUTH, server side (auth/; docs/auth.md)
    "smtpd_sasl_auth_enable",
    "smtpd_sasl_type",
    "smtpd_sasl_path",
    "smtpd_sasl_security_options",
    "smtpd_sasl_tls_security_options",
    "smtpd_tls_auth_only",
    "broken_sasl_auth_clients",
    "smtpd_sasl_authenticated_header",
    "smtpd_sasl_local_domain",
    "smtpd_sasl_exceptions_networks",
    "smtpd_sasl_service",
    "smtpd_client_auth_rate_limit",
    "smtpd_client_event_limit_exceptions",
    "anvil_rate_time_unit",
    # Client limits (anvil/, smtpd/client_limits.py, smtpd/listener.py; docs/limits.md)
    "smtpd_client_connection_count_limit",
    "smtpd_client_connection_rate_limit",
    "smtpd_client_message_rate_limit",
    "smtpd_client_recipient_rate_limit",
    "smtpd_client_new_tls_session_rate_limit",
    "anvil_status_update_time",
    "smtpd_per_request_deadline",
    # Address rewriting (cleanup/rewrite.py, smtpd/recipient_maps.py, delivery/generic.py; docs/rewriting.md)
    "virtual_alias_maps",
    "virtual_alias_domains",
    "virtual_alias_recursion_limit",
    "virtual_alias_expansion_limit",
    "virtual_alias_address_length_limit",
    "unknown_virtual_alias_reject_code",
    "smtpd_reject_unlisted_recipient",
    "canonical_maps",
    "sender_canonical_maps",
    "recipient_canonical_maps",
    "canonical_classes",
    "sender_canonical_classes",
    "recipient_canonical_classes",
    "masquerade_domains",
    "masquerade_classes",
    "masquerade_exceptions",
    "append_dot_mydomain",
    "propagate_unmatched_extensions",
    # Automatic BCC and trivial-rewrite's address forms (cleanup/rewrite.py; docs/rewriting.md)
    "sender_bcc_maps",
    "recipient_bcc_maps",
    "always_bcc",
    "allow_percent_hack",
    "swap_bangpath",
    "parent_domain_matches_subdomains",
    "resolve_dequoted_address",
    "resolve_numeric_domain",
    "smtp_generic_maps",
    "lmtp_generic_maps",
    "relay_transport",
    "relayhost",
    "transport_maps",
    "transport_destination_concurrency_limit",
    "transport_destination_recipient_limit",
    "smtp_helo_name",
    "smtp_connect_timeout",
    "smtp_helo_timeout",
    "smtp_mail_timeout",
    "smtp_rcpt_timeout",
    "smtp_data_init_timeout",
    "smtp_data_done_timeout",
    "smtp_data_xfer_timeout",
    "smtp_sasl_auth_enable",
    "smtp_sasl_password_maps",
    "smtp_sender_dependent_authentication",
    "smtp_sasl_security_options",
    "smtp_sasl_tls_security_options",
    "smtp_sasl_mechanism_filter",
    "smtp_sasl_auth_soft_bounce",
    "smtp_connection_cache_on_demand",
    "smtp_connection_cache_time_limit",
    "smtp_connection_reuse_time_limit",
    "smtp_connection_reuse_count_limit",
    "smtp_mx_address_limit",
    # Source address and host lookup of the SMTP/LMTP client (delivery/dns.py, session.py)
    "smtp_bind_address",
    "smtp_bind_address6",
    "smtp_bind_address_enforce",
    "smtp_address_preference",
    "smtp_host_lookup",
    "smtp_dns_support_level",
    "lmtp_bind_address",
    "lmtp_bind_address6",
    "lmtp_bind_address_enforce",
    "lmtp_address_preference",
    "lmtp_host_lookup",
    "lmtp_dns_support_level",
    "smtp_balance_inet_protocols",
    "lmtp_balance_inet_protocols",
    "disable_dns_lookups",
    "dnssec_probe",
    "smtp_skip_5xx_greeting",
    "smtp_tls_security_level",
    "smtp_tls_CAfile",
    "smtp_tls_CApath",
    "smtp_tls_servername",
    "smtp_tls_mandatory_protocols",
    "smtp_tls_protocols",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "smtp_tls_verify_cert_match",
    "smtp_tls_secure_cert_match",
    "lmtp_lhlo_name",
    "lmtp_connect_timeout",
    "lmtp_lhlo_timeout",
    "lmtp_mail_timeout",
    "lmtp_rcpt_timeout",
    "lmtp_data_init_timeout",
    "lmtp_data_done_timeout",
    "lmtp_data_xfer_timeout",
    "lmtp_sasl_auth_enable",
    "lmtp_sasl_password_maps",
    "lmtp_sender_dependent_authentication",
    "lmtp_sasl_security_options",
    "lmtp_sasl_tls_security_options",
    "lmtp_sasl_mechanism_filter",
    "lmtp_sasl_auth_soft_bounce",
    "lmtp_connection_cache_on_demand",
    "lmtp_connection_cache_time_limit",
    "lmtp_connection_reuse_time_limit",
    "lmtp_connection_reuse_count_limit",
    "lmtp_mx_address_limit",
    "lmtp_skip_5xx_greeting",
    "lmtp_tls_security_level",
    "lmtp_tls_CAfile",
    "lmtp_tls_CApath",
    "lmtp_tls_servername",
    "lmtp_tls_mandatory_protocols",
    "lmtp_tls_protocols",
    "lmtp_tls_cert_file",
    "lmtp_tls_key_file",
    "lmtp_tls_verify_cert_match",
    "lmtp_tls_secure_cert_match",
    "smtp_use_tls",
    "smtp_enforce_tls",
    "smtp_tls_enforce_peername",
    "lmtp_use_tls",
    "lmtp_enforce_tls",
    "lmtp_tls_enforce_peername",
    "sender_dependent_relayhost_maps",
    "sender_dependent_default_transport_maps",
    "smtp_tls_policy_maps",
    "lmtp_tls_policy_maps",
    "append_at_myorigin",
    "config_directory",
    "default_database_type",
    "default_transport",
    "disable_vrfy_command",
    "hopcount_limit",
    "inet_interfaces",
    "inet_protocols",
    "line_length_limit",
    "local_header_rewrite_clients",
    "local_transport",
    "mail_name",
    "mail_owner",
    "maillog_file",
    "message_size_limit",
    "mydestination",
    "mydomain",
    "myhostname",
    "mynetworks",
    "mynetworks_style",
    "myorigin",
    "proxy_interfaces",
    "proxy_read_maps",
    "queue_directory",
    "queue_minfree",
    "queue_run_delay",
    "relay_domains",
    "relay_domains_reject_code",
    "smtpd_banner",
    "smtpd_discard_ehlo_keywords",
    "smtpd_enforce_tls",
    "smtpd_error_sleep_time",
    "smtpd_forbid_bare_newline",
    "smtpd_forbid_bare_newline_reject_code",
    "smtpd_forbid_unauth_pipelining",
    "smtpd_hard_error_limit",
    "smtpd_helo_required",
    "smtpd_junk_command_limit",
    "smtpd_recipient_limit",
    "smtpd_recipient_overshoot_limit",
    "smtpd_recipient_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_soft_error_limit",
    "smtpd_timeout",
    "smtpd_tls_cert_file",
    "smtpd_tls_chain_files",
    "smtpd_tls_key_file",
    "smtpd_tls_received_header",
    "smtpd_tls_security_level",
    "smtpd_use_tls",
    "smtputf8_enable",
    "strict_rfc821_envelopes",
    "syslog_name",
    # Postmaster notices (config/notify.py, qmgr/bounce.py, smtpd/transcript.py; docs/notify.md)
    "notify_classes",
    "bounce_notice_recipient",
    "delay_notice_recipient",
    "error_notice_recipient",
    "double_bounce_sender",
    "smtpd_history_flush_threshold",
    # syslog(3)'s facility when there is no maillog_file (maillog.py, master/server.py; docs/notify.md)
    "syslog_facility",
    # smtpd's conversation with listed clients in the log (smtpd/debug_peer.py; docs/notify.md)
    "debug_peer_list",
    "debug_peer_level",
    # Server-side TLS, the submission/submissions services (smtpd/tls.py, tlsparams.py; docs/tls.md)
    "smtpd_tls_wrappermode",
    "smtpd_tls_loglevel",
    "smtpd_tls_protocols",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_ciphers",
    "smtpd_tls_mandatory_ciphers",
    "smtpd_tls_exclude_ciphers",
    "smtpd_tls_mandatory_exclude_ciphers",
    "tls_high_cipherlist",
    "tls_medium_cipherlist",
    "tls_low_cipherlist",
    "tls_export_cipherlist",
    "tls_null_cipherlist",
    "tls_preempt_cipherlist",
    "tls_ssl_options",
    "smtpd_tls_dh1024_param_file",
    "smtpd_tls_eecdh_grade",
    "tls_eecdh_strong_curve",
    "tls_eecdh_ultra_curve",
    "smtpd_tls_session_cache_timeout",
    "smtpd_tls_CAfile",
    "smtpd_tls_CApath",
    "smtpd_tls_ask_ccert",
    "tls_server_sni_maps",
    # Client-side TLS (delivery/tls.py, delivery/settings.py)
    "smtp_tls_ciphers",
    "smtp_tls_mandatory_ciphers",
    "smtp_tls_exclude_ciphers",
    "smtp_tls_mandatory_exclude_ciphers",
    "smtp_tls_loglevel",
    "smtp_tls_note_starttls_offer",
    "lmtp_tls_ciphers",
    "lmtp_tls_mandatory_ciphers",
    "lmtp_tls_exclude_ciphers",
    "lmtp_tls_mandatory_exclude_ciphers",
    "lmtp_tls_loglevel",
    "lmtp_tls_note_starttls_offer",
    # Prometheus metrics (metrics/, docs/metrics.md): mailferry's own.
    "mailferry_metrics_listen",
    "mailferry_metrics_allow_remote",
    # Postfix's level-dependent defaults (config/compat.py; docs/validation.md)
    "compatibility_level",
    # Per-service cleanup: master.cf cleanup services with their -o (cleanup/services.py)
    "cleanup_service_name",
})

NO_EFFECT_PARAMETERS = frozenset({
    # Where Postfix installed its own files.
    "command_directory",
    "daemon_directory",
    "html_directory",
    "mailq_path",
    "manpage_directory",
    "meta_directory",
    "newaliases_path",
    "readme_directory",
    "sample_directory",
    "sendmail_path",
    "shlib_directory",
    # comsat notification from Postfix's local(8) mailbox delivery.
    "biff",
    # Feeding Postfix's own PRNG; Python's ssl leaves seeding to OpenSSL.
    "tls_daemon_random_bytes",
    "tls_random_bytes",
    "tls_random_exchange_name",
    "tls_random_prng_update_period",
    "tls_random_reseed_period",
    "tls_random_source",
    # Postfix's queue is a directory tree; mailferry's is SQLite.
    "hash_queue_depth",
    "hash_queue_names",
    # Berkeley DB tuning; mailferry's indexed tables are LMDB.
    "berkeley_db_create_buffer_size",
    "berkeley_db_read_buffer_size",
    # Python's ssl keeps TLS sessions in memory and cannot set a group list; check says so
    # with a warning of its own (config/tlscheck.py, docs/tls.md).
    "smtpd_tls_session_cache_database",
    "smtp_tls_session_cache_database",
    "lmtp_tls_session_cache_database",
    "tls_eecdh_auto_curves",
    # Postfix 3.6 and later ignore these too.
    "smtpd_tls_dh512_param_file",
    "tlsproxy_tls_dh512_param_file",
    # proxy: is served inside each process (tables/proxy.py), not by a proxymap service; and
    # mailferry writes no table through it (no verify, postscreen or SASL auth cache).
    "proxymap_service_name",
    "proxywrite_service_name",
    "proxy_write_maps",
    # No separate trivial-rewrite or qmgr service to name: the defaults are accepted silently,
    # another name gets a warning from check (config/cleanupcheck.py, docs/content-checks.md).
    "rewrite_service_name",
    "queue_service_name",
})

# mailferry's own parameters, which Postfix does not have: same line format as
# parameters_data.PARAMETERS (name, kind, time unit, default). Each is
# documented as mailferry's own in docs/.
MAILFERRY_PARAMETERS = """
smtpd_sender_login_header_check bool - no
mailferry_metrics_listen str -
mailferry_metrics_allow_remote bool - no
"""
MAILFERRY_OWN = frozenset(line.split(" ", 1)[0] for line in MAILFERRY_PARAMETERS.split("\n") if line)

# Defaults that depend on the host or the running process. Their default is
# None here; config code computes them (see docs/parameters.md for the rules).
COMPUTED = frozenset({
    "mydomain",
    "myhostname",
    "mynetworks",
    "process_id",
    "process_name",
    "service_name",
})

# Parameters Postfix never `$`-expands: their values keep `$` for later, per-message
# expansion by the program that uses them (local(8)'s forward_path and luser_relay, the
# reply text of default_rbl_reply and smtpd_reject_footer) or for /bin/sh (mailbox_command:
# `procmail -a "$EXTENSION"` reaches the shell as written). `postconf -x` prints them
# unexpanded; tests/unit/config/test_expansion_audit.py checks this list against it.
RAW_PARAMETERS = frozenset({
    "command_execution_directory",
    "default_rbl_reply",
    "forward_path",
    "luser_relay",
    "mailbox_command",
    "postscreen_expansion_filter",
    "postscreen_reject_footer",
    "smtpd_expansion_filter",
    "smtpd_reject_footer",
})

# Postfix accepts <service>_<suffix> for a delivery service named in
# master.cf: `relay_destination_concurrency_limit` for a service `relay`.
PER_TRANSPORT_SUFFIXES = frozenset(row[0] for row in parameters_data.PER_TRANSPORT)

# Not parameters, but Postfix's defaults refer to these old names, so it
# accepts them in main.cf without an "unused parameter" warning.
LEGACY_NAMES = frozenset(parameters_data.LEGACY_NAMES)

_table: dict[str, Parameter] | None = None


def parameters() -> dict[str, Parameter]:
    """Every parameter, by name, in alphabetical order."""
    global _table
    if _table is None:
        _table = _build_table()
    return _table


def lookup(name: str) -> Parameter | None:
    return parameters().get(name)


def postfix_default(parameter: Parameter) -> str | None:
    """Postfix's own default, where mailferry chose a different one."""
    difference = parameters_data.POSTFIX_DEFAULTS_WHERE_DIFFERENT.get(parameter.name)
    return difference[0] if difference else parameter.default


def per_transport_suffixes(command: str) -> frozenset[str]:
    """The suffixes Postfix accepts for a master.cf service running `command`
    (the first word of the command field: smtp, lmtp, pipe, spawn...)."""
    return frozenset(suffix for suffix, *_, commands in parameters_data.PER_TRANSPORT
                     if command in commands)


def per_transport_parameter(service: str, suffix: str) -> Parameter:
    """`<service>_<suffix>` for any master.cf service, with the default,
    kind and status of its transport_<suffix> template."""
    for template_suffix, kind, unit, default, _ in parameters_data.PER_TRANSPORT:
        if template_suffix == suffix:
            name = f"{service}_{suffix}"
            return Parameter(name, default, kind, _template_status(suffix), unit)
    raise KeyError(suffix)


def _build_table() -> dict[str, Parameter]:
    derived = _stock_per_transport_names()
    table = {}
    lines = parameters_data.PARAMETERS.strip("\n").split("\n") + MAILFERRY_PARAMETERS.strip("\n").split("\n")
    for line in sorted(lines):
        name, kind, unit, default = _fields(line)
        # `str:one:none|may|encrypt`: the kind, then what the value may be (see Parameter.shape).
        kind, _, allowed = kind.partition(":")
        shape, _, words = allowed.partition(":")
        if name in derived:
            status = _template_status(derived[name])
        else:
            status = _status(name)
        table[name] = Parameter(
            name,
            None if default == parameters_data.COMPUTED_MARKER else default,
            kind,
            status,
            "" if unit == "-" else unit,
            shape,
            tuple(words.split("|")) if words else (),
        )
    return table


def _fields(line: str) -> list[str]:
    """name, kind, unit, default: the default runs to the end of the line
    and is left off when empty."""
    fields = line.split(" ", 3)
    return fields if len(fields) == 4 else fields + [""]


def _status(name: str) -> str:
    if name in IMPLEMENTED_PARAMETERS:
        return IMPLEMENTED
    if name in NO_EFFECT_PARAMETERS:
        return NO_EFFECT
    return NOT_YET


def _template_status(suffix: str) -> str:
    """Per-transport parameters follow their template: marking
    `transport_recipient_limit` implemented covers `smtp_recipient_limit`,
    `relay_recipient_limit` and every other service's."""
    return _status("transport_" + suffix)


def _stock_per_transport_names() -> dict[str, str]:
    """name -> suffix, for the stock master.cf's per-transport parameters."""
    names = {}
    for service, command in parameters_data.STOCK_DELIVERY_SERVICES.items():
        for suffix in per_transport_suffixes(command):
            names[f"{service}_{suffix}"] = suffix
    return names
