"""Lookup tables. There is one way in: `open_table("type:name")`.

A parameter that lists several tables (`alias_maps = hash:/a, ldap:/b`)
is opened with `open_maps`, which searches them in order.
"""

from __future__ import annotations

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import FOUND, MISSING, NOT_FOUND, TEMPFAIL, LookupResult, found, tempfail
from mailferry.tables.timing import timed

__all__ = [
    "FOUND", "MISSING", "NOT_FOUND", "TEMPFAIL", "LookupResult", "Maps", "Table", "TableError",
    "found", "open_maps", "open_table", "split_spec", "tempfail", "SUPPORTED_TYPES",
]

INDEXED_TYPES = ("hash", "btree", "lmdb", "cdb")
SUPPORTED_TYPES = (*INDEXED_TYPES, "texthash", "inline", "static", "regexp", "ldap", "unix", "nis", "proxy",
                   "mysql", "pgsql", "sqlite",
                   "pcre", "cidr", "socketmap", "unionmap", "pipemap", "randmap", "environ", "fail")
# Postfix types that need a service or a library this host has no use for (patterns helper).
UNSUPPORTED_TYPES = ("nisplus", "netinfo", "sdbm", "dbm", "memcache", "tcp", "mongodb", "internal")


def split_spec(spec: str, default_type: str = "hash") -> tuple[str, str]:
    """`type:name` → (type, name); a bare file name gets `default_type`, as postmap does."""
    type_name, colon, name = spec.partition(":")
    if not colon or "/" in type_name:
        return default_type, spec
    return type_name.lower(), name


def open_table(spec: str, default_type: str = "hash", observer=None) -> Table:
    """Open one table. Raises TableError for an unknown type or an unreadable table.
    With an `observer` (tables/trace.py, for `mailferry trace`) every lookup is told to it."""
    table = timed(_open_table(spec, default_type))
    if observer is None:
        return table
    from mailferry.tables.trace import TracedTable
    return TracedTable(table, observer)


def _open_table(spec: str, default_type: str) -> Table:
    type_name, name = split_spec(spec, default_type)
    if type_name == "proxy":
        # One shared inner table per process, if proxy_read_maps lists it (tables/proxy.py).
        from mailferry.tables.proxy import open_proxied
        return open_proxied(name, lambda inner: _open_table(inner, default_type))
    # Each type's module is imported when a table of that type is opened, so that
    # `postmap -q KEY hash:FILE` does not pay at start-up for regexp's compiler or
    # another type's reader. The daemon imports them all before dropping root.
    if type_name in INDEXED_TYPES:
        from mailferry.tables.indexed import IndexedTable
        return IndexedTable(type_name, name)
    if type_name == "texthash":
        from mailferry.tables.memory import TexthashTable
        return TexthashTable(name)
    if type_name == "inline":
        from mailferry.tables.memory import InlineTable
        return InlineTable(name)
    if type_name == "static":
        from mailferry.tables.memory import StaticTable
        return StaticTable(name)
    if type_name == "regexp":
        from mailferry.tables.regexp import RegexpTable
        return RegexpTable(name)
    if type_name in ("unix", "nis"):
        from mailferry.tables.unix import NisTable, UnixTable
        return UnixTable(name) if type_name == "unix" else NisTable(name)
    if type_name == "ldap":
        from mailferry.tables.ldap import LdapTable
        return LdapTable(name)
    if type_name in ("mysql", "pgsql", "sqlite"):
        from mailferry.tables.sql import SqlTable
        return SqlTable(type_name, name)
    if type_name == "pcre":
        from mailferry.tables.pcre import PcreTable
        return PcreTable(name)
    if type_name == "cidr":
        from mailferry.tables.cidr import CidrTable
        return CidrTable(name)
    if type_name == "socketmap":
        from mailferry.tables.socketmap import SocketmapTable
        return SocketmapTable(name)
    if type_name in ("unionmap", "pipemap"):
        from mailferry.tables.composite import PipeTable, UnionTable
        return UnionTable(name) if type_name == "unionmap" else PipeTable(name)
    if type_name == "randmap":
        from mailferry.tables.memory import RandomTable
        return RandomTable(name)
    if type_name == "environ":
        from mailferry.tables.environ import EnvironTable
        return EnvironTable(name)
    if type_name == "fail":
        from mailferry.tables.fail import FailTable
        return FailTable(name)
    if type_name in UNSUPPORTED_TYPES:
        raise TableError(f"{type_name}: table type not supported by mailferry; "
                         f"mailferry supports {', '.join(SUPPORTED_TYPES)}")
    raise TableError(f"unsupported dictionary type: {type_name} (in {spec!r}); "
                     f"mailferry supports {', '.join(SUPPORTED_TYPES)}")


class Maps:
    """Several tables searched in order, as Postfix's `*_maps` parameters are.

    The first table that finds the key answers. A temporary failure stops
    the search: answering from a later table could route mail by stale or
    partial data.
    """

    def __init__(self, tables: list[Table]):
        self.tables = tables

    async def lookup(self, key: str, partial: bool = False) -> LookupResult:
        """`partial` marks a key that is only part of an address; pattern tables skip it."""
        for table in self.tables:
            if partial and table.is_pattern:
                continue
            result = await table.lookup(key)
            if result.status != NOT_FOUND:
                return result
        return MISSING

    def close(self) -> None:
        for table in self.tables:
            table.close()


def open_maps(value: str, default_type: str = "hash", observer=None) -> Maps:
    # Not at the top: `postmap -q` never splits a list, and the import costs its start-up 0.2 ms.
    from mailferry.syntax import split_list
    return Maps([open_table(spec, default_type, observer) for spec in split_list(value)])

