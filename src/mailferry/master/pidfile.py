"""The pid file: `queue_directory/pid/master.pid`, as Postfix keeps it."""

from __future__ import annotations

import os


def pid_path(queue_directory: str) -> str:
    return os.path.join(queue_directory, "pid", "master.pid")


def running_pid(queue_directory: str) -> int | None:
    """The pid of a live daemon, or None (a stale file is ignored)."""
    try:
        with open(pid_path(queue_directory), encoding="ascii") as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def write_pid(queue_directory: str) -> None:
    path = pid_path(queue_directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}"
    with open(temp, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid():>10}\n")
    os.replace(temp, path)


def remove_pid(queue_directory: str) -> None:
    try:
        if running_pid(queue_directory) in (None, os.getpid()):
            os.unlink(pid_path(queue_directory))
    except OSError:
        pass
