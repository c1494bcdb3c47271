"""`check`: tables in the lists mailferry reads without waiting (mydestination, mynetworks and the
other network lists) must answer at once: a socketmap: there (or a composite holding one) is an
error at the parameter's line, not a traceback at start. relay_domains, virtual_alias_domains and
virtual_mailbox_domains ask their tables asynchronously and may hold any table."""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.diagnostics import Diagnostic, error
from mailferry.syntax import split_list
from mailferry.tables import SUPPORTED_TYPES, TableError, open_table
from mailferry.tables.match_lists import answering_now

# mynetworks is _check_network_lists' (config/inspect.py): it parses the whole list.
LISTS_READ_AT_ONCE = ("mydestination", "smtpd_client_event_limit_exceptions", "smtpd_sasl_exceptions_networks")


def check_list_tables(config: Config) -> list[Diagnostic]:
    found = []
    for name in LISTS_READ_AT_ONCE:
        setting = config.settings.get(name)
        if setting is None:
            continue
        for item in split_list(config.get(name)):
            item = item.lstrip("!")
            if item.partition(":")[0].lower() not in SUPPORTED_TYPES:
                continue
            try:
                table = open_table(item)
            except TableError:
                continue  # a table that cannot open is _check_tables' error
            try:
                answering_now(table).close()
            except TableError as problem:
                found.append(error(f"parameter {name}: {problem}", setting.file, setting.line, name))
    return found
