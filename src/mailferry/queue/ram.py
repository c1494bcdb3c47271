"""The queue in memory: same behaviour as the SQLite store, no durability.

For tests, and for benchmarks of everything but the disk (OpenSMTPD keeps
a RAM queue backend for the same reasons). Records are copied in and out,
so callers can change what they got only through update(), as with SQLite.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from mailferry.message import (
    ACTIVE,
    DEFERRED,
    DEFERRED_QUEUE,
    HOLD,
    PENDING,
    NewMessage,
    QueuedMessage,
    Recipient,
)
from mailferry.queue.queue_id import new_queue_ids
from mailferry.queue.store import QueueError, QueueFull, QueueStore


class RamQueueStore(QueueStore):
    def __init__(self, max_messages: int | None = None) -> None:
        """`max_messages`: beyond it insert_many raises QueueFull, as a full disk would."""
        super().__init__()
        self.max_messages = max_messages
        self._messages: dict[str, QueuedMessage] = {}
        self._contents: dict[str, bytes] = {}
        self._lock = threading.Lock()

    # --- intake

    def insert_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Messages keep the queue_id smtpd gave them; the others get one here."""
        now = time.time()
        with self._lock:
            self.stats["insert_many"] += 1
            if self.max_messages is not None and \
                    len(self._messages) + len(messages) > self.max_messages:
                self.stats["full"] += 1
                raise QueueFull(f"RAM queue: more than {self.max_messages} messages")
            ids = self._ids_for(messages)
            for queue_id, message in zip(ids, messages):
                self._messages[queue_id] = _queued_from_new(queue_id, message, now)
                self._contents[queue_id] = bytes(message.content)
            self.stats["commits"] += 1
            self.stats["messages_inserted"] += len(messages)
            self.stats["recipients_inserted"] += sum(len(m.recipients) for m in messages)
        return ids

    def _ids_for(self, messages: Sequence[NewMessage]) -> list[str]:
        fresh = iter(new_queue_ids(sum(1 for m in messages if not m.queue_id)))
        ids = [message.queue_id or next(fresh) for message in messages]
        if len(set(ids)) < len(ids) or any(queue_id in self._messages for queue_id in ids):
            raise QueueError(f"RAM queue: queue ID already in use: {', '.join(ids)}")
        return ids

    # --- reading

    def get(self, queue_id: str) -> QueuedMessage | None:
        with self._lock:
            self.stats["get"] += 1
            message = self._messages.get(queue_id)
            return None if message is None else _copy(message)

    def contents(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        with self._lock:
            self.stats["contents"] += 1
            return {queue_id: self._contents[queue_id] for queue_id in queue_ids
                    if queue_id in self._contents}

    def content(self, queue_id: str) -> bytes:
        """The message's content; KeyError if it is no longer queued."""
        with self._lock:
            self.stats["content"] += 1
            return self._contents[queue_id]

    def messages(self, queue: str | None = None) -> list[QueuedMessage]:
        with self._lock:
            self.stats["messages"] += 1
            chosen = [m for m in self._messages.values() if queue is None or m.queue == queue]
            chosen.sort(key=lambda m: (m.arrival_time, m.queue_id))
            return [_copy(m) for m in chosen]

    def counts(self) -> dict[str, int]:
        with self._lock:
            self.stats["counts"] += 1
            return dict(Counter(m.queue for m in self._messages.values()))

    def due(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[QueuedMessage]:
        """Due messages in the order they became due (next_attempt), then arrival."""
        with self._lock:
            self.stats["due"] += 1
            due = (m for m in self._messages.values()
                   if m.queue != HOLD and m.next_attempt <= now and m.queue_id not in exclude)
            first = heapq.nsmallest(limit, due, key=lambda m: (m.next_attempt, m.arrival_time))
            return [_copy(m) for m in first]

    # --- delivery results

    def update(self, message: QueuedMessage) -> None:
        """An operator's hold wins; a message deleted meanwhile stays deleted."""
        with self._lock:
            self.stats["update"] += 1
            stored = self._messages.get(message.queue_id)
            if stored is None:
                self.stats["update_missing"] += 1
                return
            if stored.queue != HOLD:
                stored.queue = message.queue
            stored.next_attempt = message.next_attempt
            stored.attempts = message.attempts
            stored.delay_warned = message.delay_warned
            for kept, given in zip(stored.recipients, message.recipients):
                kept.status, kept.dsn, kept.reason = given.status, given.dsn, given.reason
            self.stats["commits"] += 1

    def remove(self, queue_id: str) -> bool:
        with self._lock:
            self.stats["remove"] += 1
            self._contents.pop(queue_id, None)
            return self._messages.pop(queue_id, None) is not None

    # --- operator actions

    def hold(self, queue_ids: Sequence[str] | None) -> int:
        with self._lock:
            self.stats["hold"] += 1
            changed = 0
            for message in self._chosen(queue_ids):
                if message.queue != HOLD:
                    message.queue = HOLD
                    changed += 1
            return changed

    def release(self, queue_ids: Sequence[str] | None) -> int:
        """Move held mail to the deferred queue, due now (postsuper -H)."""
        now = time.time()
        with self._lock:
            self.stats["release"] += 1
            changed = 0
            for message in self._chosen(queue_ids):
                if message.queue == HOLD:
                    message.queue, message.next_attempt = DEFERRED_QUEUE, now
                    changed += 1
            return changed

    def requeue(self, queue_ids: Sequence[str] | None) -> int:
        """As postsuper -r: held mail is requeued too, and so released."""
        now = time.time()
        with self._lock:
            self.stats["requeue"] += 1
            changed = 0
            for message in self._chosen(queue_ids):
                message.queue, message.next_attempt = ACTIVE, now
                for recipient in message.recipients:
                    if recipient.status == DEFERRED:
                        recipient.status = PENDING
                changed += 1
            return changed

    def delete(self, queue_ids: Sequence[str] | None, queue: str | None = None) -> int:
        with self._lock:
            self.stats["delete"] += 1
            doomed = [m.queue_id for m in self._chosen(queue_ids) if not queue or m.queue == queue]
            for queue_id in doomed:
                del self._messages[queue_id]
                del self._contents[queue_id]
            return len(doomed)

    def flush(self, queue_ids: Sequence[str] | None = None) -> int:
        """Make mail due now: all deferred mail, or the named messages unless held.
        Returns how many were not due yet."""
        now = time.time()
        with self._lock:
            self.stats["flush"] += 1
            changed = 0
            for message in self._chosen(queue_ids):
                eligible = message.queue == DEFERRED_QUEUE if queue_ids is None \
                    else message.queue != HOLD
                if eligible and message.next_attempt > now:
                    message.next_attempt = now
                    changed += 1
            return changed

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Nothing to group in memory; here for GroupCommitter, as in SqliteQueueStore."""
        yield

    def _chosen(self, queue_ids: Sequence[str] | None) -> list[QueuedMessage]:
        if queue_ids is None:
            return list(self._messages.values())
        found = (self._messages.get(queue_id) for queue_id in dict.fromkeys(queue_ids))
        return [message for message in found if message is not None]


def _queued_from_new(queue_id: str, message: NewMessage, now: float) -> QueuedMessage:
    recipients = [Recipient(r.address, r.orcpt, r.notify, r.status, r.dsn, r.reason)
                  for r in message.recipients]
    queue = HOLD if message.hold else ACTIVE
    return QueuedMessage(queue_id, queue, message.sender, recipients, len(message.content),
                         message.arrival_time or now, now, 0, message.message_id,
                         replace(message.client), message.origin, message.dsn_ret,
                         message.dsn_envid, message.body_type, message.smtputf8,
                         content_filter=message.content_filter)


def _copy(message: QueuedMessage) -> QueuedMessage:
    return replace(message, recipients=[replace(r) for r in message.recipients],
                   client=replace(message.client))
