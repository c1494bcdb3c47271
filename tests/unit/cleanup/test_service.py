"""CleanupService: finish the message, make it durable, log it as Postfix does.

Postfix logs, for each message that enters the queue:
    cleanup[..]: QUEUEID: message-id=<...>         (message-id=<> when there is none)
    qmgr[..]:    QUEUEID: from=<sender>, size=N, nrcpt=N (queue active)
cleanup writes only the first; the second is qmgr's, written when the queue
manager takes the message (tests/unit/qmgr/test_scheduler.py checks it).
The queue is the real RAM backend behind the real group committer.
"""

import asyncio
from contextlib import contextmanager

import pytest

from mailferry.cleanup.cleanup import CleanupSettings
from mailferry.cleanup.service import CleanupService, local_header_clients
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.queue import GroupCommitter, QueueFull, RamQueueStore
from tests.unit.listlog import ListLog

SETTINGS = CleanupSettings(myhostname="mx.example.com", myorigin="example.com")
QUEUE_ID = "6C8A2F41B3D7"
REMOTE = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net")


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


def test_it_logs_message_id_in_postfix_form_and_no_line_of_qmgr():
    harness = Harness()
    harness.enqueue(smtp_message())
    assert harness.log.lines == [("cleanup", f"{QUEUE_ID}: message-id=<m1@example.net>")]


def test_the_stored_sender_is_the_qualified_one_and_the_null_sender_stays_empty():
    harness = Harness()
    harness.enqueue(smtp_message(sender="alice"), queue_id="AAAAAAAAAAA1")
    harness.enqueue(smtp_message(sender=""), queue_id="AAAAAAAAAAA2")
    assert harness.store.get("AAAAAAAAAAA1").sender == "alice@example.com"
    assert harness.store.get("AAAAAAAAAAA2").sender == ""


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


# --- qmgr's notices


NOTICE = (b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
          b"From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
          b"Subject: Undelivered Mail Returned to Sender\r\n"
          b"Message-Id: <20261124100000.4F2A1B3C5D6E@mx.example.com>\r\n\r\nreport\r\n")


def notice(to="alice@example.net"):
    return NewMessage(sender="", recipients=[Recipient(to)], content=NOTICE, origin="bounce",
                      message_id="20261124100000.4F2A1B3C5D6E@mx.example.com")


def enqueue_notices(harness, notices, then):
    async def run():
        committer = GroupCommitter(harness.store)
        service = CleanupService(SETTINGS, committer, harness.log, harness.is_local_client, harness.on_queued)
        try:
            return await service.enqueue_notices(notices, then)
        finally:
            await committer.close()
    return asyncio.run(run())


def test_notices_get_a_queue_id_and_cleanups_line_and_are_stored_as_made():
    harness = Harness()
    seen = []
    ids = enqueue_notices(harness, [notice(), notice("carol@example.net")],
                          lambda inserted: seen.append(inserted) or inserted)
    assert seen == [ids] and len(set(ids)) == 2
    assert harness.log.lines == [("cleanup", f"{queue_id}: message-id=<20261124100000.4F2A1B3C5D6E@mx.example.com>")
                                 for queue_id in ids]
    assert [harness.store.content(queue_id) for queue_id in ids] == [NOTICE, NOTICE]   # nothing added
    assert [harness.store.get(queue_id).sender for queue_id in ids] == ["", ""]
    assert harness.queued_calls == 0          # qmgr made them: it knows


def test_notices_and_the_write_that_goes_with_them_are_one_transaction():
    class Counting(RamQueueStore):
        def __init__(self):
            super().__init__()
            self.transactions = 0
            self.in_transaction = False

        @contextmanager
        def batch(self):
            self.transactions += 1
            self.in_transaction = True
            try:
                yield
            finally:
                self.in_transaction = False

    store = Counting()
    harness = Harness(store=store)
    seen = []

    def then(inserted):
        seen.append((store.in_transaction, store.get(inserted[0]) is not None))
        return inserted
    [queue_id] = enqueue_notices(harness, [notice()], then)
    assert store.transactions == 1
    assert seen == [(True, True)]        # inside the transaction, after the notice's insert
    assert store.get(queue_id) is not None


def test_notices_the_queue_cannot_take_are_reported_to_the_write_which_still_happens():
    harness = Harness(store=RamQueueStore(max_messages=0))
    result = enqueue_notices(harness, [notice()], lambda inserted: inserted)
    assert isinstance(result, QueueFull)
    assert harness.queue_ids() == []
    assert [program for program, _ in harness.log.lines] == ["cleanup"]


# --- configuration


def config_of(text):
    return Config("/nonexistent", parse_main_cf(text, "/nonexistent/main.cf"))


def test_from_config_reads_cleanups_settings_and_reload_replaces_them():
    harness = Harness()
    service = CleanupService.from_config(config_of("myorigin = one.example\nmynetworks = 192.0.2.0/24\n"
                                                   "local_header_rewrite_clients = permit_mynetworks\n"),
                                         committer=None, log=harness.log, on_queued=harness.on_queued)
    assert service.settings.myorigin == "one.example"
    assert service.is_local_client("192.0.2.10") and not service.is_local_client("198.51.100.1")
    service.reload(config_of("myorigin = two.example\nlocal_header_rewrite_clients = static:all\n"))
    assert service.settings.myorigin == "two.example"
    assert service.is_local_client("198.51.100.1")


def test_the_default_local_header_rewrite_clients_are_our_own_interfaces():
    clients = local_header_clients(config_of(""))
    assert clients.matches("127.0.0.1") and clients.matches("::1")
    assert not clients.matches("192.0.2.10")


# --- address rewriting: a table that fails for now


def failing_rewriter():
    from mailferry.tables.addresses import AddressMaps
    from mailferry.cleanup.rewrite import AddressRewriter
    from mailferry.tables import Maps
    from tests.unit.cleanup.test_virtual import FailingTable
    virtual = AddressMaps("virtual_alias_maps", Maps([FailingTable()]), lambda domain: False, "example.com")
    return AddressRewriter(None, None, None, None, virtual)


def test_a_failed_alias_lookup_queues_nothing_and_logs_postfixs_warning():
    from mailferry.cleanup.rewrite import RewriteDeferred
    harness = Harness()

    async def run():
        committer = GroupCommitter(harness.store)
        service = CleanupService(SETTINGS, committer, harness.log, harness.is_local_client,
                                 harness.on_queued, failing_rewriter())
        try:
            return await service.enqueue(smtp_message(), QUEUE_ID)
        finally:
            await committer.close()
    with pytest.raises(RewriteDeferred):
        asyncio.run(run())
    assert harness.queue_ids() == [] and harness.queued_calls == 0
    assert harness.log.lines == [("cleanup", f"warning: {QUEUE_ID}: virtual_alias_maps map lookup problem for "
                                             "bob@example.org: server down -- message not accepted, "
                                             "try again later")]


def test_a_notice_whose_alias_lookup_fails_waits_as_when_the_queue_is_full():
    from mailferry.cleanup.rewrite import RewriteDeferred
    harness = Harness()
    seen = []

    async def run():
        committer = GroupCommitter(harness.store)
        service = CleanupService(SETTINGS, committer, harness.log, harness.is_local_client,
                                 harness.on_queued, failing_rewriter())
        try:
            return await service.enqueue_notices([notice()], lambda inserted: seen.append(inserted) or inserted)
        finally:
            await committer.close()
    result = asyncio.run(run())
    assert isinstance(result, RewriteDeferred) and seen == [result]
    assert harness.queue_ids() == []


def test_a_reload_whose_alias_table_cannot_be_opened_keeps_the_tables_loaded_before(tmp_path):
    harness = Harness()
    table = tmp_path / "virtual"
    table.write_text("info@example.org  john@example.net\n")
    service = CleanupService.from_config(config_of(f"virtual_alias_maps = texthash:{table}\n"),
                                         committer=None, log=harness.log, on_queued=harness.on_queued)
    before = service.rewriter
    service.reload(config_of(f"virtual_alias_maps = texthash:{tmp_path / 'missing'}\n"))
    assert service.rewriter is before
    assert "keeping the address rewriting tables loaded before" in harness.log.warnings()[0]
