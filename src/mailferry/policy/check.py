"""`mailferry check` for the restriction lists: what would answer 451 4.3.5 at run time.

An unknown restriction name (a typo such as `permit_mynetwork`) makes every
recipient that reaches it get `451 4.3.5 Server configuration error`; a
restriction that needs an argument and has none, too. check says so first,
naming the parameter's file and line, with the closest name it knows.
A restriction Postfix has but mailferry does not implement yet is a warning:
the configuration is valid Postfix, but a client that reaches it gets 451.
"""

from __future__ import annotations

import difflib

from mailferry.config.config import Config
from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.policy.restrictions import HANDLERS
from mailferry.policy.settings import ARGUMENT_RESTRICTIONS, STAGES, TABLE_RESTRICTIONS

# Postfix's restriction names (smtpd_check.c, postconf(5)) that the engine has no handler for.
# Followed by a table or another argument:
POSTFIX_ONLY_WITH_ARGUMENT = frozenset({
    "check_ccert_access", "check_client_a_access", "check_client_mx_access", "check_client_ns_access",
    "check_helo_a_access", "check_helo_mx_access", "check_helo_ns_access",
    "check_recipient_a_access", "check_recipient_mx_access", "check_recipient_ns_access",
    "check_reverse_client_hostname_access", "check_reverse_client_hostname_a_access",
    "check_reverse_client_hostname_mx_access", "check_reverse_client_hostname_ns_access",
    "check_sender_a_access", "check_sender_mx_access", "check_sender_ns_access",
    "permit_rhswl_client", "check_address_map",
})
POSTFIX_ONLY = frozenset({
    "permit_inet_interfaces", "permit_mx_backup", "permit_naked_ip_address", "permit_tls_all_clientcerts",
    "permit_tls_clientcerts", "reject_maps_rbl", "reject_unknown_forward_client_hostname",
    "reject_unverified_recipient", "reject_unverified_sender", "reject_unknown_address",
    "check_relay_domains", "dunno",
}) | POSTFIX_ONLY_WITH_ARGUMENT


def restriction_problems(config: Config) -> list[Diagnostic]:
    classes = {name.lower() for name in config.list("smtpd_restriction_classes")}
    found: list[Diagnostic] = []
    for parameter in (*STAGES, *config.list("smtpd_restriction_classes")):
        setting = config.settings.get(parameter)
        where = (setting.file, setting.line) if setting is not None else (None, None)
        for is_error, problem in _list_problems(config.list(parameter), classes):
            if is_error:
                found.append(error(f"parameter {parameter}: {problem}; clients would get 451 4.3.5 Server "
                                   "configuration error (see docs/restrictions.md)", *where, parameter))
            else:
                found.append(warning(f"parameter {parameter}: {problem}", *where, parameter))
    return found


def known_restrictions(classes: set[str] = frozenset()) -> set[str]:
    return {*HANDLERS, *TABLE_RESTRICTIONS, *ARGUMENT_RESTRICTIONS, "warn_if_reject", *POSTFIX_ONLY, *classes}


def _list_problems(restrictions: list[str], classes: set[str]) -> list[tuple[bool, str]]:
    problems = []
    index = 0
    while index < len(restrictions):
        name = restrictions[index].lower()
        takes_argument = (name in TABLE_RESTRICTIONS or name in ARGUMENT_RESTRICTIONS
                          or name in POSTFIX_ONLY_WITH_ARGUMENT)
        if name in POSTFIX_ONLY:
            problems.append((False, f"restriction {name} is Postfix's but not implemented yet in mailferry; "
                                    "a client that reaches it gets 451 4.3.5 (see docs/restrictions.md)"))
        if takes_argument:
            if index + 1 >= len(restrictions):
                problems.append((True, f"restriction {name} needs an argument"))
            index += 2
            continue
        if ":" not in name and name not in known_restrictions(classes):
            close = difflib.get_close_matches(name, sorted(known_restrictions(classes)), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append((True, f"unknown smtpd restriction \"{restrictions[index]}\"{hint}"))
        index += 1
    return problems


def configuration_problems(config_dir: str) -> list[Diagnostic]:
    """Everything `mailferry check` reports: what start, reload and `mailferry reload` refuse on."""
    from mailferry.config.config import load
    from mailferry.config.inspect import inspect_config
    found = inspect_config(config_dir)
    try:
        config = load(config_dir)
        found += restriction_problems(config)
        found += _override_problems(config, config_dir)
    except (OSError, ValueError):
        pass     # inspect_config has reported why the configuration cannot be read
    return found


def _override_problems(config: Config, config_dir: str) -> list[Diagnostic]:
    """`-o smtpd_recipient_restrictions=...` in master.cf, at the service's line."""
    import os

    from mailferry.config.config import master_cf_path
    from mailferry.config.mastercf import read_master_cf
    path = master_cf_path(config_dir)
    if not os.path.exists(path):
        return []
    classes = {name.lower() for name in config.list("smtpd_restriction_classes")}
    lists = {*STAGES, *classes}
    found: list[Diagnostic] = []
    for service in read_master_cf(path).services:
        for name, value in service.overrides.items():
            if name not in lists:
                continue
            try:
                items = config.with_overrides({name: value}, f"{path}, line {service.line}").list(name)
            except ValueError:
                continue     # lint reports a value that does not expand
            for is_error, problem in _list_problems(items, classes):
                text = f"parameter {name} (service {service.name}: -o {name}=...): {problem}"
                found.append(error(text + "; clients would get 451 4.3.5 Server configuration error", path,
                                   service.line, name) if is_error else warning(text, path, service.line, name))
    return found
