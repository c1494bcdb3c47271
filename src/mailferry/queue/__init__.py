"""The durable queue: storage, queue IDs, group commit."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from mailferry.queue.commit import GroupCommitter
from mailferry.queue.queue_id import is_queue_id, new_queue_id
from mailferry.queue.ram import RamQueueStore
from mailferry.queue.sqlite import SqliteQueueStore
from mailferry.queue.store import QueueError, QueueFull, QueueStore

QUEUE_DATABASE = "queue.db"

__all__ = [
    "GroupCommitter", "QueueError", "QueueFull", "QueueStore", "RamQueueStore",
    "SqliteQueueStore", "QUEUE_DATABASE", "is_queue_id", "new_queue_id", "open_queue",
]


def open_queue(queue_directory: str | os.PathLike[str], backend: str = "sqlite",
               owner: str | None = None, checkpoints: str = "auto") -> QueueStore:
    """The queue kept in `queue_directory` (Postfix's queue_directory).

    `owner` is mail_owner's user name: the database files are given to that
    user and its primary group, as Postfix gives its queue files to mail_owner.
    `checkpoints`: see SqliteQueueStore ("auto", "background" or "elsewhere").
    """
    if backend == "ram":
        return RamQueueStore()
    if backend != "sqlite":
        raise ValueError(f"unknown queue backend {backend!r} (sqlite or ram)")
    uid = gid = None
    if owner is not None:
        try:
            entry = pwd.getpwnam(owner)
        except KeyError:
            raise QueueError(f"mail_owner {owner}: no such user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    return SqliteQueueStore(Path(queue_directory) / QUEUE_DATABASE, uid, gid, checkpoints)
