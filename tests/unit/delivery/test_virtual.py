"""virtual(8): the lookups, the path, the ids and the outcome, with a recording spawner.

The spawner here only records the request and answers as told: the real one
(master/spawner.py) is exercised by tests/integration/test_virtual_delivery.py.
"""

import asyncio
import errno

import pytest

from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import MailboxRequest, MailboxResult, RunAs
from mailferry.delivery.virtual import (
    Mailbox,
    VirtualAgent,
    VirtualMaps,
    VirtualSettings,
    delivery_headers,
    mailbox_path,
    parse_id,
)
from mailferry.message import BOUNCED, DEFERRED, SENT, QueuedMessage, Recipient
from mailferry.tables import open_maps
from tests.unit.listlog import ListLog

MAILBOXES = ("inline:{ alice@a.test=a.test/alice/, bob@b.test=b.test/bob, @c.test=c.test/catchall/,"
             " bad@a.test=a.test/../../etc/passwd, nouid@a.test=a.test/nouid/ }")
UIDS = "inline:{ alice@a.test=5000, bob@b.test=5001, @c.test=5002, low@a.test=99, bad@a.test=5000 }"


def maps(mailboxes=MAILBOXES, uids=UIDS, gids="static:5000", minimum_uid=100, delimiter="+", log=None):
    settings = VirtualSettings("/var/vmail", minimum_uid=minimum_uid, recipient_delimiter=delimiter)
    return VirtualMaps(settings, open_maps(mailboxes), open_maps(uids), open_maps(gids), log=log)


def mailbox(virtual_maps, address):
    return asyncio.run(virtual_maps.mailbox(address))


def test_an_address_with_an_entry_gets_its_path_under_the_base_and_its_ids():
    assert mailbox(maps(), "alice@a.test") == Mailbox("/var/vmail/a.test/alice/", 5000, 5000)
    assert mailbox(maps(), "Bob@B.test") == Mailbox("/var/vmail/b.test/bob", 5001, 5000)


def test_a_trailing_slash_means_maildir_anything_else_mbox():
    assert mailbox(maps(), "alice@a.test").is_maildir
    assert not mailbox(maps(), "bob@b.test").is_maildir


def test_the_extension_is_dropped_and_at_domain_catches_the_rest():
    assert mailbox(maps(), "alice+lists@a.test").path == "/var/vmail/a.test/alice/"
    assert mailbox(maps(), "anyone@c.test") == Mailbox("/var/vmail/c.test/catchall/", 5002, 5000)


def test_an_unknown_user_bounces_5_1_1():
    result = mailbox(maps(), "nobody@a.test")
    assert (result.status, result.dsn, result.reason, result.relay) == (
        BOUNCED, "5.1.1", 'unknown user: "nobody@a.test"', "virtual")


@pytest.mark.parametrize("address, uids, gids, warning", [
    ("nouid@a.test", UIDS, "static:5000", "recipient nouid@a.test: not found in virtual_uid_maps"),
    ("alice@a.test", "static:abc", "static:5000", "bad uid abc in virtual_uid_maps (not a number)"),
    ("alice@a.test", "static:99", "static:5000", "bad uid 99 in virtual_uid_maps (below virtual_minimum_uid = 100)"),
    ("alice@a.test", "static:-1", "static:5000", "bad uid -1"),
    ("alice@a.test", "static:5000", "static:0", "bad gid 0 in virtual_gid_maps (gid 0 is refused)"),
    ("bad@a.test", UIDS, "static:5000", "bad mailbox path a.test/../../etc/passwd"),
])
def test_a_bad_or_missing_id_or_path_defers_as_a_configuration_error(address, uids, gids, warning):
    log = ListLog()
    result = mailbox(maps(uids=uids, gids=gids, log=log), address)
    assert (result.status, result.dsn, result.reason) == (DEFERRED, "4.3.5", "mail system configuration error")
    assert any(warning in text for text in log.warnings()), log.warnings()


def test_root_is_refused_by_the_default_minimum_uid():
    result = mailbox(maps(uids="static:0"), "alice@a.test")
    assert result.status == DEFERRED


def test_a_table_that_fails_for_now_defers():
    class Failing:
        async def lookup(self, key, partial=False):
            from mailferry.tables import tempfail
            return tempfail("server down")

        def close(self):
            pass
    settings = VirtualSettings("/var/vmail")
    virtual_maps = VirtualMaps(settings, Failing(), open_maps("static:5000"), open_maps("static:5000"))
    result = mailbox(virtual_maps, "alice@a.test")
    assert (result.status, result.dsn) == (DEFERRED, "4.3.5")


def test_mailbox_path_refuses_to_climb_out_of_the_base():
    assert mailbox_path("/v", "d/u/") == "/v/d/u/"
    assert mailbox_path("/v", "d/../../x") is None
    assert mailbox_path("/v", "..") is None
    assert mailbox_path("/v", "d/..foo/") == "/v/d/..foo/"


@pytest.mark.parametrize("value, expected", [("5000", 5000), (" 65534 ", 65534), ("-1", None), ("x", None),
                                             ("4294967295", None), ("", None), ("٣", None)])
def test_parse_id(value, expected):
    assert parse_id(value) == expected


def test_delivery_headers_are_postfixs_three_in_postfixs_order():
    headers = delivery_headers("s@x.test", Recipient("alice@a.test", orcpt="rfc822;info@a.test"))
    assert headers == b"Return-Path: <s@x.test>\nX-Original-To: info@a.test\nDelivered-To: alice@a.test\n"
    assert delivery_headers("", Recipient("a@b")).startswith(b"Return-Path: <>\nX-Original-To: a@b\n")


@pytest.mark.parametrize("changes, problem", [
    ({"mailbox_base": ""}, "relative or empty"),
    ({"mailbox_base": "vmail"}, "relative or empty"),
    ({"mailbox_lock": ("fcntl", "lockf")}, "unknown locking method"),
    ({"mailbox_limit": 1000}, "smaller than message_size_limit"),
])
def test_settings_postfix_refuses_to_start_with(changes, problem):
    settings = VirtualSettings(**{"mailbox_base": "/v", **changes})
    with pytest.raises(ValueError, match=problem):
        settings.check(10240000)


def test_an_unlimited_message_size_needs_an_unlimited_mailbox():
    with pytest.raises(ValueError, match="message_size_limit is unlimited"):
        VirtualSettings("/v", mailbox_limit=100).check(0)
    VirtualSettings("/v", mailbox_limit=0).check(0)


class RecordingSpawner:
    def __init__(self, answer=MailboxResult(True, "file")):
        self.requests: list[MailboxRequest] = []
        self.answer = answer

    async def store_in_mailbox(self, request):
        self.requests.append(request)
        return self.answer

    async def run_command(self, request):
        raise AssertionError("virtual(8) runs no commands")


def job(*addresses, content=b"Subject: hi\r\n\r\nbody\r\n"):
    message = QueuedMessage("4ABC", "active", "sender@x.test", [Recipient(a) for a in addresses], len(content),
                            1000.0)
    return DeliveryJob(message, content, list(message.recipients), "a.test")


def agent(spawner, limit=51200000):
    settings = VirtualSettings("/var/vmail", mailbox_limit=limit, mailbox_lock=("fcntl",))
    virtual_maps = VirtualMaps(settings, open_maps(MAILBOXES), open_maps(UIDS), open_maps("static:5000"))
    return VirtualAgent(settings, virtual_maps, spawner)


def test_the_agent_asks_the_spawner_to_store_as_the_mapped_ids_with_lf_content():
    spawner = RecordingSpawner()
    results = asyncio.run(agent(spawner).deliver(job("alice@a.test", "bob@b.test")))
    assert [(r.status, r.reason, r.relay) for r in results] == [
        (SENT, "delivered to maildir", "virtual"), (SENT, "delivered to mailbox", "virtual")]
    first, second = spawner.requests
    assert first.run_as == RunAs(uid=5000, gid=5000)
    assert first.path == "/var/vmail/a.test/alice/"
    assert first.content == (b"Return-Path: <sender@x.test>\nX-Original-To: alice@a.test\n"
                             b"Delivered-To: alice@a.test\nSubject: hi\n\nbody\n")
    assert (first.size_limit, second.size_limit) == (51200000, 51200000)   # checked by the spawner
    assert (second.run_as, second.sender, second.arrival_time, second.locks) == (
        RunAs(uid=5001, gid=5000), "sender@x.test", 1000.0, ("fcntl",))


def test_results_follow_the_recipients_order_unknown_ones_never_reach_the_spawner():
    spawner = RecordingSpawner()
    results = asyncio.run(agent(spawner).deliver(job("ghost@a.test", "alice@a.test")))
    assert [r.status for r in results] == [BOUNCED, SENT]
    assert [r.path for r in spawner.requests] == ["/var/vmail/a.test/alice/"]


def test_a_full_mailbox_bounces_5_2_2_other_trouble_waits():
    full = MailboxResult(False, error="cannot update mailbox: file too large", too_big=True)
    result = asyncio.run(agent(RecordingSpawner(full)).deliver(job("bob@b.test")))[0]
    assert (result.status, result.dsn) == (BOUNCED, "5.2.2")
    assert result.reason == "delivery failed to mailbox /var/vmail/b.test/bob: cannot update mailbox: file too large"
    quota = MailboxResult(False, error="Disk quota exceeded", errno=errno.EDQUOT)
    assert asyncio.run(agent(RecordingSpawner(quota)).deliver(job("alice@a.test")))[0].dsn == "5.2.2"
    denied = MailboxResult(False, error="create maildir file x: Permission denied", errno=errno.EACCES)
    result = asyncio.run(agent(RecordingSpawner(denied)).deliver(job("alice@a.test")))[0]
    assert (result.status, result.dsn, result.reason) == (
        DEFERRED, "4.2.0", "maildir delivery failed: create maildir file x: Permission denied")
