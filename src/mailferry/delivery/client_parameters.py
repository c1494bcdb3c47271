"""The SMTP client's parameters and their LMTP twins.

Postfix gives lmtp(8) its own copy of each smtp(8) parameter, named with
`lmtp_` (and `lhlo` for `helo`). Code names the SMTP parameter and asks
here for the one its client reads.
"""

from __future__ import annotations

LMTP_TWINS = {
    "smtp_helo_name": "lmtp_lhlo_name",
    "smtp_connect_timeout": "lmtp_connect_timeout",
    "smtp_helo_timeout": "lmtp_lhlo_timeout",
    "smtp_mail_timeout": "lmtp_mail_timeout",
    "smtp_rcpt_timeout": "lmtp_rcpt_timeout",
    "smtp_data_init_timeout": "lmtp_data_init_timeout",
    "smtp_data_done_timeout": "lmtp_data_done_timeout",
    "smtp_data_xfer_timeout": "lmtp_data_xfer_timeout",
    "smtp_sasl_auth_enable": "lmtp_sasl_auth_enable",
    "smtp_sasl_password_maps": "lmtp_sasl_password_maps",
    "smtp_sender_dependent_authentication": "lmtp_sender_dependent_authentication",
    "smtp_sasl_security_options": "lmtp_sasl_security_options",
    "smtp_sasl_tls_security_options": "lmtp_sasl_tls_security_options",
    "smtp_sasl_mechanism_filter": "lmtp_sasl_mechanism_filter",
    "smtp_sasl_auth_soft_bounce": "lmtp_sasl_auth_soft_bounce",
    "smtp_connection_cache_on_demand": "lmtp_connection_cache_on_demand",
    "smtp_connection_cache_time_limit": "lmtp_connection_cache_time_limit",
    "smtp_connection_reuse_time_limit": "lmtp_connection_reuse_time_limit",
    "smtp_connection_reuse_count_limit": "lmtp_connection_reuse_count_limit",
    "smtp_mx_address_limit": "lmtp_mx_address_limit",
    "smtp_skip_5xx_greeting": "lmtp_skip_5xx_greeting",
    "smtp_tls_security_level": "lmtp_tls_security_level",
    "smtp_tls_policy_maps": "lmtp_tls_policy_maps",
    "smtp_tls_CAfile": "lmtp_tls_CAfile",
    "smtp_tls_CApath": "lmtp_tls_CApath",
    "smtp_tls_servername": "lmtp_tls_servername",
    "smtp_tls_mandatory_protocols": "lmtp_tls_mandatory_protocols",
    "smtp_tls_protocols": "lmtp_tls_protocols",
    "smtp_tls_cert_file": "lmtp_tls_cert_file",
    "smtp_tls_key_file": "lmtp_tls_key_file",
    "smtp_tls_verify_cert_match": "lmtp_tls_verify_cert_match",
    "smtp_tls_secure_cert_match": "lmtp_tls_secure_cert_match",
    "smtp_use_tls": "lmtp_use_tls",
    "smtp_enforce_tls": "lmtp_enforce_tls",
    "smtp_tls_enforce_peername": "lmtp_tls_enforce_peername",
    "smtp_generic_maps": "lmtp_generic_maps",
    "smtp_tls_ciphers": "lmtp_tls_ciphers",
    "smtp_tls_mandatory_ciphers": "lmtp_tls_mandatory_ciphers",
    "smtp_tls_exclude_ciphers": "lmtp_tls_exclude_ciphers",
    "smtp_tls_mandatory_exclude_ciphers": "lmtp_tls_mandatory_exclude_ciphers",
    "smtp_tls_loglevel": "lmtp_tls_loglevel",
    "smtp_tls_note_starttls_offer": "lmtp_tls_note_starttls_offer",
    "smtp_bind_address": "lmtp_bind_address",
    "smtp_bind_address6": "lmtp_bind_address6",
    "smtp_bind_address_enforce": "lmtp_bind_address_enforce",
    "smtp_address_preference": "lmtp_address_preference",
    "smtp_host_lookup": "lmtp_host_lookup",
    "smtp_dns_support_level": "lmtp_dns_support_level",
    "smtp_balance_inet_protocols": "lmtp_balance_inet_protocols",
}


def client_parameter(prefix: str, smtp_name: str) -> str:
    """`client_parameter("lmtp", "smtp_helo_name")` -> "lmtp_lhlo_name"."""
    return LMTP_TWINS[smtp_name] if prefix == "lmtp" else smtp_name
