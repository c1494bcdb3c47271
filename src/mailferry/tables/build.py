"""postmap's build of an indexed table, through a temporary file and a rename.

A reader sees either the whole old table or the whole new one. The index
takes its source's mode and owner, because it holds the same secrets
(sasl_passwd).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lmdb

from mailferry.tables.base import TableError
from mailferry.tables.indexed import index_path
from mailferry.tables.source import read_entries

# (source path, fold keys, warn(line, text) or None) → (key, value, line) of each entry
Reader = Callable[[str, bool, Callable[[int, str], None] | None], Iterator[tuple[bytes, bytes, int]]]
_MIN_MAP_SIZE = 64 << 20
# LMDB's compiled-in key limit (mdb_env_get_maxkeysize), checked before writing.
_MAX_KEY_BYTES = 511


@dataclass(frozen=True, slots=True)
class BuildReport:
    path: str
    entries: int
    duplicates: int


def build_index(type_name: str, source: str, fold: bool = True,
                warn: Callable[[str], None] | None = None, reader: Reader = read_entries) -> BuildReport:
    """Build `source` into its index atomically; `warn` hears about bad lines and duplicates.
    `reader` parses the source: postmap's format, or aliases(5) for newaliases
    (tables/aliases.py read_alias_entries).

    As in Postfix, the first of duplicate keys wins; unlike Postfix, the
    warning names both line numbers.
    """
    warn = warn or (lambda message: None)
    values: dict[bytes, bytes] = {}
    duplicates: list[tuple[bytes, int]] = []
    longest = 0
    for key, value, line in reader(source, fold, lambda line, text: warn(f"{source}, line {line}: {text}")):
        if key in values:
            duplicates.append((key, line))
            continue
        values[key] = value
        if len(key) > longest:
            longest = len(key)
    if longest > _MAX_KEY_BYTES:
        raise TableError(f"a key is longer than {_MAX_KEY_BYTES} bytes, the most an index can hold", source)
    if duplicates:
        _warn_duplicates(source, fold, duplicates, warn, reader)
    target = index_path(type_name, source)
    _write_atomically(target, source, values)
    return BuildReport(target, len(values), len(duplicates))


def _warn_duplicates(source: str, fold: bool, duplicates: list[tuple[bytes, int]],
                     warn: Callable[[str], None], reader: Reader) -> None:
    """Name the line each duplicate repeats. A second pass, paid only when there are duplicates."""
    wanted = {key for key, _ in duplicates}
    first_line: dict[bytes, int] = {}
    for key, _, line in reader(source, fold, None):
        if key in wanted and key not in first_line:
            first_line[key] = line
    for key, line in duplicates:
        shown = key.decode("utf-8", "surrogateescape")
        warn(f"{source}, line {line}: duplicate entry: \"{shown}\" "
             f"(first on line {first_line[key]}, which wins)")


def _write_atomically(target: str, source: str, values: dict[bytes, bytes]) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    # Twice the source, plus page overhead, holds any index of it; the file grows only as used.
    map_size = max(_MIN_MAP_SIZE, 2 * os.path.getsize(source) + 64 * len(values))
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    os.close(fd)
    try:
        env = lmdb.open(temp, subdir=False, lock=False, map_size=map_size, max_dbs=0,
                        sync=False, metasync=False)
        with env.begin(write=True) as txn:
            # Appending keys in sorted order fills pages densely and skips every search.
            txn.cursor().putmulti(((key, values[key]) for key in sorted(values)), append=True)
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
