"""The checks' tables and limits from main.cf (or a master.cf service's view of it).

Receiving (cleanup): header_checks, mime_header_checks (default $header_checks),
nested_header_checks (default $header_checks), body_checks. Delivery: the same with
the `smtp_` or `lmtp_` prefix (smtp_mime_header_checks and smtp_nested_header_checks
have no default). Opening the tables reads their files; everything else in this
package is pure.
"""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.content.checks import CheckTables, Limits
from mailferry.syntax import split_list
from mailferry.tables import Maps, open_table
from mailferry.tables.result import MISSING, LookupResult

# The parameters of each side, in the order of CheckTables' fields.
NAMES = {
    "": ("header_checks", "mime_header_checks", "nested_header_checks", "body_checks"),
    "smtp_": ("smtp_header_checks", "smtp_mime_header_checks", "smtp_nested_header_checks", "smtp_body_checks"),
    "lmtp_": ("lmtp_header_checks", "lmtp_mime_header_checks", "lmtp_nested_header_checks", "lmtp_body_checks"),
}


class CheckMaps:
    """Tables searched in order, each key folded to lower case for the table types Postfix
    folds (hash, lmdb, ...), never for regexp: (Postfix's maps_find for these checks)."""

    def __init__(self, maps: Maps):
        self.maps = maps
        self.tables = maps.tables

    async def lookup(self, key: str) -> LookupResult:
        for table in self.tables:
            result = await table.lookup(key.lower() if table.folds_keys else key)
            if not result.not_found:
                return result
        return MISSING

    def close(self) -> None:
        self.maps.close()


def check_tables(config: Config, prefix: str = "") -> CheckTables:
    """`prefix` is "" for cleanup, "smtp_" or "lmtp_" for the delivery agents.
    Raises TableError for a table that cannot be opened."""
    names = NAMES[prefix]
    opened: dict[str, CheckMaps] = {}
    found: list[CheckMaps | None] = []
    for name in names:
        value = config.get(name).strip()
        if not split_list(value):
            found.append(None)
            continue
        if value not in opened:   # mime_ and nested_header_checks default to the same tables
            opened[value] = CheckMaps(Maps([open_table(spec, "hash") for spec in split_list(value)]))
        found.append(opened[value])
    header, mime, nested, body = found
    return CheckTables(header, mime, nested, body, names)  # type: ignore[arg-type]


def limits(config: Config, prefix: str = "") -> Limits:
    line_limit = config.size("line_length_limit")
    return Limits(header_size_limit=config.size("header_size_limit"),
                  body_size_limit=config.size("body_checks_size_limit"),
                  line_limit=line_limit,
                  disable_mime=config.boolean("disable_mime_input_processing") if not prefix else False,
                  strict_encoding=config.boolean("strict_mime_encoding_domain") if not prefix else False,
                  boundary_limit=config.size("mime_boundary_length_limit"),
                  nesting_limit=config.integer("mime_nesting_limit"))


def close(tables: CheckTables) -> None:
    for table in {id(t): t for t in (tables.header, tables.mime, tables.nested, tables.body) if t}.values():
        table.close()   # type: ignore[attr-defined]
