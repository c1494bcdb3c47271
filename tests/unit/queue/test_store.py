"""What every queue backend must do, run against SQLite and RAM alike."""

import time

import pytest

from mailferry.message import (
    ACTIVE,
    BOUNCED,
    DEFERRED,
    DEFERRED_QUEUE,
    HOLD,
    PENDING,
    SENT,
)
from mailferry.queue import QueueError, is_queue_id, new_queue_id

from .samples import sample_message


def insert(store, count=1, **fields):
    return store.insert_many([sample_message(number, **fields) for number in range(count)])


def test_insert_many_returns_ids_in_order_and_stores_every_field(store):
    messages = [sample_message(number, recipients=number + 1) for number in range(3)]
    before = time.time()
    ids = store.insert_many(messages)
    assert len(set(ids)) == 3 and all(is_queue_id(queue_id) for queue_id in ids)
    for queue_id, message in zip(ids, messages):
        queued = store.get(queue_id)
        assert queued.queue_id == queue_id
        assert queued.queue == ACTIVE
        assert queued.attempts == 0
        assert before <= queued.arrival_time <= time.time()
        assert queued.arrival_time <= queued.next_attempt
        assert queued.size == len(message.content)
        for name in ("sender", "recipients", "client", "origin", "message_id", "dsn_ret",
                     "dsn_envid", "body_type", "smtputf8", "content_filter"):
            assert getattr(queued, name) == getattr(message, name), name
        assert store.content(queue_id) == message.content


def test_content_is_kept_byte_for_byte(store):
    content = bytes(range(256)) * 40 + b"\r\n.\r\n\x00"
    [queue_id] = store.insert_many([sample_message(content=content)])
    assert store.content(queue_id) == content


def test_given_arrival_time_is_kept(store):
    [queue_id] = insert(store, arrival_time=1_600_000_000.5)
    assert store.get(queue_id).arrival_time == 1_600_000_000.5


def test_queue_id_given_by_smtpd_is_kept(store):
    given = new_queue_id()
    ids = store.insert_many([sample_message(1), sample_message(2, queue_id=given)])
    assert ids[1] == given
    assert store.get(given).sender == "sender2@example.org"


def test_a_queue_id_in_use_fails_the_whole_batch(store):
    [taken] = insert(store)
    with pytest.raises(QueueError, match=taken):
        store.insert_many([sample_message(7), sample_message(8, queue_id=taken)])
    assert [m.queue_id for m in store.messages()] == [taken]


def test_empty_batch(store):
    assert store.insert_many([]) == []


def test_missing_message(store):
    assert store.get("ABCDEF012345") is None
    with pytest.raises(KeyError):
        store.content("ABCDEF012345")
    assert store.remove("ABCDEF012345") is False


def test_records_are_copies(store):
    [queue_id] = insert(store)
    got = store.get(queue_id)
    got.recipients[0].status = SENT
    got.queue = HOLD
    assert store.get(queue_id).recipients[0].status == PENDING
    assert store.get(queue_id).queue == ACTIVE


def test_messages_oldest_first_and_by_queue(store):
    ids = [store.insert_many([sample_message(n, arrival_time=1000.0 - n)])[0] for n in range(3)]
    assert [m.queue_id for m in store.messages()] == ids[::-1]
    store.hold([ids[1]])
    assert [m.queue_id for m in store.messages(HOLD)] == [ids[1]]
    assert [m.queue_id for m in store.messages(ACTIVE)] == [ids[2], ids[0]]
    assert store.messages(DEFERRED_QUEUE) == []
    assert store.messages()[0].recipients == sample_message(2).recipients


def test_counts_by_queue_match_the_messages(store):
    assert store.counts() == {}
    ids = insert(store, 3)
    store.hold([ids[0]])
    assert store.counts() == {ACTIVE: 2, HOLD: 1}
    assert store.counts() == {queue: len(store.messages(queue)) for queue in (ACTIVE, HOLD)}


def test_due_in_the_order_messages_became_due(store):
    ids = insert(store, 4)
    now = time.time()
    for queue_id, wait in zip(ids, [30, -20, -10, 0]):
        message = store.get(queue_id)
        message.next_attempt = now + wait
        store.update(message)
    assert [m.queue_id for m in store.due(now, 10)] == [ids[1], ids[2], ids[3]]
    assert [m.queue_id for m in store.due(now, 2)] == [ids[1], ids[2]]
    assert [m.queue_id for m in store.due(now + 60, 10)] == [ids[1], ids[2], ids[3], ids[0]]
    assert store.due(now, 10)[0].recipients == sample_message(1).recipients


def test_due_leaves_out_held_mail(store):
    ids = insert(store, 3)
    store.hold([ids[0]])
    assert [m.queue_id for m in store.due(time.time() + 1, 10)] == ids[1:]


def test_due_leaves_out_messages_being_delivered(store):
    ids = insert(store, 4)
    later = time.time() + 1
    assert [m.queue_id for m in store.due(later, 10, exclude={ids[0], ids[2]})] == [ids[1], ids[3]]
    # the limit counts what is returned, not what is left out
    assert [m.queue_id for m in store.due(later, 1, exclude=[ids[0]])] == [ids[1]]
    assert store.due(later, 10, exclude=set(ids)) == []


def test_contents_reads_several_messages_at_once(store):
    ids = insert(store, 3)
    store.remove(ids[1])
    found = store.contents([ids[0], ids[1], ids[2]])
    assert found == {ids[0]: store.content(ids[0]), ids[2]: store.content(ids[2])}
    assert found[ids[0]] != found[ids[2]]


def test_delay_warned_is_kept(store):
    [queue_id] = insert(store)
    message = store.get(queue_id)
    assert message.delay_warned is False
    message.delay_warned = True
    store.update(message)
    assert store.get(queue_id).delay_warned is True


def test_update_stores_delivery_state(store):
    [queue_id] = insert(store, recipients=3)
    message = store.get(queue_id)
    message.queue, message.next_attempt, message.attempts = DEFERRED_QUEUE, 12345.0, 2
    message.recipients[0].status = SENT
    message.recipients[1].status, message.recipients[1].dsn = DEFERRED, "4.4.1"
    message.recipients[1].reason = "connect to mx.example.com[192.0.2.1]:25: Connection refused"
    message.recipients[2].status, message.recipients[2].dsn = BOUNCED, "5.1.1"
    store.update(message)
    assert store.get(queue_id) == message


def test_update_does_not_undo_an_operators_hold(store):
    [queue_id] = insert(store)
    in_delivery = store.get(queue_id)
    store.hold([queue_id])
    in_delivery.queue, in_delivery.attempts = DEFERRED_QUEUE, 1
    store.update(in_delivery)
    assert store.get(queue_id).queue == HOLD
    assert store.get(queue_id).attempts == 1


def test_update_does_not_revive_a_deleted_message(store):
    [queue_id] = insert(store)
    in_delivery = store.get(queue_id)
    store.delete([queue_id])
    store.update(in_delivery)
    assert store.get(queue_id) is None
    assert store.stats["update_missing"] == 1


def test_remove(store):
    ids = insert(store, 2)
    assert store.remove(ids[0]) is True
    assert store.get(ids[0]) is None
    assert [m.queue_id for m in store.messages()] == [ids[1]]


def test_hold_and_release(store):
    ids = insert(store, 3)
    assert store.hold([ids[0], ids[0], "ABCDEF012345"]) == 1
    assert store.hold(None) == 2
    assert store.hold(None) == 0
    before = time.time()
    assert store.release([ids[1]]) == 1
    released = store.get(ids[1])
    assert released.queue == DEFERRED_QUEUE and released.next_attempt >= before
    assert store.release(None) == 2
    assert store.release(None) == 0
    assert {m.queue for m in store.messages()} == {DEFERRED_QUEUE}


def test_requeue_makes_unfinished_recipients_pending_and_due(store):
    ids = insert(store, 2, recipients=3)
    message = store.get(ids[0])
    message.queue, message.next_attempt, message.attempts = DEFERRED_QUEUE, time.time() + 3600, 3
    for recipient, status in zip(message.recipients, [SENT, DEFERRED, BOUNCED]):
        recipient.status = status
    store.update(message)
    store.hold([ids[1]])
    before = time.time()
    assert store.requeue(None) == 2
    requeued = store.get(ids[0])
    assert [r.status for r in requeued.recipients] == [SENT, PENDING, BOUNCED]
    assert requeued.queue == ACTIVE and requeued.next_attempt >= before
    assert requeued.attempts == 3
    assert store.get(ids[1]).queue == ACTIVE, "postsuper -r requeues held mail too"
    assert store.requeue([ids[0], "ABCDEF012345"]) == 1


def test_delete(store):
    ids = insert(store, 5)
    store.hold(ids[3:])
    assert store.delete([ids[0], ids[0], "ABCDEF012345"]) == 1
    assert store.delete([ids[1], ids[3]], HOLD) == 1
    assert store.delete(None, HOLD) == 1
    assert [m.queue_id for m in store.messages()] == [ids[1], ids[2]]
    assert store.delete(None) == 2
    assert store.messages() == []
    with pytest.raises(KeyError):
        store.content(ids[1])


def test_flush_makes_deferred_mail_due(store):
    ids = insert(store, 4)
    later = time.time() + 3600
    for queue_id in ids:
        message = store.get(queue_id)
        message.queue, message.next_attempt = DEFERRED_QUEUE, later
        store.update(message)
    store.hold([ids[3]])
    assert store.flush([ids[0], ids[3]]) == 1, "held mail stays held"
    assert [m.queue_id for m in store.due(time.time(), 10)] == [ids[0]]
    assert store.flush() == 2
    assert store.flush() == 0
    assert [m.queue_id for m in store.due(time.time(), 10)] == ids[:3]


@pytest.mark.parametrize("call", ["insert_many", "get", "content", "messages", "due", "update",
                                  "remove", "hold", "release", "requeue", "delete", "flush"])
def test_every_call_is_counted(store, call):
    [queue_id] = insert(store)
    arguments = {
        "insert_many": ([sample_message()],), "get": (queue_id,), "content": (queue_id,),
        "messages": (), "due": (time.time(), 5), "update": (store.get(queue_id),),
        "remove": (queue_id,), "hold": (None,), "release": (None,), "requeue": (None,),
        "delete": (None,), "flush": (),
    }[call]
    before = store.stats[call]
    getattr(store, call)(*arguments)
    assert store.stats[call] == before + 1


def test_insert_counts_messages_and_commits(store):
    insert(store, 3, recipients=2)
    insert(store, 2, recipients=1)
    assert store.stats["insert_many"] == 2
    assert store.stats["commits"] == 2
    assert store.stats["messages_inserted"] == 5
    assert store.stats["recipients_inserted"] == 8
