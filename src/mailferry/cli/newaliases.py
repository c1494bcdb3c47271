"""`mailferry newaliases`: build each alias_database table from its aliases(5) source.

  newaliases [-c CONFIG_DIR]            every table in main.cf's alias_database
  newaliases [type:]file...             the tables named (as Postfix's postalias)

hash:, btree:, lmdb: and cdb: tables are built into FILE.db / FILE.lmdb /
FILE.cdb the way postmap builds its tables (a temporary file renamed into
place, the source's owner and mode kept: local(8) runs an alias's
|commands and /files as the owner of the table). A texthash: table is read
as it is: newaliases checks its syntax and builds nothing. A missing
source is an error, named with its path.

Exit status: 0 built, 1 a table could not be built (each is tried).
`mailferry-sendmail -bi`, `-I` and a `newaliases` link run this too.
"""

from __future__ import annotations

import os

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter
from mailferry.tables import INDEXED_TYPES, TableError, split_spec

USAGE = "usage: mailferry newaliases [-c CONFIG_DIR] [type:]file..."


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    _, specs, config_dir = parse_options(argv, "", config_dir, USAGE, reporter)
    from mailferry.config.config import load   # lazy: as postmap, the CLI starts without the config machinery
    config = load(config_dir)
    if not specs:
        specs = config.list("alias_database")
        if not specs:
            reporter.info("alias_database is empty: there is nothing to build")
            return 0
    default_type = config.get("default_database_type") or "hash"
    failed = 0
    for spec in specs:
        failed += not build_alias_table(spec, default_type, reporter)
    return 1 if failed else 0


def build_alias_table(spec: str, default_type: str, reporter: Reporter) -> bool:
    from mailferry.tables.aliases import AliasTextTable, read_alias_entries
    from mailferry.tables.build import build_index
    type_name, name = split_spec(spec, default_type)
    try:
        if type_name == "texthash":
            for warning in AliasTextTable(name).warnings:
                reporter.warning(warning)
            return True
        if type_name not in INDEXED_TYPES:
            reporter.error(f"{spec}: newaliases builds {', '.join(INDEXED_TYPES)} tables (and checks "
                           f"texthash: ones); a {type_name}: table is not built from an aliases file")
            return False
        _warn_if_replacing_postfix_index(type_name, name, reporter)
        report = build_index(type_name, name, True, reporter.warning, read_alias_entries)
    except TableError as problem:
        reporter.error(str(problem))
        return False
    except OSError as problem:
        reporter.error(f"{name}: cannot build the alias table: {problem.strerror}")
        return False
    if reporter.verbose:
        reporter.info(f"built {report.path}: {report.entries} aliases, {report.duplicates} duplicates ignored")
    return True


def _warn_if_replacing_postfix_index(type_name: str, name: str, reporter: Reporter) -> None:
    """An index Postfix built (Berkeley DB) is replaced: say so, since Postfix cannot read ours."""
    from mailferry.tables.indexed import IndexedTable, index_path
    path = index_path(type_name, name)
    if not os.path.exists(path):
        return
    try:
        IndexedTable(type_name, name).close()
    except TableError as problem:
        if "not a mailferry index" in problem.message:
            reporter.warning(f"{path}: replacing an index mailferry cannot read (built by Postfix's "
                             "newaliases?); Postfix itself cannot read the new one")
