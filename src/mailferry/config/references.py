"""What `check` finds in the files and tables a configuration refers to, told as Postfix
would meet them (docs/check.md).

- Tables named inside restriction lists (`check_recipient_access hash:...`), in main.cf,
  in restriction classes and in master.cf `-o` overrides, opened like any other table.
- `/file/name` items of match lists (mynetworks, relay_domains, ...): the file must exist.
- `myorigin = /etc/mailname` (Debian's default): the file must exist and name a domain.

A file that is not on this machine is a "missing file" (diagnostics.MISSING_FILE): Postfix
would fail on it too, and `check` lists those apart from the other errors.
"""

from __future__ import annotations

import os

from mailferry.config.config import Config, ConfigValueError
from mailferry.config.maincf import has_inline_comment
from mailferry.diagnostics import Diagnostic, error, missing_file, warning
from mailferry.syntax import split_list
from mailferry.tables import TableError, open_table

# Match lists whose items may be /file/name (postconf(5)); mynetworks is read by inspect.py.
FILE_LISTS = ("mydestination", "relay_domains", "virtual_alias_domains", "virtual_mailbox_domains",
              "permit_mx_backup_networks", "debug_peer_list", "fast_flush_domains",
              "smtpd_authorized_xforward_hosts", "smtpd_authorized_xclient_hosts",
              "smtpd_client_event_limit_exceptions", "mynetworks", "relay_recipient_maps_domains",
              "smtpd_authorized_verp_clients", "qmqpd_authorized_clients",
              "smtpd_log_access_permit_actions")


def check_references(config: Config, master_path: str | None, services: list) -> list[Diagnostic]:
    """`services`: master.cf's services, whose `-o` overrides may name restriction lists."""
    overrides = [(service.key, service.line, name, value)
                 for service in services for name, value in service.overrides.items()]
    return (_restriction_tables(config, master_path, overrides) + _list_files(config)
            + _myorigin_file(config))


def restriction_tables(value: str) -> list[str]:
    """The tables a restriction list names: the argument of each check_*_access."""
    words = split_list(value)
    return [words[index + 1] for index, word in enumerate(words[:-1])
            if word.lower().endswith("_access") and ":" in words[index + 1]]


def _is_restriction_list(name: str, classes: set[str]) -> bool:
    return (name.startswith(("smtpd_", "postscreen_")) and name.endswith("_restrictions")) or name in classes


def _restriction_tables(config: Config, master_path: str | None,
                        overrides: list[tuple[str, int, str, str]]) -> list[Diagnostic]:
    try:
        classes = set(config.list("smtpd_restriction_classes"))
    except ValueError:
        classes = set()
    found: list[Diagnostic] = []
    seen: set[str] = set()
    for name, setting in config.settings.items():
        if not _is_restriction_list(name, classes) or has_inline_comment(setting.value):
            continue
        try:
            value = config.get(name)
        except ValueError:
            continue  # lint reports the expansion error
        found += _open_each(restriction_tables(value), f"parameter {name}", setting.file, setting.line,
                            name, seen)
    for key, line, name, raw in overrides:
        if not _is_restriction_list(name, classes):
            continue
        try:
            value = config.expand(raw)
        except ValueError:
            continue
        found += _open_each(restriction_tables(value), f"service {key}: -o {name}", master_path, line,
                            name, seen)
    return found


def _open_each(specs: list[str], what: str, file: str | None, line: int | None, name: str,
               seen: set[str]) -> list[Diagnostic]:
    found = []
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        try:
            table = open_table(spec)
        except TableError as exc:
            kind = missing_file if _not_here(spec, exc) else error
            found.append(kind(f"{what}: table {spec}: {exc}", file, line, name))
            continue
        found += [warning(f"{what}: {text}", file, line, name) for text in getattr(table, "warnings", ())]
        table.close()
    return found


def _not_here(spec: str, exc: TableError) -> bool:
    if "unsupported dictionary type" in str(exc):
        return False
    rest = spec.removeprefix("proxy:").partition(":")[2]
    return rest.startswith("/") and not os.path.exists(rest) and not (exc.file and os.path.exists(exc.file))


def _list_files(config: Config) -> list[Diagnostic]:
    found = []
    for name in FILE_LISTS:
        setting = config.settings.get(name)
        if setting is None or has_inline_comment(setting.value):
            continue
        try:
            items = split_list(config.get(name))
        except ValueError:
            continue
        for item in items:
            if not item.startswith("/"):
                continue
            if not os.path.exists(item):
                found.append(missing_file(f"parameter {name}: {item}: no such file; Postfix reads "
                                          f"the list's patterns from it: create it, or fix the name",
                                          setting.file, setting.line, name))
            elif not os.access(item, os.R_OK):
                found.append(error(f"parameter {name}: {item}: not readable by uid {os.geteuid()}",
                                   setting.file, setting.line, name))
    return found


def _myorigin_file(config: Config) -> list[Diagnostic]:
    setting = config.settings.get("myorigin")
    if setting is None or has_inline_comment(setting.value):
        return []
    try:
        path = config.expanded("myorigin")
    except ValueError:
        return []  # lint reports the expansion error
    if not path.startswith("/"):
        return []
    try:
        config.get("myorigin")
    except ConfigValueError as exc:
        kind = missing_file if path.startswith("/") and not os.path.exists(path) else error
        return [kind(f"parameter myorigin: {exc.reason}", setting.file, setting.line, "myorigin")]
    except ValueError:
        return []
    return []


# Tables whose answers are transports, whose source mailferry can read without a server.
_TRANSPORT_TABLES = ("transport_maps", "sender_dependent_default_transport_maps")
_SOURCE_TYPES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")


def table_transports(config: Config) -> set[str]:
    """The services transport_maps (and sender_dependent_default_transport_maps) route to,
    as far as their text can be read here (inline:, static:, a postmap source file): so that
    a missing pipe program of a service a table routes to is an error, not a warning."""
    from mailferry.tables.source import read_source  # lazy: only for check
    services: set[str] = set()
    for name in _TRANSPORT_TABLES:
        try:
            specs = config.list(name)
        except ValueError:
            continue
        for spec in specs:
            type_name, _, rest = spec.removeprefix("proxy:").partition(":")
            values: list[str] = []
            if type_name == "static":
                values = [rest.strip().strip("{}").strip()]
            elif type_name == "inline":
                for item in split_list(rest.strip().removeprefix("{").removesuffix("}")):
                    values.append(item.strip("{} ").partition("=")[2].strip())
            elif type_name in _SOURCE_TYPES and os.path.isfile(rest):
                try:
                    values = [value for _, value, _ in read_source(rest)]
                except (OSError, TableError, ValueError):
                    continue
            services |= {value.split(":", 1)[0].strip() for value in values if value.strip()}
    return services
