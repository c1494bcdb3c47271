"""cleanup_service_name (cleanup/services.py): each master.cf cleanup service is a CleanupService
built from main.cf with that service's -o overrides; a name no cleanup service has gets a 4xx
(QueueError), never an accept. The queue is the real RAM backend behind the real committer."""

import asyncio

import pytest

from mailferry.cleanup.services import BUILTIN_NAME, CleanupServices, UnreachableCleanup
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
from mailferry.message import ClientInfo, NewMessage, Recipient
from mailferry.queue import GroupCommitter, QueueError, RamQueueStore
from mailferry.refusals import queue_failure
from tests.unit.listlog import ListLog

MASTER = """\
smtp inet n - n - - smtpd
submission inet n - n - - smtpd
  -o cleanup_service_name=sender-cleanup
sender-cleanup unix n - n - 0 cleanup
  -o header_checks=regexp:{checks}
  -o myorigin=submit.example
cleanup unix n - n - 0 cleanup
not-a-cleanup unix - - n - - smtp
"""


def config_of(text=""):
    return Config("/nonexistent", parse_main_cf(text, "/nonexistent/main.cf"))


def message(content=b"X-Mailer: Example 1.0\r\nSubject: s\r\n\r\nbody\r\n"):
    return NewMessage(sender="alice", recipients=[Recipient("bob@example.org")], content=content,
                      client=ClientInfo(name="mail.example.net", address="192.0.2.10", helo="h"), origin="smtp")


@pytest.fixture
def master(tmp_path):
    checks = tmp_path / "header_checks"
    checks.write_text("/^X-Mailer:/ IGNORE\n")
    return parse_master_cf(MASTER.format(checks=checks), str(tmp_path / "master.cf"))


def run_enqueue(services_of, name):
    store = RamQueueStore()

    async def run():
        committer = GroupCommitter(store)
        services = services_of(committer)
        try:
            queue_id = await services.named(name).enqueue(message(), "6C8A2F41B3D7")
        finally:
            await committer.close()
        return queue_id
    asyncio.run(run())
    [stored] = store.messages()
    return stored, store.content(stored.queue_id)


def test_each_master_cf_cleanup_service_reads_main_cf_with_its_own_overrides(master):
    services = CleanupServices(config_of("myorigin = main.example\n"), master, None, ListLog(), lambda: None)
    assert set(services.services) == {"cleanup", "sender-cleanup"}
    assert services.named("sender-cleanup").settings.myorigin == "submit.example"
    assert services.named("cleanup").settings.myorigin == "main.example"
    assert services.named("sender-cleanup").checks.active and not services.named("cleanup").checks.active


def test_mail_handed_to_the_named_service_gets_its_header_checks_and_the_default_does_not(master):
    def make(committer):
        return CleanupServices(config_of("myorigin = main.example\n"), master, committer, ListLog(), lambda: None)
    named, named_content = run_enqueue(make, "sender-cleanup")
    plain, plain_content = run_enqueue(make, "cleanup")
    assert b"X-Mailer" not in named_content and b"X-Mailer: Example 1.0" in plain_content
    assert (named.sender, plain.sender) == ("alice@submit.example", "alice@main.example")


def test_a_smtpd_service_view_picks_its_cleanup_service(master):
    services = CleanupServices(config_of(), master, None, ListLog(), lambda: None)
    submission = master.find("submission", "inet")
    view = config_of().with_overrides(submission.overrides, "master.cf, line 2")
    assert services.for_view(view) is services.services["sender-cleanup"]
    assert services.for_view(config_of()) is services.services["cleanup"]


def test_the_builtin_cleanup_is_there_without_a_master_cf_line():
    services = CleanupServices(config_of(), parse_master_cf("smtp inet n - n - - smtpd\n", "/x/master.cf"),
                               None, ListLog(), lambda: None)
    assert set(services.services) == {BUILTIN_NAME}


def test_a_name_no_cleanup_service_has_is_refused_with_451_and_nothing_is_queued(master):
    services = CleanupServices(config_of(), master, None, ListLog(), lambda: None)
    for name in ("sender-cleanpu", "not-a-cleanup"):
        unreachable = services.named(name)
        assert isinstance(unreachable, UnreachableCleanup)
        with pytest.raises(QueueError) as refused:
            asyncio.run(unreachable.enqueue(message(), "6C8A2F41B3D7"))
        reply = queue_failure(refused.value).reply
        assert (reply.code, reply.enhanced, reply.text) == (451, "4.3.0", "Error: queue file write error")
        assert name in str(refused.value)


def test_main_cf_cleanup_service_name_sets_the_default_and_reload_follows_master_cf(master, tmp_path):
    services = CleanupServices(config_of("cleanup_service_name = sender-cleanup\n"), master, None,
                               ListLog(), lambda: None)
    assert services.default is services.services["sender-cleanup"]
    assert services.for_view(config_of("cleanup_service_name = sender-cleanup\n")) is services.default
    kept = services.services["cleanup"]
    services.reload(config_of(), parse_master_cf("smtp inet n - n - - smtpd\n", str(tmp_path / "master.cf")))
    assert set(services.services) == {"cleanup"} and services.services["cleanup"] is kept
    assert services.default is kept
    assert isinstance(services.named("sender-cleanup"), UnreachableCleanup)
