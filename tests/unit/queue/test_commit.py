"""GroupCommitter: one writer thread, one commit for many submitters."""

import asyncio
import os
import threading
import types
from contextlib import contextmanager

import pytest

from mailferry.message import HOLD
from mailferry.queue import commit as commit_module
from mailferry.queue import (
    GroupCommitter,
    QueueError,
    QueueFull,
    RamQueueStore,
    SqliteQueueStore,
)

from .samples import problems_with, sample_message, self_checking_message


class GatedStore(RamQueueStore):
    """insert_many waits for `gate`, so work submitted meanwhile piles up."""

    def __init__(self, **options):
        super().__init__(**options)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []
        self.returned = 0

    def insert_many(self, messages):
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        ids = super().insert_many(messages)
        self.batch_sizes.append(len(messages))
        self.returned += len(messages)
        return ids


async def writer_busy(store: GatedStore) -> None:
    """Wait until the writer thread sits in the gated insert_many."""
    assert await asyncio.to_thread(store.entered.wait, 10), "the writer never reached insert_many"


async def writer_in(event: threading.Event) -> None:
    """Wait until the writer thread runs the call that sets `event`."""
    assert await asyncio.to_thread(event.wait, 10), "the writer never ran the blocking call"


async def until_waiting(committer: GroupCommitter, count: int) -> None:
    """Let the event loop run until `count` pieces of work wait for the writer.

    submit() and run() queue their work before their first await, so a few
    turns of the loop are enough: no clock is involved."""
    for _ in range(1000):
        if len(committer._inserts) + len(committer._calls) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {len(committer._inserts) + len(committer._calls)} of {count} "
                         "pieces of work reached the committer")


def test_concurrent_submitters_share_commits(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    other_process_view = SqliteQueueStore(tmp_path / "queue.db")

    async def main():
        committer = GroupCommitter(store)

        async def session(number):
            queue_id = await committer.submit(
                self_checking_message(number, number % 4 + 1, os.urandom(1024)))
            # Durable and visible to anyone the moment the submitter hears of it.
            assert problems_with(other_process_view, queue_id) == []
            return queue_id

        ids = await asyncio.gather(*(session(number) for number in range(100)))
        await committer.close()
        return ids

    ids = asyncio.run(main())
    assert len(set(ids)) == 100
    assert store.stats["commits"] <= 10, store.stats
    assert sorted(m.queue_id for m in store.messages()) == sorted(ids)
    store.close()
    other_process_view.close()


def test_work_piles_up_while_a_commit_is_in_flight():
    store = GatedStore()

    async def main():
        committer = GroupCommitter(store, max_batch=30)
        first = asyncio.ensure_future(committer.submit(sample_message(0)))
        await writer_busy(store)
        rest = [asyncio.ensure_future(committer.submit(sample_message(n))) for n in range(1, 101)]
        await until_waiting(committer, 100)
        store.gate.set()
        ids = await asyncio.gather(first, *rest)
        await committer.close()
        return committer, ids

    committer, ids = asyncio.run(main())
    assert store.batch_sizes == [1, 30, 30, 30, 10]
    assert sorted(committer.batch_sizes.elements()) == [1, 10, 30, 30, 30]
    assert len(set(ids)) == 101


def test_no_submitter_hears_before_the_commit_returned():
    store = GatedStore()

    async def main():
        committer = GroupCommitter(store)
        submitted = asyncio.ensure_future(committer.submit(sample_message()))
        await writer_busy(store)
        # An answer given before the commit would have been handed to this loop
        # before the writer entered insert_many, so ahead of writer_busy's own
        # wakeup: it would show here already.
        assert not submitted.done()
        store.gate.set()
        queue_id = await submitted
        assert store.returned == 1
        await committer.close()
        return queue_id

    assert RamQueueStore.get(store, asyncio.run(main())) is not None


def test_ids_and_calls_follow_submission_order():
    store = GatedStore()
    store.gate.set()
    ran: list[int] = []

    async def main():
        committer = GroupCommitter(store)
        ids = await asyncio.gather(*(committer.submit(sample_message(n)) for n in range(50)))
        await asyncio.gather(*(committer.run(ran.append, n) for n in range(50)))
        await committer.close()
        return ids

    ids = asyncio.run(main())
    assert ids == sorted(ids)
    assert [m.queue_id for m in store.messages()] == ids
    assert [m.sender for m in store.messages()] == [f"sender{n}@example.org" for n in range(50)]
    assert ran == list(range(50))


def test_queue_full_reaches_every_submitter_of_the_batch():
    store = GatedStore(max_messages=5)

    async def main():
        committer = GroupCommitter(store)
        first = asyncio.ensure_future(committer.submit(sample_message(0)))
        await writer_busy(store)
        batch = [asyncio.ensure_future(committer.submit(sample_message(n))) for n in range(1, 11)]
        await until_waiting(committer, 10)
        store.gate.set()
        outcomes = await asyncio.gather(first, *batch, return_exceptions=True)
        later = await committer.submit(sample_message(11))
        await committer.close()
        return outcomes, later

    outcomes, later = asyncio.run(main())
    assert isinstance(outcomes[0], str)
    assert all(isinstance(outcome, QueueFull) for outcome in outcomes[1:])
    assert {(o.reply_code, o.enhanced_status) for o in outcomes[1:]} == {(452, "4.3.1")}
    assert [m.queue_id for m in store.messages()] == [outcomes[0], later]


def test_full_sqlite_queue_through_the_committer(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")

    def limit_pages(extra):
        connection = store._connection()      # the writer thread's own connection
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + extra}")

    async def main():
        committer = GroupCommitter(store)
        await committer.run(limit_pages, 30)
        outcomes = []
        for round_number in range(40):
            outcomes += await asyncio.gather(*(
                committer.submit(self_checking_message(n, 2, os.urandom(3000)))
                for n in range(round_number * 10, round_number * 10 + 10)),
                return_exceptions=True)
        await committer.run(limit_pages, 10_000)
        after = await committer.submit(self_checking_message(999, 1, b"after"))
        await committer.close()
        return outcomes, after

    outcomes, after = asyncio.run(main())
    stored = [outcome for outcome in outcomes if isinstance(outcome, str)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, str)]
    assert stored and refused
    assert all(isinstance(outcome, QueueFull) for outcome in refused)
    assert sorted(m.queue_id for m in store.messages()) == sorted(stored + [after])
    assert [problem for queue_id in stored + [after]
            for problem in problems_with(store, queue_id)] == []
    store.close()


def test_on_a_full_disk_removals_still_go_through(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    delivered, *waiting = store.insert_many(
        [self_checking_message(n, 2, os.urandom(3000)) for n in range(5)])
    release_writer = threading.Event()
    limited = threading.Event()

    def limit_pages():
        connection = store._connection()
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages + 5}")
        limited.set()
        release_writer.wait(10)

    async def main():
        committer = GroupCommitter(store)
        blocking = asyncio.ensure_future(committer.run(limit_pages))
        await writer_in(limited)
        work = asyncio.gather(
            committer.run(store.remove, delivered),
            *(committer.submit(self_checking_message(n, 2, os.urandom(20_000))) for n in range(10)),
            return_exceptions=True)
        await until_waiting(committer, 11)
        release_writer.set()
        await blocking
        outcomes = await work
        await committer.close()
        return outcomes

    removed, *inserted = asyncio.run(main())
    assert removed is True
    assert all(isinstance(outcome, QueueFull) for outcome in inserted)
    assert sorted(m.queue_id for m in store.messages()) == sorted(waiting)
    assert [problem for queue_id in waiting for problem in problems_with(store, queue_id)] == []
    store.close()


class FailingCommitStore(RamQueueStore):
    @contextmanager
    def batch(self):
        yield
        raise QueueError("disk I/O error")


def test_a_failed_commit_fails_every_piece_of_work():
    store = FailingCommitStore()

    async def main():
        committer = GroupCommitter(store)
        outcomes = await asyncio.gather(committer.submit(sample_message(1)),
                                        committer.run(lambda: "updated"),
                                        return_exceptions=True)
        await committer.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert [type(outcome) for outcome in outcomes] == [QueueError, QueueError]
    assert outcomes[0].reply_code == 451


def test_run_returns_results_and_keeps_errors_to_their_caller():
    store = GatedStore()

    def broken():
        raise KeyError("no such thing")

    async def main():
        committer = GroupCommitter(store)
        first = asyncio.ensure_future(committer.submit(sample_message(0)))
        await writer_busy(store)
        pending = [committer.submit(sample_message(1)), committer.run(broken),
                   committer.run(lambda: threading.current_thread().name)]
        waiting = asyncio.gather(*pending, return_exceptions=True)
        await until_waiting(committer, 3)
        store.gate.set()
        queue_id = await first
        outcomes = await waiting
        removed = await committer.run(store.remove, queue_id)
        await committer.close()
        return outcomes, removed

    (inserted, error, thread_name), removed = asyncio.run(main())
    assert isinstance(inserted, str) and store.get(inserted) is not None
    assert isinstance(error, KeyError)
    assert thread_name == "queue-writer"
    assert removed is True


def test_inserts_and_updates_of_one_cycle_share_one_commit(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    [held] = store.insert_many([sample_message(0)])
    release_writer = threading.Event()
    blocked = threading.Event()

    def block():
        blocked.set()
        release_writer.wait(10)

    async def main():
        committer = GroupCommitter(store)
        blocking = asyncio.ensure_future(committer.run(block))
        await writer_in(blocked)
        commits = store.stats["commits"]
        work = [committer.submit(sample_message(n)) for n in range(1, 11)]
        work += [committer.run(store.hold, [held]), committer.run(store.get, held)]
        gathered = asyncio.gather(*work)
        await until_waiting(committer, 12)
        release_writer.set()
        await blocking
        outcomes = await gathered
        await committer.close()
        return commits, outcomes

    commits_before, outcomes = asyncio.run(main())
    assert store.stats["commits"] == commits_before + 2   # the blocking call's, then one for all
    assert outcomes[10] == 1 and outcomes[11].queue == HOLD
    assert len(store.messages()) == 11
    store.close()


def test_close_writes_everything_already_submitted():
    store = GatedStore()

    async def main():
        committer = GroupCommitter(store)
        tasks = [asyncio.ensure_future(committer.submit(sample_message(0)))]
        await writer_busy(store)
        # 49 more wait behind the commit in flight when close() begins.
        tasks += [asyncio.ensure_future(committer.submit(sample_message(n))) for n in range(1, 50)]
        await until_waiting(committer, 49)
        closing = asyncio.ensure_future(committer.close())
        while not committer._closing:       # close() has begun, the writer is still held
            await asyncio.sleep(0)
        store.gate.set()
        await asyncio.wait_for(closing, 10)
        # Bounded: work dropped at close would leave its submitters waiting forever.
        ids = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        with pytest.raises(QueueError, match="shutting down"):
            await committer.submit(sample_message(99))
        return ids

    ids = asyncio.run(main())
    assert sorted(m.queue_id for m in store.messages()) == sorted(ids)
    assert len(ids) == 50


def test_a_submitter_gone_before_its_write_is_not_queued():
    store = GatedStore()

    async def main():
        committer = GroupCommitter(store)
        first = asyncio.ensure_future(committer.submit(sample_message(0)))
        await writer_busy(store)
        gone = asyncio.ensure_future(committer.submit(sample_message(1)))
        await until_waiting(committer, 1)
        gone.cancel()
        store.gate.set()
        queue_id = await first
        await committer.close()
        return queue_id

    queue_id = asyncio.run(main())
    assert [m.queue_id for m in store.messages()] == [queue_id]


class TimeoutRecordingCondition(threading.Condition):
    """threading.Condition that remembers every timeout it was asked to wait for."""

    timeouts: list = []

    def wait(self, timeout=None):
        TimeoutRecordingCondition.timeouts.append(timeout)
        return super().wait(timeout)


def test_writer_latency_when_idle_is_one_commit(monkeypatch):
    """No timer: a lone submitter is answered as soon as its commit is done.
    (bench/commit measures how soon that is.)"""
    store = RamQueueStore()
    TimeoutRecordingCondition.timeouts = []
    monkeypatch.setattr(commit_module, "threading",
                        types.SimpleNamespace(Condition=TimeoutRecordingCondition, Thread=threading.Thread))
    commits_seen = []

    async def main():
        committer = GroupCommitter(store)
        for number in range(20):
            await committer.submit(sample_message(number))
            commits_seen.append(store.stats["commits"])
        await committer.close()

    asyncio.run(main())
    # Each submitter hears right after its own commit, not after a later one.
    assert commits_seen == list(range(1, 21))
    assert store.stats["commits"] == 20
    # The writer sleeps only until work arrives, never for a while to gather more.
    assert TimeoutRecordingCondition.timeouts and set(TimeoutRecordingCondition.timeouts) == {None}
