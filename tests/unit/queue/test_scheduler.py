"""The queue manager's first version: discard, error, and "mail transport unavailable".

What Postfix logs for each recipient attempt (the delivery agent's line):
    TRANSPORT[..]: QUEUEID: to=<rcpt>, relay=none, delay=D, delays=a/b/c/d, dsn=X.Y.Z, status=STATUS (reason)
and qmgr's `QUEUEID: removed` once no recipient is left. A temporary failure
leaves the message in the deferred queue until the next attempt
(minimal_backoff_time, 300 s, for a transport that is not available).

The delay format is Postfix's format_tv(..., sig_dig = 2, max_dig =
delay_logging_resolution_limit = 2): postconf(5) says "Large delay values
are rounded off to an integral number of seconds; delay values below the
delay_logging_resolution_limit are logged as "0", and delay values under
100s are logged with at most two-digit precision", trailing zeros dropped.
"""

import asyncio
import re
import time
from contextlib import contextmanager

import pytest

from mailferry.message import (BOUNCED, DEFERRED, DEFERRED_QUEUE, HOLD, SENT, ClientInfo,
                               NewMessage, Recipient)
from mailferry.queue import GroupCommitter, RamQueueStore
from mailferry.queue.scheduler import RETRY_WITHOUT_AGENT, Scheduler, _seconds
from mailferry.routing.resolve import Resolver

LOCAL = "example.com"
DELIVERY_LINE = re.compile(
    r"^(?P<id>[0-9A-F]+): to=<(?P<rcpt>[^>]*)>, relay=none, delay=(?P<delay>[0-9.]+), "
    r"delays=(?P<a>[0-9.]+)/0/0/(?P<d>[0-9.]+), dsn=(?P<dsn>\d\.\d\.\d), "
    r"status=(?P<status>\w+) \((?P<reason>.*)\)$")


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def line(self, program: str, text: str) -> None:
        self.lines.append((program, text))

    def warning(self, program: str, text: str) -> None:
        self.lines.append((program, f"warning: {text}"))

    def deliveries(self):
        return [(program, DELIVERY_LINE.match(text)) for program, text in self.lines
                if DELIVERY_LINE.match(text)]


class BatchCountingStore(RamQueueStore):
    """The RAM backend, counting the write transactions the committer opens."""

    def __init__(self):
        super().__init__()
        self.transactions = 0

    @contextmanager
    def batch(self):
        self.transactions += 1
        with super().batch():
            yield


def message(*recipients, sender="alice@example.org"):
    return NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients],
                      content=b"Received: by mx.example.com\r\nSubject: s\r\n\r\nbody\r\n",
                      client=ClientInfo(), origin="smtp")


def run(local_transport, default_transport, messages, passes=1, batch=100, between=None):
    """Queue `messages`, run the scheduler `passes` times; return (store, log, ids, results, committer)."""
    store = BatchCountingStore()
    log = ListLog()

    async def scenario():
        committer = GroupCommitter(store)
        try:
            ids = [await committer.submit(m) for m in messages]
            resolver = Resolver(local_transport, default_transport, lambda domain: domain == LOCAL)
            scheduler = Scheduler(store, committer, resolver, log, batch=batch)
            results = []
            for number in range(passes):
                if number and between:
                    between(store, ids)
                store.transactions = 0
                results.append((await scheduler.run_once(), store.transactions))
            return ids, results, committer
        finally:
            await committer.close()

    ids, results, committer = asyncio.run(scenario())
    return store, log, ids, results, committer


# --- discard


def test_a_discarded_recipient_is_sent_and_the_message_removed():
    store, log, [queue_id], [(worked, _)], _ = run("discard:", "smtp", [message("bob@example.com")])
    assert worked == 1
    assert store.get(queue_id) is None
    [(program, line)] = log.deliveries()
    assert program == "discard"
    assert (line["id"], line["rcpt"], line["dsn"], line["status"]) == (queue_id, "bob@example.com", "2.0.0", "sent")
    assert log.lines[-1] == ("qmgr", f"{queue_id}: removed")


def test_every_recipient_gets_its_own_line_and_the_message_is_removed_once():
    store, log, [queue_id], _, _ = run("discard:", "smtp", [message("a@example.com", "b@example.com")])
    assert [line["rcpt"] for _, line in log.deliveries()] == ["a@example.com", "b@example.com"]
    assert [text for _, text in log.lines].count(f"{queue_id}: removed") == 1
    assert store.messages() == []


# --- error


def test_an_error_recipient_bounces_and_the_message_is_held_with_a_warning():
    store, log, [queue_id], [(worked, _), (again, _)], _ = run(
        "error:mailbox disabled", "smtp", [message("bob@example.com")], passes=2)
    [(program, line)] = log.deliveries()
    assert program == "error"
    assert (line["dsn"], line["status"], line["reason"]) == ("5.0.0", "bounced", "mailbox disabled")
    held = store.get(queue_id)
    assert held.queue == HOLD
    assert held.recipients[0].status == BOUNCED
    warnings = [(p, t) for p, t in log.lines if t.startswith("warning: ")]
    assert len(warnings) == 1
    assert warnings[0][0] == "qmgr"
    assert queue_id in warnings[0][1] and "hold" in warnings[0][1]
    assert f"{queue_id}: removed" not in [text for _, text in log.lines]
    assert (worked, again) == (1, 0)  # held mail is not due


def test_an_error_transport_without_text_still_says_why():
    _, log, _, _, _ = run("error:", "smtp", [message("bob@example.com")])
    [(_, line)] = log.deliveries()
    assert line["status"] == "bounced" and line["reason"]


# --- a transport with no delivery agent


def test_an_unavailable_transport_defers_for_five_minutes():
    before = time.time()
    store, log, [queue_id], [(worked, _), (again, _)], _ = run(
        "discard:", "smtp", [message("carol@example.org")], passes=2)
    after = time.time()
    deferred = store.get(queue_id)
    assert deferred.queue == DEFERRED_QUEUE
    assert before + RETRY_WITHOUT_AGENT <= deferred.next_attempt <= after + RETRY_WITHOUT_AGENT
    assert RETRY_WITHOUT_AGENT == 300  # Postfix's minimal_backoff_time
    assert deferred.attempts == 1
    assert (deferred.recipients[0].status, deferred.recipients[0].dsn) == (DEFERRED, "4.3.0")
    [(_, line)] = log.deliveries()
    assert line["status"] == "deferred"
    assert line["reason"].startswith("mail transport unavailable")
    assert line["dsn"].startswith("4.")
    assert (worked, again) == (1, 0)  # not due again within the backoff


# --- mixed recipients


def test_a_delivered_recipient_is_not_tried_again_when_another_was_deferred():
    def flush(store, ids):
        store.flush(ids)

    store, log, [queue_id], [(first, _), (second, _)], _ = run(
        "discard:", "smtp", [message("bob@example.com", "carol@example.org")], passes=2, between=flush)
    assert (first, second) == (1, 1)
    kept = store.get(queue_id)
    assert kept.queue == DEFERRED_QUEUE
    assert [(r.address, r.status) for r in kept.recipients] == [
        ("bob@example.com", SENT), ("carol@example.org", DEFERRED)]
    assert kept.attempts == 2
    assert [(line["rcpt"], line["status"]) for _, line in log.deliveries()] == [
        ("bob@example.com", "sent"), ("carol@example.org", "deferred"), ("carol@example.org", "deferred")]


def test_a_bounce_and_a_deferral_keep_the_message_deferred_not_held():
    store, log, [queue_id], _, _ = run("error:no such user", "smtp",
                                      [message("bob@example.com", "carol@example.org")])
    kept = store.get(queue_id)
    assert kept.queue == DEFERRED_QUEUE
    assert [r.status for r in kept.recipients] == [BOUNCED, DEFERRED]
    assert not [text for _, text in log.lines if text.startswith("warning: ")]


def test_a_bounce_and_a_discard_leave_the_message_held():
    store, _, [queue_id], _, _ = run("error:no such user", "discard:",
                                    [message("bob@example.com", "carol@example.org")])
    kept = store.get(queue_id)
    assert kept.queue == HOLD
    assert [r.status for r in kept.recipients] == [BOUNCED, SENT]


# --- batching


def test_one_write_transaction_for_a_whole_batch():
    messages = [message("a@example.com"), message("b@example.org"), message("c@example.com", "d@example.org")]
    store, _, ids, [(worked, transactions)], _ = run("discard:", "smtp", messages)
    assert worked == 3
    assert transactions == 1
    assert store.stats["remove"] + store.stats["update"] == 3
    assert store.stats["due"] == 1


def test_a_pass_takes_at_most_batch_messages():
    messages = [message(f"u{i}@example.com") for i in range(3)]
    store, _, ids, results, _ = run("discard:", "smtp", messages, passes=3, batch=2)
    assert [worked for worked, _ in results] == [2, 1, 0]
    assert store.messages() == []


# --- the delay format


@pytest.mark.parametrize("value, text", [
    (0.0, "0"),
    (0.004, "0"),          # below the 2-decimal resolution
    (0.006, "0.01"),
    (0.1, "0.1"),          # trailing zeros dropped
    (0.123, "0.12"),
    (0.5, "0.5"),
    (2.5, "2.5"),
    (3.0, "3"),
    (10.0, "10"),
    (12.4, "12"),
    (250.0, "250"),
    (1e-7, "0"),           # never scientific notation
    (123456789.0, "123456789"),
])
def test_delay_format(value, text):
    assert _seconds(value) == text


@pytest.mark.parametrize("value, text", [
    (1.23, "1.2"),         # two significant digits between 1 and 10 s
    (5.06, "5.1"),
    (9.99, "10"),
    (10.6, "11"),          # rounded, not truncated, to whole seconds
    (99.9, "100"),
])
def test_delay_format_has_two_significant_digits_and_rounds_as_postfix_does(value, text):
    assert _seconds(value) == text


def test_a_negative_delay_from_a_clock_step_is_logged_as_zero():
    assert _seconds(-0.5) == "0"
