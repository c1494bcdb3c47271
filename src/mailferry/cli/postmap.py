"""`mailferry postmap`: build indexed tables and query any table, as Postfix's postmap.

  postmap [-f] [type:]file...        build file.db (hash) or file.lmdb (lmdb)
  postmap [-f] -q KEY type:name...   print the first value found; exit 1 if none
  postmap [-f] -q - type:name...     read keys from stdin, print "key<TAB>value"
  postmap -s type:name...            print every entry

Exit status: 0 found or built, 1 key not found, 2 error or temporary failure.
"""

from __future__ import annotations

import sys

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry postmap [-f] [-s] [-q KEY] [-c CONFIG_DIR] [type:]file..."
NOT_FOUND_EXIT = 1
ERROR_EXIT = 2


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    options, specs, config_dir = parse_options(argv, "fq:s", config_dir, USAGE, reporter)
    query = options.get("-q")
    dump = "-s" in options
    fold = "-f" not in options
    if not specs:
        return reporter.fatal(f"no table given\n{USAGE}")
    from mailferry.tables.base import TableError
    try:
        specs = _with_types(specs, config_dir)
        if query is not None:
            return _query(query, specs, fold, reporter)
        if dump:
            return _dump(specs, reporter)
        return _build_all(specs, fold, reporter)
    except TableError as exc:
        return reporter.fatal(str(exc))


def _with_types(specs: list[str], config_dir: str) -> list[str]:
    """A bare file name gets main.cf's default_database_type, as Postfix's postmap gives it.
    main.cf is read only then, so `postmap -q KEY hash:FILE` starts without it."""
    from mailferry.tables import split_spec
    if all(split_spec(spec, "")[0] for spec in specs):
        return specs
    from mailferry.config.config import load
    default_type = load(config_dir).get("default_database_type") or "hash"
    return [":".join(split_spec(spec, default_type)) for spec in specs]


def _open(spec: str, reporter: Reporter):
    from mailferry.tables import open_table
    table = open_table(spec)
    for text in getattr(table, "warnings", ()):
        reporter.warning(text)
    return table


def _lookup(table, key: str):
    try:
        return table.lookup_now(key)
    except NotImplementedError:
        import asyncio  # only network tables pay for the event loop
        return asyncio.run(table.lookup(key))


def _query(key: str, specs: list[str], fold: bool, reporter: Reporter) -> int:
    if not fold:
        return reporter.fatal("-f with -q is not supported: mailferry folds lookup keys "
                              "to lower case, as Postfix does by default")
    tables = [_open(spec, reporter) for spec in specs]
    keys = [line.rstrip("\n") for line in sys.stdin] if key == "-" else [key]
    any_found = False
    tempfailed = False
    for one_key in keys:
        for table in tables:
            result = _lookup(table, one_key)
            if result.tempfail:
                reporter.error(f"{table.spec}: temporary failure looking up {one_key!r}: {result.reason}")
                tempfailed = True
                break
            if result.found:
                print(f"{one_key}\t{result.value}" if key == "-" else result.value)
                any_found = True
                break
    if any_found:
        return 0
    return ERROR_EXIT if tempfailed else NOT_FOUND_EXIT


def _dump(specs: list[str], reporter: Reporter) -> int:
    out = sys.stdout
    for spec in specs:
        table = _open(spec, reporter)
        for key, value in table.items():
            out.write(f"{key}\t{value}\n")
    return 0


def _build_all(specs: list[str], fold: bool, reporter: Reporter) -> int:
    from mailferry.tables import INDEXED_TYPES, split_spec
    from mailferry.tables.build import build_index
    for spec in specs:
        type_name, name = split_spec(spec)
        if type_name not in INDEXED_TYPES:
            return reporter.fatal(
                f"{spec}: {type_name} tables are read as they are, there is nothing to build; "
                f"postmap builds {', '.join(INDEXED_TYPES)} tables (test a lookup with -q KEY)")
        report = build_index(type_name, name, fold, reporter.warning)
        if reporter.verbose:
            reporter.info(f"built {report.path}: {report.entries} entries, "
                          f"{report.duplicates} duplicate keys ignored")
    return 0
