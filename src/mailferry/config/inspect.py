"""Everything `mailferry check` looks at, as a list of diagnostics.

The daemon runs the same inspection at start, so a configuration that
`check` passes is the one that starts.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable

from mailferry.config.cleanupcheck import check_service_names
from mailferry.config.config import Config, load, master_cf_path
from mailferry.config.lint import (lint_overrides, lint_pipe_services, lint_settings, lint_transports,
                                   plain_references)
from mailferry.config.list_tables import check_list_tables
from mailferry.config.maincf import Setting, has_inline_comment
from mailferry.config.mastercf import MasterCf, read_master_cf
from mailferry.config.metricscheck import check_metrics_listen
from mailferry.config.oauth2check import check_oauth2_entries
from mailferry.config.parameters import RAW_PARAMETERS
from mailferry.config.references import check_references, table_transports
from mailferry.config.sqlcheck import sql_table_problems
from mailferry.config.tlscheck import check_tls
from mailferry.diagnostics import Diagnostic, error, missing_file, warning
from mailferry.syntax import split_list
from mailferry.tables import Table, TableError, open_table
from mailferry.tables.match_lists import NetworkList

# Parameters whose values list lookup tables, besides every `*_maps` and `*_checks`.
_TABLE_LISTS = ("mydestination", "relay_domains", "virtual_alias_domains",
                "virtual_mailbox_domains", "permit_mx_backup_networks")
_TLS_FILE_SUFFIXES = ("_tls_CAfile", "_tls_cert_file", "_tls_key_file", "_tls_eccert_file",
                      "_tls_eckey_file", "_tls_dcert_file", "_tls_dkey_file", "_tls_chain_files")


def inspect_config(config_dir: str) -> list[Diagnostic]:
    config = load(config_dir)
    found = list(config.main_cf.diagnostics)
    master = _read_master(config_dir, found)
    services = master.services if master else []
    commands = {service.name: service.command for service in services}
    overrides = [value for service in services for value in service.overrides.values()]
    found += lint_settings(config, commands, overrides)
    if master:
        found += lint_overrides(config, services, master.path, commands)
        found += lint_transports(config, master)
    found += _check_tables(config)
    found += _check_tls_files(config)
    found += _check_smtpd_tls_has_certificate(config)
    found += check_tls(config, master)
    found += _check_sasl_passwords_are_used(config)
    found += check_oauth2_entries(config)
    found += _check_smtpd_sasl(config)
    found += _check_network_lists(config)
    found += check_list_tables(config)
    if master:
        found += _check_pipe_programs(master, _transports_named(config) | table_transports(config))
        found += lint_pipe_services(config, master)
    found += _undefined_references(config)
    found += check_references(config, master.path if master else None, services)
    found += check_metrics_listen(config)
    found += check_service_names(config, master)
    # In file and line order, as an operator reads the files; stable within a line.
    found.sort(key=lambda item: (item.file or "", item.line or 0))
    return found


def _read_master(config_dir: str, found: list[Diagnostic]) -> MasterCf | None:
    path = master_cf_path(config_dir)
    if not os.path.exists(path):
        found.append(warning("no such file, so no service would run; "
                             "copy examples/quickstart/master.cf and adapt it", path))
        return None
    master = read_master_cf(path)
    found.extend(master.diagnostics)
    return master


def _explicit_values(config: Config, wanted: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(name, expanded value) of settings in main.cf whose name `wanted` accepts, skipping broken ones."""
    selected = []
    for name, setting in config.settings.items():
        if not wanted(name) or has_inline_comment(setting.value):
            continue
        try:
            selected.append((name, config.get(name)))
        except ValueError:
            continue  # lint reports the expansion error
    return selected


# Lists of table names that are permissions, not tables to open: proxymap(8) only compares
# a request against them, and Postfix opens none of them at start.
_NOT_OPENED = ("proxy_read_maps", "proxy_write_maps")


def _is_table_list(name: str) -> bool:
    # proxy_read_maps and proxy_write_maps name tables only to approve them (tables/proxy.py)
    return (name.endswith(("_maps", "_checks")) or name in _TABLE_LISTS) and name not in _NOT_OPENED


def _source_path(spec: str) -> str | None:
    """The file a table spec names (`proxy:mysql:/etc/x.cf` -> /etc/x.cf), if it names one."""
    rest = spec.removeprefix("proxy:")
    _, _, rest = rest.partition(":")
    return rest if rest.startswith("/") else None


def _missing(spec: str, exc: TableError) -> bool:
    """The table cannot be opened because its file is not on this machine."""
    source = _source_path(spec)
    return (source is not None and not os.path.exists(source)
            and (exc.file is None or not os.path.exists(exc.file)))


def _check_tables(config: Config) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for name, value in _explicit_values(config, _is_table_list):
        setting = config.settings[name]
        for spec in split_list(value):
            if ":" not in spec or spec.startswith("["):
                continue  # a plain domain or network, not a table
            try:
                table = open_table(spec)
            except TableError as exc:
                if _unreadable_by_us(exc.file):
                    # Not root (a user's `check`, or the daemon's reload as mail_owner): a
                    # root-only table (sasl_passwd, as it should be) is fine, just not ours to see.
                    found.append(warning(
                        f"parameter {name}: table {spec}: {exc.file}: not readable by uid "
                        f"{os.geteuid()}, so not checked; run check as root to check it",
                        setting.file, setting.line, name))
                elif _missing(spec, exc) and "unsupported dictionary type" not in str(exc):
                    found.append(missing_file(f"parameter {name}: table {spec}: {exc}",
                                              setting.file, setting.line, name))
                else:
                    found.append(error(f"parameter {name}: table {spec}: {exc}",
                                       setting.file, setting.line, name))
                continue
            found += [warning(f"parameter {name}: {text}", setting.file, setting.line, name)
                      for text in getattr(table, "warnings", ())]
            if table.type_name == "ldap":
                found += _ldap_file_problems(name, spec, table)
            found += sql_table_problems(name, spec, table, config)
            if name.endswith("_sasl_password_maps"):
                found += _check_secret_files(name, table, setting)
            table.close()
    return found


def _ldap_file_problems(name: str, spec: str, table: Table) -> list[Diagnostic]:
    """Unknown or repeated parameters in an ldap_table file, at their own file and line:
    Postfix ignores an unknown name silently, so a misspelt one would change nothing."""
    from mailferry.tables.ldap import file_problems  # lazy: only configurations with ldap tables
    return [warning(f"{problem.message} (table {spec}, used by parameter {name})",
                    table.name, problem.line, name)
            for problem in file_problems(table.name)]


def _unreadable_by_us(path: str | None) -> bool:
    """The file is there (or may be) but this unprivileged process may not read it."""
    if not path or os.geteuid() == 0:
        return False
    try:
        os.stat(path)
    except PermissionError:
        return True          # a directory on the way is closed to us
    except OSError:
        return False         # really missing: that stays an error
    return not os.access(path, os.R_OK)


def _check_secret_files(name: str, table: Table, setting: Setting) -> list[Diagnostic]:
    """Passwords must not be readable by group or others (the seed's `chmod 600`)."""
    paths = [table.name, getattr(table, "path", None)]
    found = []
    for path in filter(None, paths):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append(error(
                f"parameter {name}: {path} holds passwords but is readable by "
                f"{'group and others' if mode & stat.S_IRWXO else 'group'} "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
                setting.file, setting.line, name))
    return found


def _check_tls_files(config: Config) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for name, value in _explicit_values(config, lambda n: n.endswith(_TLS_FILE_SUFFIXES)):
        setting = config.settings[name]
        for path in value.replace(",", " ").split():
            if _unreadable_by_us(path):
                found.append(warning(f"parameter {name}: {path}: not readable by uid {os.geteuid()}, "
                                     "so not checked; run check as root to check it",
                                     setting.file, setting.line, name))
                continue
            problem = _tls_file_problem(name, path)
            if problem:
                kind = missing_file if not os.path.exists(path) else error
                found.append(kind(f"parameter {name}: {problem}", setting.file, setting.line, name))
    return found


def _check_network_lists(config: Config) -> list[Diagnostic]:
    """mynetworks and friends must parse: a bad entry would otherwise stop smtpd at start."""
    found = []
    for name, value in _explicit_values(config, lambda n: n in ("mynetworks",)):
        setting = config.settings[name]
        try:
            NetworkList(value)
        except TableError as exc:
            if not (exc.file and exc.file.startswith("/") and not os.path.exists(exc.file)):
                found.append(error(f"parameter {name}: {exc}", setting.file, setting.line, name))
            # else references.py lists the missing /file/name
        except ValueError as exc:
            found.append(error(f"parameter {name}: {exc}", setting.file, setting.line, name))
    return found


def _check_smtpd_tls_has_certificate(config: Config) -> list[Diagnostic]:
    """STARTTLS needs a certificate: without one, `may` offers nothing and `encrypt` refuses all mail."""
    setting = config.settings.get("smtpd_tls_security_level")
    if setting is None or has_inline_comment(setting.value):
        return []
    level = config.get("smtpd_tls_security_level")
    if level not in ("may", "encrypt") or config.get("smtpd_tls_cert_file") or config.get("smtpd_tls_chain_files"):
        return []
    text = (f"parameter smtpd_tls_security_level = {level} but no certificate is configured, so "
            "STARTTLS is not offered; set smtpd_tls_cert_file and smtpd_tls_key_file "
            "(or smtpd_tls_chain_files)")
    if level == "encrypt":
        return [error(text + ": every client would be refused", setting.file, setting.line,
                      "smtpd_tls_security_level")]
    return [warning(text, setting.file, setting.line, "smtpd_tls_security_level")]


def _check_sasl_passwords_are_used(config: Config) -> list[Diagnostic]:
    """A password table without smtp_sasl_auth_enable = yes is never read: the relay then
    refuses the unauthenticated mail. Postfix says nothing; the seed's Gmail recipe has this gap."""
    found = []
    for maps, enable in (("smtp_sasl_password_maps", "smtp_sasl_auth_enable"),
                         ("lmtp_sasl_password_maps", "lmtp_sasl_auth_enable")):
        setting = config.settings.get(maps)
        if setting is None or has_inline_comment(setting.value) or not config.get(maps).strip():
            continue
        try:
            enabled = config.boolean(enable)
        except ValueError:
            continue
        if not enabled:
            found.append(warning(
                f"parameter {maps} is set but {enable} = no, so the passwords are never sent; "
                f"add \"{enable} = yes\" (a smarthost such as smtp.gmail.com refuses mail without AUTH)",
                setting.file, setting.line, maps))
    return found


# smtpd_sasl_type values mailferry has (auth/): Dovecot's, and mailferry's own two.
SMTPD_SASL_TYPES = ("dovecot", "table", "ldap")
SASL_SECURITY_OPTIONS = ("noanonymous", "noplaintext", "noactive", "nodictionary", "mutual_auth", "forward_secrecy")


def _check_smtpd_sasl(config: Config) -> list[Diagnostic]:
    """With smtpd_sasl_auth_enable = yes in main.cf: a SASL type mailferry has, a path for it,
    and security options it knows. Postfix would find out at the first AUTH; mailferry at start."""
    try:
        if not config.boolean("smtpd_sasl_auth_enable"):
            return []
        sasl_type = config.get("smtpd_sasl_type").strip().lower()
        path = config.get("smtpd_sasl_path").strip()
    except ValueError:
        return []
    found = []

    def problem(name: str, text: str) -> None:
        setting = config.settings.get(name)
        found.append(error(f"parameter {name}: {text}", setting.file if setting else None,
                           setting.line if setting else None, name))

    if sasl_type not in SMTPD_SASL_TYPES:
        problem("smtpd_sasl_type", f"{sasl_type!r} is not a SASL type mailferry has: use dovecot (Dovecot's "
                "auth socket), table (mailferry's password table) or ldap (bind to a directory); "
                "Cyrus SASL is not supported")
    elif sasl_type == "table" and ":" not in path:
        problem("smtpd_sasl_path", f"smtpd_sasl_type = table needs a table, e.g. texthash:/etc/mailferry/sasl_users, "
                f"not {path!r}")
    elif sasl_type == "ldap" and not os.path.isfile(path.removeprefix("ldap:")):
        problem("smtpd_sasl_path", f"smtpd_sasl_type = ldap needs an ldap_table(5) file; {path!r} is not one")
    # Unknown security options: config/lint.py, for every parameter with fixed words.
    return found


def _tls_file_problem(name: str, path: str) -> str | None:
    if not os.path.isfile(path):
        return f"{path} does not exist; fix the path or set {name} empty"
    if not name.endswith("_tls_CAfile"):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        return f"{path} cannot be parsed as PEM certificates ({exc}); rebuild it from the CA's PEM files"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    if not context.get_ca_certs():
        return f"{path} holds no CA certificate; rebuild it from the CA's PEM files"
    return None


def _transports_named(config: Config) -> set[str]:
    """The services main.cf's *_transport settings and content_filter route mail to
    (`maildrop`, `lmtp:unix:...` -> lmtp), defaults included."""
    names = {name for name in config.settings if name.endswith("_transport") or name == "content_filter"}
    names |= {"default_transport", "local_transport", "relay_transport", "virtual_transport"}
    used = set()
    for name in names:
        try:
            value = config.get(name)
        except ValueError:
            continue
        for item in value.replace(",", " ").split():
            used.add(item.split(":", 1)[0])
    return used


def _check_pipe_programs(master: MasterCf, routed_to: set[str]) -> list[Diagnostic]:
    """A missing program is an error for a service mail is routed to; for one nothing names
    (the pipe services of Debian's stock master.cf) a warning: Postfix loads them as well."""
    found: list[Diagnostic] = []
    for service in master.services:
        pipe = getattr(service, "pipe", None)
        if pipe is None or not pipe.argv:
            continue
        program = pipe.argv[0]
        severity, unused = error, ""
        if service.name not in routed_to:
            severity = warning
            unused = ("; nothing routes mail to this service (no *_transport setting, and no "
                      "transport_maps entry mailferry can read; if a table does, that mail waits in "
                      "the queue)")
        if "/" not in program:
            if not any(os.access(os.path.join(directory, program), os.X_OK) for directory in ("/usr/bin", "/bin")):
                found.append(severity(f"service {service.name}: pipe program {program} is not in /usr/bin or /bin, "
                                      "the only places a pipe command is looked for (PATH=/usr/bin:/bin); "
                                      f"give its full path in argv={unused}", master.path, service.line,
                                      service.name))
            continue
        if os.access(program, os.X_OK):
            continue
        hint = _lib_twin(program)
        advice = f"; {hint} exists: use that path" if hint else "; install it or fix argv="
        if severity is error and not hint and not os.path.exists(program):
            severity = missing_file   # not installed here; with a twin it is a wrong path
        found.append(severity(f"service {service.name}: pipe program {program} "
                              f"{'is not executable' if os.path.exists(program) else 'does not exist'}{advice}"
                              f"{unused}", master.path, service.line, service.name))
    return found


def _lib_twin(program: str) -> str | None:
    """The seed's Cyrus case: /usr/lib/cyrus-imapd/deliver lives in /usr/lib64 on x86_64."""
    for ours, twin in (("/lib/", "/lib64/"), ("/lib64/", "/lib/")):
        if ours in program:
            candidate = program.replace(ours, twin, 1)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def _undefined_references(config: Config) -> list[Diagnostic]:
    found = []
    for name, setting in config.settings.items():
        if name in RAW_PARAMETERS:
            continue  # never $-expanded: "$EXTENSION" in mailbox_command is for the shell
        for missing in sorted(plain_references(setting.value)):
            if config.raw(missing) is None:
                found.append(warning(f"parameter {name} refers to ${missing}, which is not set "
                                     "and has no default; it expands to nothing",
                                     setting.file, setting.line, name))
    return found
