"""`check` on the tables issue 15 added: SQL table files and `proxy:` approval.

One call from inspect.py's table loop, for every table a parameter names (opened already, so a
file that cannot be read or parsed has been reported there, with its file and line):
- an SQL table file's unknown or repeated names, and a password everyone may read, at their
  own lines (Postfix ignores an unknown name: a misspelt one would silently change nothing);
- an sqlite table whose dbpath is not a file (an error: Postfix cannot open it either);
- a `proxy:` table that proxy_read_maps does not list. Postfix starts, and its proxymap refuses
  the table at the first lookup ("request for unapproved table"), so every lookup fails and
  mail waits in the queue: a warning here, since Postfix accepts the setting, saying exactly
  what to add. mailferry's daemon behaves as Postfix does (tables/proxy.py).
"""

from __future__ import annotations

import os

from mailferry.config.config import Config
from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.tables import Table

_SQL_TYPES = ("mysql", "pgsql", "sqlite")


def sql_table_problems(name: str, spec: str, table: Table, config: Config) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    setting = config.settings[name]
    inner = getattr(table, "inner", table)
    if table.type_name == "proxy" and not _approved(config, table.name):
        found.append(warning(
            f"parameter {name}: table {spec}: proxy_read_maps does not list proxy:{table.name}, so "
            f"proxymap refuses it and every lookup fails temporarily (mail is deferred); add "
            f"proxy:{table.name} to proxy_read_maps, or drop the proxy: prefix",
            setting.file, setting.line, name))
    if inner.type_name == "sqlite":
        dbpath = inner.config.get("dbpath")
        if not os.path.isfile(dbpath):
            # Postfix's open fails ("open database ...") and so does every lookup.
            found.append(error(f"dbpath = {dbpath}: no such database file (table {spec}, used by "
                               f"parameter {name}); create it or correct dbpath",
                               inner.name, inner.config.settings.lines.get("dbpath"), name))
    if inner.type_name in _SQL_TYPES:
        from mailferry.tables.sql import file_problems   # lazy: only configurations with SQL tables
        found += [warning(f"{problem.message} (table {spec}, used by parameter {name})",
                          inner.name, problem.line, name)
                  for problem in file_problems(inner.type_name, inner.name)]
    return found


def _approved(config: Config, inner: str) -> bool:
    from mailferry.tables.proxy import approved_read_maps
    return inner in approved_read_maps(config.get)
