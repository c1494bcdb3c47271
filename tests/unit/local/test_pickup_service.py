"""The pickup service: maildrop files go through cleanup, and are removed only
once the queue has committed them."""

import asyncio
import os

import pytest

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
from mailferry.local.maildrop import MaildropEnvelope, ensure_maildrop_directory, write_maildrop
from mailferry.local.pickup_service import DEFAULT_WAKEUP, PickupService
from mailferry.queue import QueueFull
from tests.unit.listlog import ListLog


class Cleanup:
    """Stands in for CleanupService.enqueue; `fail` makes it raise as a full queue does."""

    def __init__(self, fail: Exception | None = None):
        self.fail = fail
        self.enqueued: list[tuple[str, str, str]] = []   # (queue_id, sender, full_name)
        self.messages = []
        self.arrived = asyncio.Event()

    async def enqueue(self, message, queue_id, full_name=""):
        self.arrived.set()
        if self.fail is not None:
            raise self.fail
        self.enqueued.append((queue_id, message.sender, full_name))
        self.messages.append(message)
        return queue_id


@pytest.fixture
def queue_directory(tmp_path):
    ensure_maildrop_directory(str(tmp_path))
    return str(tmp_path)


def drop(queue_directory, **changes):
    fields = dict(sender="alice", recipients=["bob@example.net"], uid=os.getuid(), full_name="Alice A.",
                  arrival_time=1_795_574_036.5)
    fields.update(changes)
    return write_maildrop(queue_directory, MaildropEnvelope(**fields), b"Subject: s\n\nbody\n")


def test_each_file_goes_through_cleanup_is_logged_and_is_then_removed(queue_directory):
    path = drop(queue_directory)
    cleanup, log = Cleanup(), ListLog()
    asyncio.run(PickupService(queue_directory, cleanup, log).pick_up_all())
    [(queue_id, sender, full_name)] = cleanup.enqueued
    assert (sender, full_name) == ("alice", "Alice A.")
    assert log.lines == [("pickup", f"{queue_id}: uid={os.getuid()} from=<alice>")]
    assert not os.path.exists(path)


def test_a_file_the_queue_cannot_take_stays_for_the_next_pass(queue_directory):
    path = drop(queue_directory)
    log = ListLog()
    asyncio.run(PickupService(queue_directory, Cleanup(fail=QueueFull("disk full")), log).pick_up_all())
    assert os.path.exists(path)
    assert [text for _, text in log.lines if text.startswith("warning: ")][0].endswith(
        f"cannot queue {path}: disk full; will retry")


def test_a_file_whose_alias_lookup_failed_stays_for_the_next_pass(queue_directory):
    from mailferry.cleanup.rewrite import RewriteDeferred
    path = drop(queue_directory)
    log = ListLog()
    failure = RewriteDeferred("virtual_alias_maps map lookup problem for bob@example.net")
    asyncio.run(PickupService(queue_directory, Cleanup(fail=failure), log).pick_up_all())
    assert os.path.exists(path)
    assert any(text.endswith("; will retry") for _, text in log.lines)


def test_a_damaged_file_is_moved_aside_and_the_rest_goes_on(queue_directory):
    damaged = drop(queue_directory)
    with open(damaged, "r+b") as file:
        file.truncate(3)
    good = drop(queue_directory)
    cleanup, log = Cleanup(), ListLog()
    asyncio.run(PickupService(queue_directory, cleanup, log).pick_up_all())
    assert not os.path.exists(damaged) and not os.path.exists(good)
    assert len(cleanup.enqueued) == 1
    assert os.listdir(os.path.join(queue_directory, "corrupt")) == [os.path.basename(damaged)]


class CountedPasses(PickupService):
    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.passed = asyncio.Event()

    async def pick_up_all(self) -> None:
        await super().pick_up_all()
        self.passed.set()


def test_wake_makes_the_loop_look_again_before_its_wakeup_time(queue_directory):
    async def scenario():
        cleanup = Cleanup()
        service = CountedPasses(queue_directory, cleanup, ListLog(), wakeup=3600)
        loop = asyncio.create_task(service.run())
        await asyncio.wait_for(service.passed.wait(), 5)    # the first pass found nothing
        assert cleanup.enqueued == []
        drop(queue_directory)
        service.wake()
        await asyncio.wait_for(cleanup.arrived.wait(), 5)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        return cleanup.enqueued
    assert len(asyncio.run(scenario())) == 1


def test_the_wakeup_time_comes_from_master_cf_and_changes_on_reload(queue_directory):
    config = Config("/nonexistent", parse_main_cf(f"queue_directory = {queue_directory}\n", "main.cf"))
    every_30 = parse_master_cf("pickup unix n - n 30 1 pickup\n", "master.cf")
    every_90 = parse_master_cf("pickup unix n - n 90 1 pickup\n", "master.cf")
    service = PickupService.from_config(config, every_30, Cleanup(), ListLog())
    assert (service.queue_directory, service.wakeup) == (queue_directory, 30.0)
    service.reload(config, every_90)
    assert service.wakeup == 90.0
    service.reload(config, parse_master_cf("", "master.cf"))
    assert service.wakeup == DEFAULT_WAKEUP


def test_mail_gets_the_content_filter_pickup_sees_and_reload_changes_it(queue_directory):
    """content_filter from main.cf, or from the pickup service's -o in master.cf (Postfix's
    pickup stamps it on each message, as smtpd does)."""
    config = Config("/nonexistent", parse_main_cf(f"queue_directory = {queue_directory}\n"
                                                   "content_filter = smtp:[127.0.0.1]:10024\n", "main.cf"))
    plain = parse_master_cf("pickup unix n - n 60 1 pickup\n", "master.cf")
    cleanup = Cleanup()
    service = PickupService.from_config(config, plain, cleanup, ListLog())
    drop(queue_directory)
    asyncio.run(service.pick_up_all())
    service.reload(config, parse_master_cf("pickup unix n - n 60 1 pickup -o content_filter=\n", "master.cf"))
    drop(queue_directory)
    asyncio.run(service.pick_up_all())
    service.reload(config, parse_master_cf("pickup unix n - n 60 1 pickup -o content_filter=lmtp:unix:f\n",
                                           "master.cf"))
    drop(queue_directory)
    asyncio.run(service.pick_up_all())
    assert [m.content_filter for m in cleanup.messages] == ["smtp:[127.0.0.1]:10024", "", "lmtp:unix:f"]


def test_a_wakeup_during_a_scan_brings_another_scan_before_the_timer(queue_directory):
    """sendmail writes a file and wakes pickup while pickup is busy with an earlier one."""
    drop(queue_directory)

    class WakingCleanup(Cleanup):
        async def enqueue(self, message, queue_id, full_name=""):
            if not self.enqueued:
                drop(queue_directory, sender="carol")
                service.wake()
            return await super().enqueue(message, queue_id, full_name)

    cleanup = WakingCleanup()
    service = PickupService(queue_directory, cleanup, ListLog(), wakeup=3600)

    async def run_until_both_are_queued():
        task = asyncio.create_task(service.run())
        try:
            while len(cleanup.enqueued) < 2:
                cleanup.arrived.clear()
                await asyncio.wait_for(cleanup.arrived.wait(), 10)
        finally:
            task.cancel()

    asyncio.run(run_until_both_are_queued())
    assert [sender for _, sender, _ in cleanup.enqueued] == ["alice", "carol"]


def test_a_check_that_refuses_for_now_leaves_the_file_for_the_next_pass(queue_directory):
    from mailferry.cleanup.service import ContentRefused
    from mailferry.refusals import content_rejected
    path = drop(queue_directory)
    log = ListLog()
    failure = ContentRefused(content_rejected("4.7.1 try later"))
    asyncio.run(PickupService(queue_directory, Cleanup(fail=failure), log).pick_up_all())
    assert os.path.exists(path)
    assert any(text.endswith("try later; will retry") for _, text in log.lines)


def test_a_rejected_file_is_removed_only_after_its_notice_is_queued(queue_directory):
    from mailferry.cleanup.service import ContentRefused
    from mailferry.queue import QueueError
    from mailferry.refusals import content_rejected

    class NoRoomForNotices(Cleanup):
        on_queued = staticmethod(lambda: None)

        async def enqueue_notices(self, notices, then):
            return then(QueueFull("disk full"))

    path = drop(queue_directory)
    cleanup = NoRoomForNotices(fail=ContentRefused(content_rejected("5.7.1 no")))
    asyncio.run(PickupService(queue_directory, cleanup, ListLog()).pick_up_all())
    assert os.path.exists(path)   # the notice could not be queued: nothing is lost, pickup retries
    assert issubclass(QueueFull, QueueError)
