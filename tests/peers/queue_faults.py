"""Storage faults under the real daemon's queue, for tests/reliability/test_storage_faults.py.

- `tmpfs(path, size)`: a small tmpfs mounted on the queue directory (we are root), unmounted when
  the block ends whatever happened (lazily if something still holds it).
- `fill(directory, leave)`: a filler file that takes all free space but `leave` bytes.
- `read_only(path)`: a read-only bind mount of a directory over itself, undone at the end.
- `FaultShim`: queue_faults.c, compiled here with gcc and loaded with LD_PRELOAD into the daemon.
  Off until the test writes its control file: then the next N fsync/fdatasync (or write) calls on
  the SQLite queue files fail with the errno the test chose, once each, and each injected failure is
  recorded, so the test can show the fault really happened. Nothing of it is in mailferry itself:
  production code carries no hook and pays nothing.

A running process holding the queue open for writing keeps Linux from remounting it read-only
("mount point is busy"), and chattr +i does not stop writes on open descriptors either: a queue
that turns read-only under the daemon (ext4's errors=remount-ro) is therefore shown with the shim
failing writes with EROFS, and a queue that is read-only when the daemon starts with a real ro bind
mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.peers import PeerError, require_tool

SHIM_SOURCE = Path(__file__).with_name("queue_faults.c")
CHUNK = 1 << 20


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise PeerError(f"{' '.join(command)}: exit {result.returncode}: {result.stderr.strip()}")


def _unmount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=60).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount(8) syntax, e.g. "8m") on `path` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted over itself, read-only, for the block."""
    _run("mount", "--bind", str(path), str(path))
    try:
        _run("mount", "-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _unmount(path)


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def fill(directory: Path, leave: int = 0) -> Path:
    """Write `directory`/filler until the file system is full, then give back about `leave` bytes."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * CHUNK
        while True:
            try:
                os.write(descriptor, chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) <= 512:
                    break
                chunk = chunk[: len(chunk) // 2]
        size = os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)
    if leave:
        os.truncate(filler, max(0, size - leave))
    return filler


class FaultShim:
    """queue_faults.so and its control file, in `directory` (one the daemon's user can write)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o1777)
        self.library = self.directory / "queue_faults.so"
        self.control = self.directory / "control"
        self.hits_path = self.directory / "control.hits"
        result = subprocess.run([require_tool("gcc"), "-shared", "-fPIC", "-O2", "-Wall", "-o", str(self.library),
                                 str(SHIM_SOURCE), "-ldl"], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PeerError(f"cannot build the fault shim: {result.stderr.strip()}")

    @property
    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "MAILFERRY_TEST_FAULTS": str(self.control)}

    def inject(self, op: str, count: int, error: int, path_suffix: str = "") -> None:
        """The next `count` calls of `op` ("fsync" or "write") on the queue's files (those whose path
        ends in `path_suffix`, if given) fail with `error`."""
        temporary = self.directory / "control.new"
        temporary.write_text(f"{op} {count} {error} {path_suffix}".rstrip() + "\n")
        temporary.chmod(0o666)
        temporary.rename(self.control)

    def clear(self) -> None:
        self.control.unlink(missing_ok=True)

    def remaining(self) -> int:
        try:
            return int(self.control.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    def hits(self) -> list[str]:
        try:
            return self.hits_path.read_text().splitlines()
        except FileNotFoundError:
            return []
