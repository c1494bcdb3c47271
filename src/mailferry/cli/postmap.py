"""`mailferry postmap`: build indexed tables and query any table, as Postfix's postmap.

  postmap [-f] [type:]file...        build file.db (hash) or file.lmdb (lmdb)
  postmap [-f] -q KEY type:name...   print the first value found; exit 1 if none
  postmap [-f] -q - type:name...     read keys from stdin, print "key<TAB>value"
  postmap -s type:name...            print every entry

Exit status: 0 found or built, 1 key not found, 2 error or temporary failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter
from mailferry.tables import INDEXED_TYPES, TableError, open_table, split_spec
from mailferry.tables.base import Table
from mailferry.tables.result import FOUND, TEMPFAIL, LookupResult

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
    try:
        specs = _with_types(specs, config_dir)
        _approve_proxied(specs, config_dir)
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
    if all(split_spec(spec, "")[0] for spec in specs):
        return specs
    from mailferry.config.config import load  # lazy: the config machinery would slow every `-q`
    default_type = load(config_dir).get("default_database_type") or "hash"
    return [":".join(split_spec(spec, default_type)) for spec in specs]


def _approve_proxied(specs: list[str], config_dir: str) -> None:
    """proxy: tables answer only if main.cf's proxy_read_maps lists them, as Postfix's proxymap
    answers postmap (tables/proxy.py). Without a main.cf every table is served."""
    if not any(spec.startswith("proxy:") for spec in specs):
        return
    from mailferry.config.config import load
    from mailferry.tables.proxy import approve_from
    try:
        config = load(config_dir)
    except (OSError, ValueError):
        return
    approve_from(config.get)


def _open(spec: str, reporter: Reporter) -> Table:
    table = open_table(spec)
    for text in getattr(table, "warnings", ()):
        reporter.warning(text)
    return table


class _Lookups:
    """Each table's lookup as a plain call, chosen once per table rather than tried per key.

    Tables that answer from memory or a file (indexed, texthash, regexp...) answer directly;
    network tables (ldap), which only have the async lookup, share one event loop for the whole
    run, made on first use: only they pay for importing asyncio.
    """

    def __init__(self) -> None:
        self._runner = None

    def of(self, table: Table) -> Callable[[str], LookupResult]:
        if type(table).lookup_now is not Table.lookup_now:
            return table.lookup_now
        return lambda key: self._run(table.lookup(key))

    def _run(self, coroutine):
        if self._runner is None:
            import asyncio  # lazy: `postmap -q` on a file table must not pay for the event loop
            self._runner = asyncio.Runner()
        return self._runner.run(coroutine)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


def _query(key: str, specs: list[str], fold: bool, reporter: Reporter) -> int:
    if not fold:
        return reporter.fatal("-f with -q is not supported: mailferry folds lookup keys "
                              "to lower case, as Postfix does by default")
    runner = _Lookups()
    try:
        searches = [(table.spec, runner.of(table)) for table in (_open(spec, reporter) for spec in specs)]
        if key == "-":
            if not sys.stdout.isatty():
                # Answers to a file or a pipe go out in blocks, as Postfix's postmap writes them,
                # even under PYTHONUNBUFFERED: else 10,000 keys would cost 10,000 write calls.
                sys.stdout.reconfigure(line_buffering=False, write_through=False)
            # One line at a time, so answers still come back as keys are typed on a terminal.
            keys: Iterable[str] = (line.rstrip("\n") for line in sys.stdin)
            return _answer(keys, searches, True, reporter)
        return _answer((key,), searches, False, reporter)
    finally:
        runner.close()


def _answer(keys: Iterable[str], searches: list[tuple[str, Callable[[str], LookupResult]]],
            with_key: bool, reporter: Reporter) -> int:
    """Print the value (`with_key`: "key<TAB>value") of each key some table finds, searching
    the tables in order; a temporary failure ends the search for that key. This loop is the
    whole cost of `postmap -q -` once the tables are open: it does nothing per key but the
    lookups and one buffered write."""
    write = sys.stdout.write
    any_found = False
    tempfailed = False
    for one_key in keys:
        for spec, lookup in searches:
            result = lookup(one_key)
            if result.status == FOUND:
                write(f"{one_key}\t{result.value}\n" if with_key else f"{result.value}\n")
                any_found = True
                break
            if result.status == TEMPFAIL:
                reporter.error(f"{spec}: temporary failure looking up {one_key!r}: {result.reason}")
                tempfailed = True
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
    from mailferry.tables.build import build_index  # lazy: a lookup must not import the builder
    for spec in specs:
        type_name, name = split_spec(spec)
        if type_name == "proxy":
            return reporter.fatal(f"{spec}: can't create maps via the proxy service (as Postfix's "
                                  f"postmap); build the table behind it")
        if type_name not in INDEXED_TYPES:
            return reporter.fatal(
                f"{spec}: unsupported dictionary type: {type_name} does not support bulk-mode creation: "
                f"{type_name} tables are read as they are, there is nothing to build; "
                f"postmap builds {', '.join(INDEXED_TYPES)} tables (test a lookup with -q KEY)")
        report = build_index(type_name, name, fold, reporter.warning)
        if reporter.verbose:
            reporter.info(f"built {report.path}: {report.entries} entries, "
                          f"{report.duplicates} duplicate keys ignored")
    return 0
