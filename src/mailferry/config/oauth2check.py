"""`check` for the `oauth2:/settings.json` entries of smtp_sasl_password_maps (docs/oauth2.md).

What would otherwise show up only as deferred mail: a settings file that is missing, not
JSON or incomplete, others may read (it holds a refresh token and a client secret), or
mail_owner may not read (the delivery agent reads it as mail_owner); and security options
or a mechanism filter that leave XOAUTH2 and OAUTHBEARER out.
"""

from __future__ import annotations

import json
import os
import pwd
import stat

from mailferry.config.config import Config
from mailferry.config.maincf import has_inline_comment
from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.syntax import split_list
from mailferry.tables import TableError, open_table

PREFIX = "oauth2:"       # delivery/oauth2.py PASSWORD_PREFIX (config may not import delivery)
REQUIRED = ("token_endpoint", "client_id", "refresh_token")
MECHANISMS = ("xoauth2", "oauthbearer")


def check_oauth2_entries(config: Config) -> list[Diagnostic]:
    setting = config.settings.get("smtp_sasl_password_maps")
    if setting is None or has_inline_comment(setting.value):
        return []
    try:
        if not config.boolean("smtp_sasl_auth_enable"):
            return []
    except ValueError:
        return []
    files: dict[str, str] = {}
    for spec in split_list(config.get("smtp_sasl_password_maps")):
        try:
            table = open_table(spec)
            items = list(table.items())
            table.close()
        except (TableError, OSError):
            continue     # _check_tables reports an unreadable table; a table without a listing is not checked
        for key, value in items:
            _, _, password = str(value).partition(":")
            if password.startswith(PREFIX):
                files.setdefault(password[len(PREFIX):].strip(), key)
    if not files:
        return []

    def note(make, text: str) -> Diagnostic:
        return make(f"parameter smtp_sasl_password_maps: {text}", setting.file, setting.line,
                    "smtp_sasl_password_maps")
    found = [note(*problem) for path, key in sorted(files.items()) for problem in _file_problems(config, path, key)]
    found += [note(warning, text) for text in _mechanism_problems(config)]
    return found


def _file_problems(config: Config, path: str, key: str) -> list[tuple]:
    where = f"the OAuth2 entry for {key} names {path}"
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return [(warning, f"{where}, which does not exist: mail to {key} is deferred until "
                          "`mailferry oauth2 --settings FILE` writes it")]
    except PermissionError:
        return [(warning, f"{where}, which uid {os.geteuid()} cannot read, so it is not checked")]
    except (OSError, ValueError) as problem:
        return [(warning, f"{where}, which is not a JSON settings file ({problem}): mail to {key} is deferred")]
    problems: list[tuple] = []
    missing = [name for name in REQUIRED if not (isinstance(data, dict) and data.get(name))]
    if missing:
        problems.append((warning, f"{where}, which has no {', '.join(missing)}: mail to {key} is deferred; "
                                  "write it again with `mailferry oauth2`"))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append((error, f"{path} holds an OAuth2 refresh token and client secret but is readable by "
                                f"{'group and others' if info.st_mode & stat.S_IRWXO else 'group'} "
                                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"))
    owner = _mail_owner(config)
    if owner is not None and info.st_uid != owner.pw_uid:
        problems.append((warning, f"{where}, which mail_owner {owner.pw_name} cannot read (the delivery agent "
                                  f"reads it as mail_owner): run: chown {owner.pw_name} {path}"))
    return problems


def _mail_owner(config: Config):
    try:
        return pwd.getpwnam(config.get("mail_owner"))
    except (KeyError, TypeError):
        return None


def _mechanism_problems(config: Config) -> list[str]:
    problems = []
    mechanism_filter = [item.strip().lower() for item in split_list(config.get("smtp_sasl_mechanism_filter"))]
    if mechanism_filter and not any(mechanism in mechanism_filter for mechanism in MECHANISMS):
        problems.append(f"its OAuth2 entries need XOAUTH2 or OAUTHBEARER, but smtp_sasl_mechanism_filter = "
                        f"{', '.join(mechanism_filter)} leaves both out: set smtp_sasl_mechanism_filter = xoauth2")
    options = [item.strip().lower() for item in split_list(config.get("smtp_sasl_tls_security_options"))]
    if "noplaintext" in options:
        problems.append("its OAuth2 entries are refused: smtp_sasl_tls_security_options = "
                        f"{', '.join(options)} forbids XOAUTH2 and OAUTHBEARER (a bearer token is a plaintext "
                        "credential); set smtp_sasl_security_options = noanonymous with "
                        "smtp_tls_security_level = encrypt")
    return problems
