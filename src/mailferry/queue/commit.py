"""Group commit: many sessions' messages made durable by one transaction.

One writer thread owns every write to the queue. Whenever it is free it
takes everything submitted so far (up to max_batch messages, and up to
max_batch other write calls), writes it all in one transaction and only then
resolves the submitters' futures. While that commit (and its fsync) is in
flight, new submissions pile up for the next one, so the busier the server,
the more messages each fsync covers, with no timer and no added latency
when it is idle.

smtpd awaits submit() before it answers DATA: no 250 goes out before the
message is durable (RFC 5321 §6.1). If the commit fails, every submitter of
that batch gets the QueueError (451 4.3.0) or QueueFull (452 4.3.1).

Order: messages are inserted in submission order and other calls run in
submission order, but a cycle runs its calls before its messages; a call
that must follow an insert awaits the insert first (it needs the queue ID
anyway).

submit_with() stores messages and runs a write in the same transaction:
cleanup uses it for the notices qmgr makes (bounces, delay warnings), so a
notice and the delivery outcome that caused it are durable together or not
at all. Neither can then be lost, or sent twice, by a crash in between.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from mailferry.message import NewMessage
from mailferry.queue.store import QueueError, QueueFull, QueueStore


@dataclass(slots=True)
class _Insert:
    message: NewMessage
    future: asyncio.Future


@dataclass(slots=True)
class _Call:
    function: Callable[..., Any]
    args: tuple
    future: asyncio.Future


# (future, result, exception): what one piece of work came to.
_Outcome = tuple[asyncio.Future, Any, BaseException | None]
T = TypeVar("T")


class GroupCommitter:
    def __init__(self, store: QueueStore, loop: asyncio.AbstractEventLoop | None = None,
                 max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        # Messages per committed insert batch -> how many such batches (for benchmarks).
        self.batch_sizes: Counter[int] = Counter()
        self._loop = loop
        self._inserts: deque[_Insert] = deque()
        self._calls: deque[_Call] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._write_loop, name="queue-writer", daemon=True)
        self._thread.start()

    async def submit(self, message: NewMessage) -> str:
        """Queue `message`; return its queue ID once it is durable.

        A large content is first written to its own file (store.stage_content) on a
        thread of the default pool: sessions write theirs side by side, outside the
        writer's transaction, and the row that names the file commits after it."""
        if self.store.stages(message):
            message = await self._stage(message)
        future = self._new_future()
        try:
            self._enqueue(self._inserts, _Insert(message, future))
        except BaseException:
            self.store.discard_staged([message])
            raise
        return await future

    async def _stage(self, message: NewMessage) -> NewMessage:
        staging = asyncio.get_running_loop().run_in_executor(None, self.store.stage_content, message)
        try:
            return await asyncio.shield(staging)
        except asyncio.CancelledError:
            # The client went away while its file was written: nothing will name that file.
            staging.add_done_callback(self._discard_stage)
            raise

    def _discard_stage(self, staging: asyncio.Future) -> None:
        if not staging.cancelled() and staging.exception() is None:
            self.store.discard_staged([staging.result()])

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a write (store.update, store.remove, ...) on the writer thread,
        in the next transaction; return its result once that is committed."""
        future = self._new_future()
        self._enqueue(self._calls, _Call(function, args, future))
        return await future

    async def submit_with(self, messages: Sequence[NewMessage],
                          then: Callable[[list[str] | QueueError], T]) -> T:
        """Store `messages` and run `then` in ONE transaction, on the writer thread;
        return what `then` returns once that transaction is committed.

        `then` gets the messages' queue IDs, or the QueueError that kept them
        out (a full disk); its own writes go ahead either way, so that it can
        record why the messages are missing. If the commit itself fails, none
        of it happened and the error is raised here."""
        return await self.run(_insert_then, self.store, list(messages), then)

    async def close(self) -> None:
        """Write everything already submitted, then stop the writer thread.
        The store stays open: it belongs to whoever opened it."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        await asyncio.to_thread(self._thread.join)

    # --- event loop side

    def _new_future(self) -> asyncio.Future:
        return (self._loop or asyncio.get_running_loop()).create_future()

    def _enqueue(self, pending: deque, work: _Insert | _Call) -> None:
        with self._wakeup:
            if self._closing:
                raise QueueError("the queue writer is shutting down")
            pending.append(work)
            self._wakeup.notify()

    # --- writer thread

    def _write_loop(self) -> None:
        while True:
            with self._wakeup:
                while not (self._inserts or self._calls or self._closing):
                    self._wakeup.wait()
                if not (self._inserts or self._calls):
                    return
                inserts, dropped = _take(self._inserts, self.max_batch)
                calls, _ = _take(self._calls, self.max_batch)
            if dropped:
                self.store.discard_staged([work.message for work in dropped])
            if inserts or calls:
                _resolve(self._write(inserts, calls))

    def _write(self, inserts: list[_Insert], calls: list[_Call]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        try:
            with self._batch():
                # Calls first: removals free the space that the messages need.
                outcomes += [self._call(call) for call in calls]
                if inserts:
                    outcomes += self._insert(inserts)
        except QueueFull as exc:
            self._discard(inserts)
            if not (inserts and calls):
                return _failed([*inserts, *calls], exc)
            # The messages filled the disk and took the whole transaction with
            # them: they must wait, but updates and removals go ahead alone.
            return _failed(inserts, exc) + self._write([], calls)
        except Exception as exc:  # the commit failed: nothing of this cycle happened
            self._discard(inserts)
            return _failed([*inserts, *calls], exc)
        if inserts and outcomes[-1][2] is None:
            self.batch_sizes[len(inserts)] += 1
        return outcomes

    def _batch(self) -> AbstractContextManager[None]:
        # SQLite makes this one transaction; the RAM store's is a no-op.
        return self.store.batch()

    def _insert(self, inserts: list[_Insert]) -> list[_Outcome]:
        try:
            ids = self.store.insert_many([work.message for work in inserts])
        except Exception as exc:
            self._discard(inserts)
            return _failed(inserts, exc)
        return [(work.future, queue_id, None) for work, queue_id in zip(inserts, ids)]

    def _discard(self, inserts: list[_Insert]) -> None:
        """Messages that were not stored: their content files go (store.stage_content)."""
        self.store.discard_staged([work.message for work in inserts])

    def _call(self, call: _Call) -> _Outcome:
        try:
            return call.future, call.function(*call.args), None
        except Exception as exc:
            return call.future, None, exc


def _insert_then(store: QueueStore, messages: list[NewMessage],
                 then: Callable[[list[str] | QueueError], T]) -> T:
    # On the writer thread, inside the batch: a failed insert is undone alone.
    inserted: list[str] | QueueError
    try:
        inserted = store.insert_many(messages) if messages else []
    except QueueError as error:
        inserted = error
    return then(inserted)


def _failed(work: Sequence[_Insert | _Call], error: BaseException) -> list[_Outcome]:
    return [(piece.future, None, error) for piece in work]


def _take(pending: deque, limit: int) -> tuple[list, list]:
    """Up to `limit` pieces of work whose submitter still waits, and those dropped.
    A submitter cancelled before its write began (the client went away) is dropped:
    nobody will tell that client 250, so the message must not be queued."""
    taken, dropped = [], []
    while pending and len(taken) < limit:
        work = pending.popleft()
        (dropped if work.future.cancelled() else taken).append(work)
    return taken, dropped


def _resolve(outcomes: list[_Outcome]) -> None:
    """Hand the outcomes to each event loop in one callback (one wakeup per batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():     # cancelled while the write was in flight
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
