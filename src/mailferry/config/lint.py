"""Warnings and errors about main.cf settings as a whole, master.cf's -o overrides, and master.cf pipe services.

- a name Postfix does not know, that nothing refers to: Postfix's
  `unused parameter` warning, with the file and line;
- a Postfix parameter that mailferry does not implement yet: its own warning;
- a value that does not expand (loop, bad syntax) or does not parse as its
  kind (time, size, integer, boolean): an error.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

from mailferry.config import parameters, pipe_service, values
from mailferry.config.config import Config, ConfigValueError
from mailferry.config.maincf import Setting, has_inline_comment
from mailferry.config.mastercf import MasterCf, Service
from mailferry.diagnostics import Diagnostic, error, warning

_REFERENCE = re.compile(r"\$[{(]?([A-Za-z0-9_]+)")
# `${name?text}` and `${name:text}` test whether name is set: not a plain use.
_PLAIN_REFERENCE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?![?:A-Za-z0-9_])|\(([A-Za-z0-9_]+)|([A-Za-z0-9_]+))")


def referenced_names(texts: Iterable[str]) -> set[str]:
    """Every `$name` mentioned in the given values: user-defined parameters are fine when used."""
    names: set[str] = set()
    for text in texts:
        names.update(_REFERENCE.findall(text))
    return names


def plain_references(text: str) -> set[str]:
    """Names used for their value in `text`, leaving out conditional tests."""
    return {next(filter(None, groups)) for groups in _PLAIN_REFERENCE.findall(text)}


def lint_settings(config: Config, service_commands: dict[str, str] | None = None,
                  override_values: Iterable[str] = ()) -> list[Diagnostic]:
    """`service_commands` maps each master.cf service name to its command (smtp, pipe...)."""
    settings = config.settings.values()
    used = referenced_names([setting.value for setting in settings] + list(override_values))
    # smtpd_restriction_classes names parameters of the site's own: each is a restriction list.
    used.update(config.list("smtpd_restriction_classes"))
    services = service_commands or {}
    diagnostics: list[Diagnostic] = []
    for setting in settings:
        diagnostics.extend(_lint_one(config, setting, used, services))
    return diagnostics


def _lint_one(config: Config, setting: Setting, used: set[str],
              services: dict[str, str]) -> list[Diagnostic]:
    parameter = parameters.lookup(setting.name)
    if parameter is None:
        parameter = _per_transport(setting.name, services)
    if parameter is None:
        if setting.name in used or setting.name in parameters.LEGACY_NAMES:
            return []
        return [warning(f"unused parameter: {setting.name}={setting.value} "
                        f"(not a Postfix parameter{_suggestion(setting.name)}, "
                        f"and no other setting refers to it as ${setting.name})",
                        setting.file, setting.line, setting.name)]
    found = []
    # Set to empty where the default is empty too (the seed's `smtp_tls_eccert_file =`):
    # the feature stays off, which is what mailferry does without it. Nothing to warn about.
    switched_off = not setting.value.strip() and not _expanded_default(config, parameter)
    if parameter.status == parameters.NOT_YET and not switched_off:
        found.append(warning(
            f"parameter {setting.name} is known but not implemented yet in mailferry; "
            "the setting has no effect (see docs/parameters.md)",
            setting.file, setting.line, setting.name))
    found.extend(_check_value(config, setting, parameter))
    return found


def _expanded_default(config: Config, parameter: parameters.Parameter) -> str:
    try:
        return config.expand(parameter.default or "").strip()
    except ValueError:
        return parameter.default or ""


def _per_transport(name: str, services: dict[str, str]) -> parameters.Parameter | None:
    """`relay_destination_concurrency_limit` is known when master.cf runs a
    delivery agent named `relay`; which suffixes apply depends on its command."""
    for service, command in services.items():
        prefix = service + "_"
        suffix = name[len(prefix):]
        if name.startswith(prefix) and suffix in parameters.per_transport_suffixes(command):
            return parameters.per_transport_parameter(service, suffix)
    return None


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, parameters.parameters().keys(), n=1, cutoff=0.85)
    return f"; did you mean {close[0]}?" if close else ""


def _check_value(config: Config, setting: Setting, parameter: parameters.Parameter) -> list[Diagnostic]:
    try:
        text = config.expanded(setting.name)
    except ConfigValueError as exc:
        return [error(f"parameter {setting.name}: {exc.reason}", setting.file, setting.line, setting.name)]
    if has_inline_comment(setting.value):
        return []  # already reported as an inline comment; its value is not what was meant
    parse = {
        "time": lambda value: values.parse_time(value, parameter.time_unit or "s"),
        "size": values.parse_size,
        "int": values.parse_int,
        "bool": values.parse_bool,
    }.get(parameter.kind)
    choices = _choice_problems(parameter, text, setting.file, setting.line)
    if choices:
        return choices
    if parse is None or text == "":
        return []
    try:
        parse(text)
    except ValueError as exc:
        return [error(f"parameter {setting.name}: {exc}", setting.file, setting.line, setting.name)]
    return []


def _choice_problems(parameter: parameters.Parameter, text: str, file: str | None,
                     line: int | None) -> list[Diagnostic]:
    """A value outside what the parameter table allows (an unknown TLS level, SASL option,
    protocol, a broken relayhost...): what Postfix stops on, with the allowed values."""
    return [(error if is_error else warning)(f"parameter {parameter.name}: {text}", file, line, parameter.name)
            for is_error, text in values.check_choices(parameter.name, parameter.shape, parameter.choices, text)]


# --- master.cf pipe(8) services: what the pipe agent would refuse or do differently from Postfix

def lint_pipe_services(config: Config, master: MasterCf) -> list[Diagnostic]:
    """Macros pipe(8) does not know, user= accounts it refuses, chroot= (not supported),
    a missing directory=, and argv= or flags that need one recipient per command."""
    found: list[Diagnostic] = []
    for service in master.services:
        if service.command != "pipe" or service.pipe is None:
            continue
        view = config.with_overrides(service.overrides, f"{master.path}, line {service.line}") \
            if service.overrides else config
        for severity, text, parameter in _pipe_problems(view, service):
            found.append(severity(f"service {service.name}: {text}", master.path, service.line,
                                  parameter or service.name))
    return found


def _pipe_problems(config: Config, service: Service):
    spec = service.pipe
    try:
        pipe_service.check_argv(spec.argv)
    except pipe_service.MacroError as problem:
        yield error, f"argv=: {problem}; pipe(8) knows {', '.join(sorted(pipe_service.KNOWN_MACROS))}", None
        return
    try:
        problem = pipe_service.account_problem(spec.user, spec.group, config.get("mail_owner"),
                                               config.get("setgid_group"))
    except ConfigValueError:
        problem = None     # reported with the parameter
    if problem is not None:
        # A missing account may come with the software (Cyrus makes `cyrus`): mail waits until then.
        missing = problem.endswith(("no such account", "no such group"))
        yield (warning if missing else error), problem + (
            "; until it exists, mail for this service waits in the queue" if missing else ""), None
    if spec.chroot:
        yield error, "mailferry does not support pipe's chroot=; remove it", None
    if spec.directory and not os.path.isdir(spec.directory):
        yield warning, f"directory={spec.directory} is not a directory; deliveries will wait until it is", None
    yield from _recipient_limit_advice(config, service)


def _recipient_limit_advice(config: Config, service: Service):
    spec = service.pipe
    if not pipe_service.needs_one_command_per_recipient(spec.argv, spec.flags):
        return
    name = f"{service.name}_destination_recipient_limit"
    try:
        limit = config.integer(name if config.raw(name) is not None else "default_destination_recipient_limit")
    except ConfigValueError:
        return
    if limit == 1:
        return
    words = pipe_service.per_recipient_words(spec.argv)
    if len(words) > 1:
        why = (f"argv= has per-recipient macros in {len(words)} arguments ({' '.join(words)}), which Postfix "
               "expands one recipient after another, so that with several recipients they no longer pair up")
    else:
        flags = "".join(flag for flag in spec.flags if flag in pipe_service.SINGLE_RECIPIENT_FLAGS)
        why = f"flags={flags} names the one recipient, and Postfix defers deliveries of several recipients"
    yield warning, (f"{why}; mailferry runs the command once per recipient. Set {name} = 1 in main.cf "
                    "to say so (Postfix needs it)"), name


# --- master.cf `-o name=value` overrides

def lint_overrides(config: Config, services: Iterable[Service], path: str,
                   service_commands: dict[str, str] | None = None) -> list[Diagnostic]:
    """What lint_settings says of main.cf, for each service's -o overrides: names Postfix
    does not know, parameters mailferry does not implement, values that do not parse, and
    `$name` references to parameters set nowhere (Postfix expands those to nothing)."""
    found: list[Diagnostic] = []
    for service in services:
        if not service.overrides:
            continue
        view = config.with_overrides(service.overrides, f"{path}, line {service.line}")
        for name, value in service.overrides.items():
            found += _lint_override(view, service, name, value, path, service_commands or {})
    return found


def _lint_override(view: Config, service: Service, name: str, value: str, path: str,
                   services: dict[str, str]) -> list[Diagnostic]:
    where = f"service {service.name}: -o {name}={value}"
    parameter = parameters.lookup(name) or _per_transport(name, services)
    found = [warning(f"{where} refers to ${missing}, which is not set in main.cf and has no default; "
                     "it expands to nothing, as in Postfix. Define it in main.cf (e.g. the "
                     "mua_*_restrictions of Postfix's stock master.cf) or remove the reference",
                     path, service.line, name)
             for missing in sorted(plain_references(value)) if view.raw(missing) is None]
    if parameter is None:
        return found + [warning(f"{where}: unused parameter (not a Postfix parameter{_suggestion(name)})",
                                path, service.line, name)]
    switched_off = not value.strip() and not _expanded_default(view, parameter)
    if parameter.status == parameters.NOT_YET and not switched_off:
        found.append(warning(f"{where}: parameter {name} is known but not implemented yet in mailferry; "
                             "the setting has no effect for this service (see docs/parameters.md)",
                             path, service.line, name))
    found += _check_override_value(view, name, parameter, path, service.line)
    return found


def _check_override_value(view: Config, name: str, parameter: parameters.Parameter, path: str,
                          line: int) -> list[Diagnostic]:
    parse = {"time": lambda text: values.parse_time(text, parameter.time_unit or "s"),
             "size": values.parse_size, "int": values.parse_int, "bool": values.parse_bool}.get(parameter.kind)
    try:
        text = view.expanded(name)
        if parse is not None and text != "":
            parse(text)
    except ValueError as exc:
        return [error(f"parameter {name}: {getattr(exc, 'reason', exc)}", path, line, name)]
    return _choice_problems(parameter, text, path, line)


# --- transports: every transport-valued setting, -o override and transport table result
#     must name a master.cf service (Postfix's qmgr defers mail for an unknown one forever);
#     relayhost and TLS policy table results must parse

_TRANSPORT_TABLES = ("transport_maps", "sender_dependent_default_transport_maps",
                     "address_verify_transport_maps",
                     "address_verify_sender_dependent_default_transport_maps")


def lint_transports(config: Config, master: MasterCf) -> list[Diagnostic]:
    """`default_transport = smtpp`, `-o content_filter=amavis:[127.0.0.1]:10024` with no
    `amavis` service, a transport_maps entry `example.com smtpp:` in a readable source file."""
    # Transports are the unix services (Postfix's private/NAME sockets); other names stay accepted.
    services = {service.name: service.command for service in master.services if service.type != "unix"}
    services.update({service.name: service.command for service in master.services if service.type == "unix"})
    if not services:
        return []
    found: list[Diagnostic] = []
    for name, setting in config.settings.items():
        parameter = parameters.lookup(name)
        if parameter is None or has_inline_comment(setting.value):
            continue
        try:
            text = config.get(name)
        except ConfigValueError:
            continue     # reported with the setting
        if parameter.choices == ("transport",):
            found += _transport_problems(config, name, text, services, setting.file, setting.line)
        elif name in _TRANSPORT_TABLES:
            found += _table_result_problems(name, text, lambda result: transport_problem(result, services),
                                            setting.file, setting.line)
        elif name in _RESULT_CHECKS:
            found += _table_result_problems(name, text, _RESULT_CHECKS[name], setting.file, setting.line)
    for service in master.services:
        for name, value in service.overrides.items():
            parameter = parameters.lookup(name)
            if parameter is None or parameter.choices != ("transport",):
                continue
            view = config.with_overrides({name: value}, f"{master.path}, line {service.line}")
            try:
                text = view.get(name)
            except ConfigValueError:
                continue
            found += _transport_problems(view, f"{name} (service {service.name}: -o {name}={value})", text,
                                         services, master.path, service.line)
    return found


# Transports mailferry's qmgr runs without a master.cf line (delivery/agents.py command_of).
_QMGR_FALLBACKS = ("discard", "error", "retry")


def transport_problem(value: str, services: dict[str, str]) -> str | None:
    """What is wrong with `transport:nexthop` (or `transport`, `:nexthop`), or None."""
    transport, _, nexthop = value.strip().partition(":")
    if transport and transport not in services and transport not in _QMGR_FALLBACKS:
        listed = sorted(name for name in services if ":" not in name and "/" not in name)
        close = difflib.get_close_matches(transport, listed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return (f"transport {transport!r} is not a service in master.cf{hint}; mail routed to it would wait "
                f"in the queue. Services: {', '.join(listed)}")
    command = services.get(transport) if transport else "smtp"
    if command in ("smtp", "lmtp") and nexthop.strip():
        for token in nexthop.replace(",", " ").split():
            problem = values.nexthop_problem(token)
            if problem:
                return f"next-hop {problem}"
    return None


def _transport_problems(config: Config, name: str, text: str, services: dict[str, str], file: str | None,
                        line: int | None) -> list[Diagnostic]:
    if not text.strip():
        return []
    problem = transport_problem(text, services)
    if problem is None:
        return []
    parameter = name.split(" ", 1)[0]
    if parameter == "local_transport" and text.strip().partition(":")[0] == "local" \
            and _mailbox_transport(config):
        # mailferry hands local mailboxes to mailbox_transport itself (routing/resolve.py);
        # Postfix's local(8) does that, so Postfix needs the service.
        return [warning(f"parameter {name}: master.cf has no local service; mailferry hands local mail "
                        "to mailbox_transport directly, Postfix would need the service "
                        "(local unix - n n - - local)", file, line, parameter)]
    return [error(f"parameter {name}: {problem}", file, line, parameter)]


def _mailbox_transport(config: Config) -> str:
    try:
        return config.get("mailbox_transport").strip()
    except ConfigValueError:
        return ""


def _relayhost_problem(result: str) -> str | None:
    problems = values.check_choices("relayhost", "syntax", ("nexthops",), result)
    return problems[0][1] if problems else None


def _tls_policy_problem(result: str) -> str | None:
    """smtp_tls_policy_maps: `level [name=value ...]`; Postfix defers mail on an unknown level."""
    level = result.split()[0] if result.split() else ""
    choices = parameters.lookup("smtp_tls_security_level").choices
    if not level or level.lower() in choices or "=" in level:
        return None
    return f"unknown TLS security level {level}{values.did_you_mean(level, choices)}; allowed: {', '.join(choices)}"


# Tables whose results have a syntax of their own.
_RESULT_CHECKS = {
    "sender_dependent_relayhost_maps": _relayhost_problem,
    "smtp_tls_policy_maps": _tls_policy_problem,
    "lmtp_tls_policy_maps": _tls_policy_problem,
}


def _table_result_problems(name: str, text: str, check_result, file: str | None,
                           line: int | None) -> list[Diagnostic]:
    """Results of the tables whose source mailferry can read here (texthash:, inline:, and
    the source file next to a hash:/lmdb:/cdb:/btree: index), each at its own file and line."""
    from mailferry.syntax import split_list
    from mailferry.tables import INDEXED_TYPES, split_spec
    from mailferry.tables.source import read_source
    found = []
    for spec in split_list(text):
        type_name, table_name = split_spec(spec.removeprefix("proxy:"))
        entries: list[tuple[str, str, str, int | None]] = []
        if type_name == "inline":
            from mailferry.tables.memory import InlineTable
            try:
                entries = [(key, result, file, line) for key, result in InlineTable(table_name).items()]
            except Exception:   # noqa: BLE001 - a broken inline table is reported by the table check
                continue
        elif type_name in (*INDEXED_TYPES, "texthash") and os.access(table_name, os.R_OK):
            try:
                entries = [(key, result, table_name, number) for key, result, number in read_source(table_name)]
            except OSError:
                continue
        for key, result, where, number in entries:
            problem = check_result(result)
            if problem:
                found.append(error(f"parameter {name}: table {spec}: {key} {result}: {problem}",
                                   where, number, name))
    return found
