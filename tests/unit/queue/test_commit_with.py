"""GroupCommitter.submit_with: messages and a write made durable in ONE transaction
(qmgr's notices with the delivery outcome that caused them)."""

import asyncio
from contextlib import contextmanager

from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.queue import GroupCommitter, QueueError, QueueFull, RamQueueStore


class TransactionLog(RamQueueStore):
    """The RAM backend, noting which transaction each insert and call ran in."""

    def __init__(self, **options):
        super().__init__(**options)
        self.transactions = 0
        self.events: list[tuple[int, str]] = []

    @contextmanager
    def batch(self):
        self.transactions += 1
        yield

    def insert_many(self, messages):
        self.events.append((self.transactions, "insert"))
        return super().insert_many(messages)


def new_message(to="bob@example.org"):
    return NewMessage(sender="", recipients=[Recipient(to)], content=b"Subject: s\r\n\r\nx\r\n",
                      client=ClientInfo(), origin="bounce")


def submit_with(store, messages, then):
    async def run():
        committer = GroupCommitter(store)
        try:
            return await committer.submit_with(messages, then)
        finally:
            await committer.close()
    return asyncio.run(run())


def test_the_messages_and_the_write_share_one_transaction_and_the_write_sees_their_ids():
    store = TransactionLog()

    def then(inserted):
        store.events.append((store.transactions, "then"))
        return [store.get(queue_id).recipients[0].address for queue_id in inserted]
    assert submit_with(store, [new_message("a@example.org"), new_message("b@example.org")], then) == \
        ["a@example.org", "b@example.org"]
    assert store.events == [(1, "insert"), (1, "then")]
    assert store.transactions == 1


def test_messages_the_queue_cannot_take_reach_the_write_as_the_error_and_the_write_still_runs():
    store = TransactionLog(max_messages=0)
    ran = []

    def then(inserted):
        ran.append(inserted)
        return "recorded"
    assert submit_with(store, [new_message()], then) == "recorded"
    [error] = ran
    assert isinstance(error, QueueFull) and isinstance(error, QueueError)
    assert store.messages() == []


def test_no_messages_means_no_insert_and_an_empty_list():
    store = TransactionLog()
    assert submit_with(store, [], lambda inserted: inserted) == []
    assert store.events == [] and store.stats["insert_many"] == 0
