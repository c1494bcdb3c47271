"""What every queue backend provides (SQLite on disk, RAM for tests and benchmarks).

Calls are synchronous and are made from one writer thread (inserts, updates)
and any number of readers; the daemon reaches them through GroupCommitter
and a thread pool, the queue tools directly. Every call is counted in
`stats`, as OpenSMTPD counts its storage calls, so benchmarks can report
how many commits a thousand messages cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext

from mailferry.message import NewMessage, QueuedMessage


class QueueError(Exception):
    """The queue could not store or change a message. The sender gets a 4xx."""

    reply_code = 451
    enhanced_status = "4.3.0"


class QueueFull(QueueError):
    """The disk (or the queue's limit) is full: 452 4.3.1, as Postfix says it."""

    reply_code = 452
    enhanced_status = "4.3.1"


class QueueStore:
    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()

    # --- intake
    def insert_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Store every message in ONE durable transaction; return their queue IDs, in order.

        When this returns, the messages survive a crash (fsync done). On failure
        nothing of the batch is stored and QueueFull or QueueError is raised.
        """
        raise NotImplementedError

    # --- large content in its own file (SQLite only; the RAM store keeps everything inline)
    def stages(self, message: NewMessage) -> bool:
        """Whether `message`'s content goes to its own file, written by stage_content
        before the row is inserted. Default: never."""
        return False

    def stage_content(self, message: NewMessage) -> NewMessage:
        """Write the content to its own durable file; return the message naming it.
        Runs on any thread, outside the writer's transaction."""
        raise NotImplementedError

    def discard_staged(self, messages: Sequence[NewMessage]) -> None:
        """Remove the files of staged messages that were not inserted after all."""

    def sweep_content_files(self) -> list[str]:
        """Remove content files that no message names; return their names."""
        return []

    def missing_content_files(self) -> list:
        """(queue ID, path) of messages whose content file is gone."""
        return []

    # --- reading
    def get(self, queue_id: str) -> QueuedMessage | None:
        raise NotImplementedError

    def content(self, queue_id: str) -> bytes:
        """The message's bytes; KeyError when the message is gone."""
        raise NotImplementedError

    def messages(self, queue: str | None = None) -> list[QueuedMessage]:
        """Every message (or those of one queue), oldest first."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """How many messages each queue (active, deferred, hold, ...) holds: for the
        metrics endpoint, without reading the messages themselves."""
        raise NotImplementedError

    def due(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[QueuedMessage]:
        """Up to `limit` messages not on hold whose next attempt is due, by next
        attempt then arrival: first in, first out for new mail. Messages named
        in `exclude` (those being delivered right now) are left out."""
        raise NotImplementedError

    def contents(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        """Several messages' content in one read; those no longer queued are absent."""
        raise NotImplementedError

    # --- delivery results
    def update(self, message: QueuedMessage) -> None:
        """Store the recipients' states, queue, next_attempt and attempts of `message`.

        The operator wins a race with the scheduler: a message put on hold
        meanwhile stays on hold, and one deleted meanwhile stays deleted.
        """
        raise NotImplementedError

    def remove(self, queue_id: str) -> bool:
        raise NotImplementedError

    # --- operator actions (postsuper, postqueue)
    def hold(self, queue_ids: Sequence[str] | None) -> int:
        """Put messages (None: all) on hold; return how many changed."""
        raise NotImplementedError

    def release(self, queue_ids: Sequence[str] | None) -> int:
        raise NotImplementedError

    def requeue(self, queue_ids: Sequence[str] | None) -> int:
        """Make messages due now with every unfinished recipient pending (postsuper -r)."""
        raise NotImplementedError

    def delete(self, queue_ids: Sequence[str] | None, queue: str | None = None) -> int:
        raise NotImplementedError

    def flush(self, queue_ids: Sequence[str] | None = None) -> int:
        """Make deferred messages (or the given ones) due now (postqueue -f / -i)."""
        raise NotImplementedError

    def batch(self) -> AbstractContextManager[None]:
        """A context in which several writes share one transaction (the group
        commit); they are durable only when the block exits. Default: none."""
        return nullcontext()

    def close(self) -> None:
        pass
