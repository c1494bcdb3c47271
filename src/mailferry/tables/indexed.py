"""Indexed tables (`hash:`, `btree:`, `lmdb:`, `cdb:`), stored with LMDB.

Postfix keeps these in Berkeley DB, LMDB or CDB files beside the source;
mailferry stores all of them as LMDB files with the name Postfix would use
(`FILE.db` for hash and btree, `FILE.lmdb`, `FILE.cdb`), so an
administrator's `postmap` habits and file names carry over. A Postfix-built
index is not readable by us: the error says to rebuild it with our postmap.

Building lives in tables/build.py, so that a lookup does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import lmdb

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found

INDEX_SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}


def index_path(type_name: str, source: str) -> str:
    return source + INDEX_SUFFIXES[type_name]


class IndexedTable(Table):
    def __init__(self, type_name: str, name: str):
        super().__init__(name)
        self.type_name = type_name
        self.path = index_path(type_name, name)
        self.warnings: list[str] = []
        self._env = _open_readonly(self.path, type_name, name)
        self._txn = self._env.begin()
        self._check_freshness()

    def _check_freshness(self) -> None:
        try:
            source_mtime = os.stat(self.name).st_mtime
        except OSError:
            return
        if source_mtime > os.stat(self.path).st_mtime:
            self.warnings.append(
                f"database {self.path} is older than source file {self.name}; "
                f"run: mailferry postmap {self.type_name}:{self.name}")

    def lookup_now(self, key: str) -> LookupResult:
        value = self._txn.get(key.lower().encode("utf-8", "surrogateescape"))
        if value is None:
            return MISSING
        return found(value.decode("utf-8", "surrogateescape"))

    def items(self) -> Iterator[tuple[str, str]]:
        for key, value in self._txn.cursor():
            yield key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        self._txn.abort()
        self._env.close()


def _open_readonly(path: str, type_name: str, source: str) -> lmdb.Environment:
    try:
        return lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=0)
    except lmdb.InvalidError:
        raise TableError(
            "not a mailferry index (perhaps one built by Postfix's own postmap); "
            f"rebuild it with: mailferry postmap {type_name}:{source}", path) from None
    except lmdb.Error as exc:
        if not os.path.exists(path):
            raise TableError(
                f"no such file; build it with: mailferry postmap {type_name}:{source}",
                path) from None
        raise TableError(f"cannot open: {exc}", path) from None
