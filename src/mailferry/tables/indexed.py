"""Indexed tables (`hash:`, `btree:`, `lmdb:`, `cdb:`), stored with LMDB.

Postfix keeps these in Berkeley DB, LMDB or CDB files beside the source;
mailferry stores all of them as LMDB files with the name Postfix would use
(`FILE.db` for hash and btree, `FILE.lmdb`, `FILE.cdb`), so an
administrator's `postmap` habits and file names carry over. A Postfix-built
index is not readable by us: the error says to rebuild it with our postmap.

postmap builds into a temporary file in the same directory and renames it
into place, so a reader sees either the whole old table or the whole new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found
from mailferry.tables.source import read_source

INDEX_SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
_MIN_MAP_SIZE = 64 << 20


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


def _open_readonly(path: str, type_name: str, source: str):
    import lmdb
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


@dataclass(frozen=True, slots=True)
class BuildReport:
    path: str
    entries: int
    duplicates: int


def build_index(type_name: str, source: str, fold: bool = True,
                warn: Callable[[str], None] | None = None) -> BuildReport:
    """Build `source` into its index atomically; `warn` hears about bad lines and duplicates.

    As in Postfix, the first of duplicate keys wins; unlike Postfix, the
    warning names both line numbers.
    """
    warn = warn or (lambda message: None)
    entries: dict[bytes, tuple[bytes, int]] = {}
    duplicates = 0
    for entry in read_source(source, fold, lambda line, message: warn(f"{source}, line {line}: {message}")):
        key = entry.key.encode("utf-8", "surrogateescape")
        first = entries.get(key)
        if first is not None:
            duplicates += 1
            warn(f"{source}, line {entry.line}: duplicate entry: \"{entry.key}\" "
                 f"(first on line {first[1]}, which wins)")
            continue
        entries[key] = (entry.value.encode("utf-8", "surrogateescape"), entry.line)
    target = index_path(type_name, source)
    _write_atomically(target, source, sorted((key, value) for key, (value, _) in entries.items()))
    return BuildReport(target, len(entries), duplicates)


def _write_atomically(target: str, source: str, pairs: list[tuple[bytes, bytes]]) -> None:
    import lmdb
    directory = os.path.dirname(os.path.abspath(target))
    payload = sum(len(key) + len(value) for key, value in pairs)
    map_size = max(_MIN_MAP_SIZE, 4 * payload + 64 * len(pairs))
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    os.close(fd)
    try:
        env = lmdb.open(temp, subdir=False, lock=False, map_size=map_size, max_dbs=0,
                        sync=False, metasync=False)
        with env.begin(write=True) as txn:
            key_too_long = next((key for key, _ in pairs if len(key) > env.max_key_size()), None)
            if key_too_long is not None:
                raise TableError(f"key longer than {env.max_key_size()} bytes: "
                                 f"{key_too_long[:40].decode(errors='replace')!r}...", source)
            txn.cursor().putmulti(pairs, append=True)
        env.sync(True)
        env.close()
        _copy_ownership(source, temp)
        os.replace(temp, target)
    except BaseException:
        _remove_quietly(temp)
        raise


def _copy_ownership(source: str, target: str) -> None:
    """The index holds the same secrets as its source (sasl_passwd), so it gets the same mode and owner."""
    status = os.stat(source)
    os.chmod(target, status.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(target, status.st_uid, status.st_gid)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
