"""Large content in its own file (queue/sqlite.py): written and synced before its row, read back
whole, removed only after the removal commits, and swept when a crash left it behind."""

import asyncio
import os
import threading

import pytest

from mailferry.queue import GroupCommitter, QueueError, SqliteQueueStore
from mailferry.queue.sqlite import CONTENT_FILE_MIN_BYTES

from .samples import problems_with, self_checking_message

LARGE = CONTENT_FILE_MIN_BYTES + 1
SMALL = CONTENT_FILE_MIN_BYTES - 1


@pytest.fixture
def store(tmp_path):
    opened = SqliteQueueStore(tmp_path / "queue.db")
    yield opened
    opened.close()


def staged(store, number, size):
    message = self_checking_message(number, 2, os.urandom(size))
    return store.stage_content(message) if store.stages(message) else message


def files(store):
    return sorted(os.listdir(store.content_directory)) if store.content_directory.exists() else []


def test_only_content_at_the_threshold_or_above_goes_to_a_file(store):
    assert store.stages(self_checking_message(1, 1, b"x" * CONTENT_FILE_MIN_BYTES))
    assert not store.stages(self_checking_message(2, 1, b"x" * SMALL))


def test_a_large_message_is_a_file_and_a_row_without_the_bytes(store):
    large = staged(store, 1, LARGE)
    small = staged(store, 2, SMALL)
    assert large.content_file and not small.content_file
    [large_id, small_id] = store.insert_many([large, small])
    assert files(store) == [large.content_file]
    assert os.stat(store.content_directory / large.content_file).st_mode & 0o777 == 0o600
    assert (store.content_directory / large.content_file).read_bytes() == large.content
    assert problems_with(store, large_id) == [] and problems_with(store, small_id) == []
    assert store.get(large_id).size == LARGE
    assert store.contents([large_id, small_id]) == {large_id: large.content, small_id: small.content}
    with store._read_transaction() as connection:
        stored = dict(connection.execute("SELECT queue_id, length(content) FROM messages").fetchall())
    assert stored == {large_id: 0, small_id: SMALL}, "the large row must not hold the bytes too"


def test_the_file_is_named_by_the_queue_id_smtpd_gave(store):
    message = self_checking_message(1, 1, os.urandom(LARGE))
    message.queue_id = "4XyZAbCdEfGh"
    assert store.stage_content(message).content_file == "4XyZAbCdEfGh"
    # A second file for the same ID (a retried insert) gets a name of its own.
    again = store.stage_content(message).content_file
    assert again.startswith("4XyZAbCdEfGh.") and len(files(store)) == 2


def test_the_file_goes_only_after_its_removal_commits(store):
    [queue_id] = store.insert_many([staged(store, 1, LARGE)])
    [name] = files(store)
    with pytest.raises(RuntimeError):
        with store.batch():
            assert store.remove(queue_id)
            raise RuntimeError("the batch fails: the removal never happened")
    store.removed_files()
    assert files(store) == [name] and problems_with(store, queue_id) == []
    with store.batch():
        assert store.remove(queue_id)
        assert (store.content_directory / name).exists(), "gone before the commit"
    store.removed_files()
    assert files(store) == []


def test_postsuper_delete_removes_the_files_named_and_all(store):
    ids = store.insert_many([staged(store, n, LARGE) for n in range(3)])
    assert len(files(store)) == 3
    assert store.delete([ids[0], ids[0]]) == 1
    store.removed_files()
    assert len(files(store)) == 2
    assert store.delete(None) == 2
    store.removed_files()
    assert files(store) == []


def test_discarding_spares_a_file_whose_row_exists(store):
    inserted = staged(store, 1, LARGE)
    store.insert_many([inserted])
    orphan = staged(store, 2, LARGE)
    store.discard_staged([inserted, orphan])
    assert files(store) == [inserted.content_file]


def test_the_sweep_removes_only_files_no_row_names(store):
    [queue_id] = store.insert_many([staged(store, 1, LARGE)])
    orphan = staged(store, 2, LARGE).content_file      # a crash between the file and its row
    assert store.sweep_content_files() == [orphan]
    assert problems_with(store, queue_id) == [] and len(files(store)) == 1
    assert store.missing_content_files() == []


def test_a_missing_file_is_named_and_the_message_reads_as_gone(store):
    message = staged(store, 1, LARGE)
    [queue_id] = store.insert_many([message])
    assert store.missing_content_files() == []
    os.unlink(store.content_directory / message.content_file)
    assert store.missing_content_files() == [(queue_id, store.content_directory / message.content_file)]
    assert store.check() == [], "the queue still opens: one lost file must not stop all mail"
    assert store.contents([queue_id]) == {}
    with pytest.raises(KeyError):
        store.content(queue_id)


def test_a_content_directory_that_cannot_hold_files_is_a_queue_error_naming_it(store):
    store.content_directory.write_bytes(b"a file where the directory should be")
    with pytest.raises(QueueError, match=f"{store.content_directory}.*Not a directory"):
        store.stage_content(self_checking_message(1, 1, os.urandom(LARGE)))


def test_the_committer_writes_the_file_before_the_row(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    seen_at_insert = []
    insert_many = store.insert_many

    def checking_insert_many(messages):
        seen_at_insert.extend((store.content_directory / m.content_file).read_bytes() == m.content
                              for m in messages)
        return insert_many(messages)

    store.insert_many = checking_insert_many

    async def main():
        committer = GroupCommitter(store)
        ids = await asyncio.gather(*(committer.submit(self_checking_message(n, 1, os.urandom(LARGE)))
                                     for n in range(4)))
        await committer.close()
        return ids

    try:
        ids = asyncio.run(main())
        assert seen_at_insert == [True] * 4
        assert [problem for queue_id in ids for problem in problems_with(store, queue_id)] == []
        assert len(files(store)) == 4
    finally:
        store.close()


def test_a_submitter_gone_while_its_file_is_written_leaves_no_file(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    writing, finish = threading.Event(), threading.Event()
    stage_content = store.stage_content

    def slow_stage(message):
        writing.set()
        assert finish.wait(10)
        return stage_content(message)

    store.stage_content = slow_stage

    async def main():
        committer = GroupCommitter(store)
        gone = asyncio.ensure_future(committer.submit(self_checking_message(1, 1, os.urandom(LARGE))))
        assert await asyncio.to_thread(writing.wait, 10)
        gone.cancel()
        finish.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await committer.close()
        # the discard runs when the write finishes, on the loop
        for _ in range(1000):
            if not files(store):
                break
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
        assert store.messages() == [] and files(store) == []
    finally:
        store.close()


def test_a_failed_insert_removes_the_files_of_its_messages(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")

    def failing_insert_many(messages):
        raise QueueError("the disk said no")

    store.insert_many = failing_insert_many

    async def main():
        committer = GroupCommitter(store)
        with pytest.raises(QueueError, match="the disk said no"):
            await committer.submit(self_checking_message(1, 1, os.urandom(LARGE)))
        await committer.close()

    try:
        asyncio.run(main())
        assert files(store) == []
    finally:
        store.close()
