"""`mailferry check` on TLS settings: values that would stop a listener or a delivery, and
what Python's `ssl` cannot do that Postfix does (each with its own warning; docs/tls.md).

Checked for main.cf and for each smtpd service's view (its -o overrides on top), so a
`submission` entry with `-o smtpd_tls_security_level=encrypt` and no certificate is caught
at its master.cf line.
"""

from __future__ import annotations

import ssl

from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf, Service
from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.tlsparams import (
    CIPHERLIST_PARAMETERS, cipher_string, eecdh_curve, log_level, set_ciphers, set_versions, ssl_options,
)

_TLS13_SUITES = "Python's ssl cannot choose TLS 1.3 cipher suites, so this applies to TLS 1.2 and older only"


def check_tls(config: Config, master: MasterCf | None) -> list[Diagnostic]:
    found = _check_smtpd_view(config, None, "")
    found += _check_client(config)
    found += _python_limits(config)
    for service in (master.services if master else []):
        if service.command == "smtpd" and service.type == "inet" and service.overrides:
            view = config.with_overrides(service.overrides, f"{master.path}, line {service.line}")
            found += _check_smtpd_view(view, service, master.path)
    return found


def _place(config: Config, name: str, service: Service | None, path: str) -> tuple[str | None, int | None]:
    if service is not None:
        return path, service.line
    setting = config.settings.get(name)
    return (setting.file, setting.line) if setting else (None, None)


def _explicit(config: Config, name: str, service: Service | None) -> bool:
    if service is not None:
        return name in service.overrides
    return name in config.settings


def _check_smtpd_view(config: Config, service: Service | None, path: str) -> list[Diagnostic]:
    """Errors for values smtpd would refuse at start, where they were written."""
    found = []
    prefix = f"service {service.name}: " if service else ""
    try:
        wrapper = config.boolean("smtpd_tls_wrappermode")
        level = config.get("smtpd_tls_security_level") or ("may" if config.get("smtpd_use_tls") == "yes" else "none")
    except ValueError:
        return []  # reported by lint
    mandatory = wrapper or level == "encrypt" or config.get("smtpd_enforce_tls") == "yes"
    if service is not None and (wrapper or _explicit(config, "smtpd_tls_security_level", service)):
        has_certificate = config.get("smtpd_tls_cert_file") or config.get("smtpd_tls_chain_files")
        if mandatory and not has_certificate:
            what = ("every connection would be dropped before the greeting" if wrapper else
                    "STARTTLS is not offered, so every client would be refused")
            found.append(error(f"{prefix}TLS is required here but no certificate is configured: {what}; "
                               "set smtpd_tls_cert_file and smtpd_tls_key_file (or smtpd_tls_chain_files) "
                               "in main.cf", path, service.line, "smtpd_tls_cert_file"))
    if not mandatory and level == "none":
        return found
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    protocols = "smtpd_tls_mandatory_protocols" if mandatory else "smtpd_tls_protocols"
    ciphers = "smtpd_tls_mandatory_ciphers" if mandatory else "smtpd_tls_ciphers"
    exclusions = config.list("smtpd_tls_exclude_ciphers")
    if mandatory:
        exclusions += config.list("smtpd_tls_mandatory_exclude_ciphers")
    checks = {
        protocols: lambda value: set_versions(context, value),
        ciphers: lambda value: set_ciphers(context, cipher_string(value, exclusions, _cipherlists(config))),
        "smtpd_tls_eecdh_grade": lambda value: _curve(context, eecdh_curve(
            value, config.get("tls_eecdh_strong_curve"), config.get("tls_eecdh_ultra_curve"))),
        "tls_ssl_options": ssl_options,
        "smtpd_tls_loglevel": log_level,
    }
    for name, check in checks.items():
        if service is not None and not _explicit(config, name, service):
            continue
        try:
            check(config.get(name))
        except (ValueError, ssl.SSLError) as exc:
            file, line = _place(config, name, service, path)
            found.append(error(f"{prefix}parameter {name}: {exc}", file, line, name))
    return found


def _cipherlists(config: Config) -> dict[str, str]:
    return {grade: config.get(name) for grade, name in CIPHERLIST_PARAMETERS.items()}


def _curve(context: ssl.SSLContext, curve: str | None) -> None:
    if curve:
        context.set_ecdh_curve(curve)


def _check_client(config: Config) -> list[Diagnostic]:
    found = []
    for name in ("smtp_tls_ciphers", "smtp_tls_mandatory_ciphers", "lmtp_tls_ciphers", "lmtp_tls_mandatory_ciphers"):
        if name not in config.settings:
            continue
        exclusions = config.list(name.replace("mandatory_ciphers", "mandatory_exclude_ciphers")
                                 .replace("tls_ciphers", "tls_exclude_ciphers"))
        try:
            set_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
                        cipher_string(config.get(name), exclusions, _cipherlists(config)))
        except ValueError as exc:
            setting = config.settings[name]
            found.append(error(f"parameter {name}: {exc}", setting.file, setting.line, name))
    for name in ("smtp_tls_loglevel", "lmtp_tls_loglevel"):
        if name in config.settings:
            try:
                log_level(config.get(name))
            except ValueError as exc:
                setting = config.settings[name]
                found.append(error(f"parameter {name}: {exc}", setting.file, setting.line, name))
    return found


# Settings whose Postfix meaning Python's ssl cannot honour: name -> what happens instead.
_LIMITS = {
    "smtpd_tls_exclude_ciphers": _TLS13_SUITES,
    "smtpd_tls_mandatory_exclude_ciphers": _TLS13_SUITES,
    "smtp_tls_exclude_ciphers": _TLS13_SUITES,
    "smtp_tls_mandatory_exclude_ciphers": _TLS13_SUITES,
    "lmtp_tls_exclude_ciphers": _TLS13_SUITES,
    "lmtp_tls_mandatory_exclude_ciphers": _TLS13_SUITES,
    "tls_eecdh_auto_curves": ("Python's ssl cannot set a list of key exchange groups: with "
                              "smtpd_tls_eecdh_grade = auto, OpenSSL's own list is used"),
    "smtpd_tls_session_cache_database": (
        "mailferry keeps server TLS sessions in memory, per process (session tickets are "
        "accepted by every smtpd worker); the database is not used"),
    "smtp_tls_session_cache_database": (
        "asyncio cannot offer a saved session when it starts TLS, so the SMTP client does a "
        "full handshake on every connection; the database is not used"),
    "lmtp_tls_session_cache_database": (
        "asyncio cannot offer a saved session when it starts TLS, so the LMTP client does a "
        "full handshake on every connection; the database is not used"),
}


def _python_limits(config: Config) -> list[Diagnostic]:
    found = []
    for name, what in _LIMITS.items():
        setting = config.settings.get(name)
        if setting is None or not setting.value.strip():
            continue
        found.append(warning(f"parameter {name}: {what} (a limit of Python's ssl, see docs/tls.md)",
                             setting.file, setting.line, name))
    found += _session_timeout(config)
    found += _ask_ccert(config)
    for grade_name in ("smtpd_tls_ciphers", "smtpd_tls_mandatory_ciphers", "smtp_tls_ciphers",
                       "smtp_tls_mandatory_ciphers"):
        setting = config.settings.get(grade_name)
        if setting is not None and setting.value.strip().lower() in ("null", "export", "low"):
            found.append(warning(f"parameter {grade_name} = {setting.value.strip()}: {_TLS13_SUITES}; TLS 1.3 "
                                 "clients still get its strong suites, and OpenSSL 3 has no export or "
                                 "low-grade ciphers left", setting.file, setting.line, grade_name))
    return found


def _session_timeout(config: Config) -> list[Diagnostic]:
    setting = config.settings.get("smtpd_tls_session_cache_timeout")
    if setting is None:
        return []
    try:
        seconds = config.time("smtpd_tls_session_cache_timeout")
    except ValueError:
        return []
    if seconds <= 0:
        return []  # 0 turns resumption off: that mailferry can do
    return [warning("parameter smtpd_tls_session_cache_timeout: Python's ssl cannot set a session "
                    "lifetime, so OpenSSL's own applies; 0 (resumption off) is honoured "
                    "(a limit of Python's ssl, see docs/tls.md)",
                    setting.file, setting.line, "smtpd_tls_session_cache_timeout")]


def _ask_ccert(config: Config) -> list[Diagnostic]:
    setting = config.settings.get("smtpd_tls_ask_ccert")
    try:
        if setting is None or not config.boolean("smtpd_tls_ask_ccert"):
            return []
    except ValueError:
        return []
    trust = config.get("smtpd_tls_CAfile").strip() or config.get("smtpd_tls_CApath").strip()
    advice = ("" if trust else "; no smtpd_tls_CAfile or smtpd_tls_CApath is set, so every client that "
              "sends a certificate would fail: set one")
    return [warning("parameter smtpd_tls_ask_ccert: Python's ssl ends the handshake when a client presents "
                    "a certificate it cannot verify, where Postfix goes on and logs it as Untrusted "
                    f"(a limit of Python's ssl, see docs/tls.md){advice}",
                    setting.file, setting.line, "smtpd_tls_ask_ccert")]
