"""ServerSettings for the protocol core, read from one service's view of main.cf."""

from __future__ import annotations

from mailferry.auth.server import ehlo_settings
from mailferry.config.config import Config
from mailferry.protocol.smtp_server import NORMALIZE, REJECT, ServerSettings
from mailferry.smtpd.tls import tls_level


def server_settings(config: Config, starttls: bool) -> ServerSettings:
    bare_newline = config.get("smtpd_forbid_bare_newline").lower()
    offered = {"smtputf8": config.boolean("smtputf8_enable"), "starttls": starttls,
               "vrfy_enabled": not config.boolean("disable_vrfy_command")}
    offered.update(_kept_keywords(config.list("smtpd_discard_ehlo_keywords")))
    return ServerSettings(
        hostname=config.get("myhostname"),
        banner=config.get("smtpd_banner"),
        message_size_limit=config.size("message_size_limit"),
        recipient_limit=config.integer("smtpd_recipient_limit"),
        recipient_overshoot_limit=config.integer("smtpd_recipient_overshoot_limit"),
        hopcount_limit=config.integer("hopcount_limit"),
        soft_error_limit=config.integer("smtpd_soft_error_limit"),
        hard_error_limit=config.integer("smtpd_hard_error_limit"),
        junk_command_limit=config.integer("smtpd_junk_command_limit"),
        error_sleep_time=float(config.time("smtpd_error_sleep_time")),
        line_length_limit=config.integer("line_length_limit"),
        # Postfix's "no" (a bare LF ends lines) invites SMTP smuggling: mailferry reads it as normalize.
        bare_newline=REJECT if bare_newline == "reject" else NORMALIZE,
        bare_newline_reject_code=config.integer("smtpd_forbid_bare_newline_reject_code"),
        forbid_unauth_pipelining=config.boolean("smtpd_forbid_unauth_pipelining"),
        helo_required=config.boolean("smtpd_helo_required"),
        strict_envelopes=config.boolean("strict_rfc821_envelopes"),
        numeric_domain=config.boolean("resolve_numeric_domain"),
        **offered,
        **_auth_settings(config),
    )


# smtpd_discard_ehlo_keywords names -> the ServerSettings switch that offers each.
_KEYWORD_SWITCHES = {"pipelining": "pipelining", "size": "size", "dsn": "dsn", "smtputf8": "smtputf8",
                     "chunking": "chunking", "8bitmime": "eightbitmime", "vrfy": "vrfy_enabled",
                     "enhancedstatuscodes": "enhanced_status_codes", "starttls": "starttls"}


def _kept_keywords(discarded: list[str]) -> dict[str, bool]:
    """Turn off what smtpd_discard_ehlo_keywords lists (`silent-discard` only hushes Postfix's log)."""
    return {_KEYWORD_SWITCHES[name]: False for name in (item.lower() for item in discarded)
            if name in _KEYWORD_SWITCHES}



def _auth_settings(config: Config) -> dict:
    """As in Postfix's smtpd.c, required TLS (encrypt, or wrapper mode on 465) implies
    smtpd_tls_auth_only: the stock submission entries rely on it."""
    settings = ehlo_settings(config)
    if settings and tls_level(config) == "encrypt":
        settings["auth_requires_tls"] = True
    return settings
