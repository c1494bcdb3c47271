"""CleanupService.enqueue: finish the message, make it durable, log it as Postfix does.

Postfix logs, for each message that enters the queue:
    cleanup[..]: QUEUEID: message-id=<...>         (message-id=<> when there is none)
    qmgr[..]:    QUEUEID: from=<sender>, size=N, nrcpt=N (queue active)
The queue is the real RAM backend behind the real group committer.
"""

import asyncio

import pytest

from mailferry.cleanup.cleanup import CleanupSettings
from mailferry.cleanup.service import CleanupService
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.queue import GroupCommitter, QueueFull, RamQueueStore

SETTINGS = CleanupSettings(myhostname="mx.example.com", myorigin="example.com")
QUEUE_ID = "6C8A2F41B3D7"
REMOTE = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net")


class ListLog:
    """Collects (program, text): what MailLog.line would have written."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def line(self, program: str, text: str) -> None:
        self.lines.append((program, text))


def smtp_message(content=b"Subject: s\r\nMessage-ID: <m1@example.net>\r\n\r\nbody\r\n",
                 sender="alice@example.net", recipients=("bob@example.org", "carol@example.org"),
                 client=REMOTE, origin="smtp"):
    return NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients],
                      content=content, client=client, origin=origin)


class Harness:
    def __init__(self, store=None, local_clients=()):
        self.store = store or RamQueueStore()
        self.log = ListLog()
        self.asked: list[str] = []
        self.queued_calls = 0
        self.durable_when_notified: list[bool] = []
        self.local_clients = set(local_clients)
        self.enqueuing = ""

    def is_local_client(self, address: str) -> bool:
        self.asked.append(address)
        return address in self.local_clients

    def on_queued(self) -> None:
        self.queued_calls += 1
        self.durable_when_notified.append(self.store.get(self.enqueuing) is not None)

    def queue_ids(self) -> list[str]:
        return [m.queue_id for m in self.store.messages()]

    def enqueue(self, message, queue_id=QUEUE_ID, full_name=""):
        self.enqueuing = queue_id

        async def run():
            committer = GroupCommitter(self.store)
            service = CleanupService(SETTINGS, committer, self.log, self.is_local_client, self.on_queued)
            try:
                return await service.enqueue(message, queue_id, full_name)
            finally:
                await committer.close()
        return asyncio.run(run())


def test_enqueue_returns_the_queue_id_it_was_given_and_stores_the_message_under_it():
    harness = Harness()
    assert harness.enqueue(smtp_message()) == QUEUE_ID
    assert harness.queue_ids() == [QUEUE_ID]
    stored = harness.store.get(QUEUE_ID)
    assert stored.sender == "alice@example.net"
    assert [r.address for r in stored.recipients] == ["bob@example.org", "carol@example.org"]


def test_the_stored_content_carries_our_received_header():
    harness = Harness()
    harness.enqueue(smtp_message())
    content = harness.store.content(QUEUE_ID)
    assert content.startswith(b"Received: from helo.example.net (mail.example.net [192.0.2.10])\r\n"
                              b"\tby mx.example.com (mailferry) with ESMTP id " + QUEUE_ID.encode())
    assert content.endswith(b"Subject: s\r\nMessage-ID: <m1@example.net>\r\n\r\nbody\r\n")


def test_it_logs_message_id_then_queue_active_in_postfix_form():
    harness = Harness()
    harness.enqueue(smtp_message())
    size = len(harness.store.content(QUEUE_ID))
    assert harness.log.lines == [
        ("cleanup", f"{QUEUE_ID}: message-id=<m1@example.net>"),
        ("qmgr", f"{QUEUE_ID}: from=<alice@example.net>, size={size}, nrcpt=2 (queue active)"),
    ]


def test_the_logged_sender_is_the_qualified_one_and_the_null_sender_is_empty_brackets():
    harness = Harness()
    harness.enqueue(smtp_message(sender="alice"), queue_id="AAAAAAAAAAA1")
    harness.enqueue(smtp_message(sender=""), queue_id="AAAAAAAAAAA2")
    active = [text for program, text in harness.log.lines if text.endswith("(queue active)")]
    assert active[0].startswith("AAAAAAAAAAA1: from=<alice@example.com>, ")
    assert active[1].startswith("AAAAAAAAAAA2: from=<>, ")


def test_a_message_without_message_id_is_logged_as_message_id_empty_brackets():
    # cleanup_message.c: msg_info("%s: message-id=<>", queue_id) when there is none.
    harness = Harness()
    harness.enqueue(smtp_message(content=b"Subject: s\r\n\r\nbody\r\n"))
    assert harness.log.lines[0] == ("cleanup", f"{QUEUE_ID}: message-id=<>")


def test_on_queued_is_called_once_and_only_after_the_message_is_durable():
    harness = Harness()
    harness.enqueue(smtp_message())
    assert harness.queued_calls == 1
    assert harness.durable_when_notified == [True]


def test_a_remote_client_gets_no_added_headers():
    harness = Harness(local_clients=())
    harness.enqueue(smtp_message(content=b"Subject: s\r\n\r\nbody\r\n"))
    assert harness.asked == ["192.0.2.10"]
    content = harness.store.content(QUEUE_ID)
    assert b"\r\nMessage-Id:" not in content and b"\r\nDate:" not in content


def test_a_local_header_rewrite_client_gets_the_missing_message_id():
    harness = Harness(local_clients={"192.0.2.10"})
    harness.enqueue(smtp_message(content=b"Subject: s\r\n\r\nbody\r\n"))
    stored = harness.store.get(QUEUE_ID)
    assert stored.message_id.endswith(f".{QUEUE_ID}@mx.example.com>")
    assert f"Message-Id: {stored.message_id}\r\n".encode() in harness.store.content(QUEUE_ID)
    assert harness.log.lines[0] == ("cleanup", f"{QUEUE_ID}: message-id={stored.message_id}")


def test_a_local_submission_gets_the_missing_headers_whatever_the_client_check_says():
    harness = Harness(local_clients=())
    message = smtp_message(content=b"Subject: s\r\n\r\nbody\r\n", sender="alice", origin="local",
                           client=ClientInfo(protocol="local", uid=1000))
    harness.enqueue(message, full_name="Alice Smith")
    content = harness.store.content(QUEUE_ID)
    assert content.startswith(b"Received: by mx.example.com (mailferry, from userid 1000)")
    assert b"\r\nFrom: Alice Smith <alice@example.com>\r\n" in content
    assert b"\r\nMessage-Id: <" in content


def test_a_full_queue_propagates_and_nothing_is_logged_as_queued():
    # max_messages=0: the RAM backend refuses every insert as a full disk would.
    harness = Harness(store=RamQueueStore(max_messages=0))
    with pytest.raises(QueueFull):
        harness.enqueue(smtp_message())
    assert harness.queue_ids() == []
    assert [text for _, text in harness.log.lines if "queue active" in text] == []
    assert harness.queued_calls == 0


def test_a_full_queue_raised_by_a_store_subclass_propagates_too():
    class FullDisk(RamQueueStore):
        def insert_many(self, messages):
            raise QueueFull("disk full")

    harness = Harness(store=FullDisk())
    with pytest.raises(QueueFull, match="disk full"):
        harness.enqueue(smtp_message())
    assert [program for program, _ in harness.log.lines] == ["cleanup"]
    assert harness.queued_calls == 0
