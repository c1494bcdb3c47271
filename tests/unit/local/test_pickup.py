import os
import pwd
import time

import pytest

from mailferry.local import pickup
from mailferry.local.maildrop import (CorruptMaildropFile, MaildropEnvelope, ensure_maildrop_directory,
                                      maildrop_directory, write_maildrop)
from mailferry.message import PENDING
from tests.unit.local.queue_fixtures import BACKENDS, open_store


@pytest.fixture
def queue_directory(tmp_path):
    ensure_maildrop_directory(str(tmp_path))
    return str(tmp_path)


def drop(queue_directory, message=b"Subject: s\n\nbody\n", **changes):
    fields = dict(sender="alice", recipients=["bob@example.net"], uid=os.getuid(),
                  arrival_time=1_795_574_036.5)
    fields.update(changes)
    return write_maildrop(queue_directory, MaildropEnvelope(**fields), message)


def test_scan_lists_finished_files_oldest_first(queue_directory):
    first = drop(queue_directory)
    second = drop(queue_directory)
    os.utime(first, (time.time() - 60, time.time() - 60))
    temporary = os.path.join(maildrop_directory(queue_directory), ".tmp.123")
    open(temporary, "wb").close()
    assert pickup.scan(queue_directory) == [first, second]


def test_scan_of_a_missing_maildrop_is_empty(tmp_path):
    assert pickup.scan(str(tmp_path / "nowhere")) == []


def test_conversion_to_a_new_message(queue_directory):
    submission = pickup.pick_up(drop(queue_directory, b"Subject: s\n\nline\r\nlast", full_name="Alice A.",
                                     dsn_notify="SUCCESS", dsn_ret="HDRS", dsn_envid="e1", body_type="8BITMIME"))
    message = submission.message
    assert message.sender == "alice"  # unqualified: cleanup appends @$myorigin
    assert [r.address for r in message.recipients] == ["bob@example.net"]
    assert all(r.status == PENDING and r.notify == "SUCCESS" for r in message.recipients)
    assert message.content == b"Subject: s\r\n\r\nline\r\nlast\r\n"  # LF → CRLF, CRLF kept, last line ended
    assert message.origin == "local"
    assert (message.client.protocol, message.client.uid) == ("local", os.getuid())
    assert (message.dsn_ret, message.dsn_envid, message.body_type) == ("HDRS", "e1", "8BITMIME")
    assert message.arrival_time == 1_795_574_036.5
    assert submission.full_name == "Alice A."
    assert pickup.log_text(submission) == f"uid={os.getuid()} from=<alice>"


def test_null_sender_stays_null(queue_directory):
    assert pickup.pick_up(drop(queue_directory, sender="")).message.sender == ""


def test_missing_sender_is_the_owners_login(queue_directory):
    message = pickup.pick_up(drop(queue_directory, sender=None)).message
    assert message.sender == pwd.getpwuid(os.getuid()).pw_name


def test_the_file_owner_not_the_claimed_uid_is_the_submitter(queue_directory):
    message = pickup.pick_up(drop(queue_directory, uid=4242)).message
    assert message.client.uid == os.getuid()


def test_extract_recipients_adds_header_addresses_and_hides_bcc(queue_directory):
    content = b"To: to@example.net\nBcc: hidden@example.net\nSubject: s\n\nbody\n"
    message = pickup.pick_up(drop(queue_directory, content, extract_recipients=True)).message
    assert [r.address for r in message.recipients] == ["bob@example.net", "to@example.net", "hidden@example.net"]
    assert message.content == b"To: to@example.net\r\nSubject: s\r\n\r\nbody\r\n"


def test_bcc_stays_without_extract_recipients(queue_directory):
    content = b"To: to@example.net\nBcc: hidden@example.net\n\nbody\n"
    message = pickup.pick_up(drop(queue_directory, content)).message
    assert b"Bcc: hidden@example.net\r\n" in message.content
    assert [r.address for r in message.recipients] == ["bob@example.net"]


def test_no_recipients_at_all_is_corrupt(queue_directory):
    path = drop(queue_directory, b"Subject: none\n\n", recipients=[], extract_recipients=True)
    with pytest.raises(CorruptMaildropFile, match="no recipients"):
        pickup.pick_up(path)


def test_crlf_conversion_keeps_bare_cr():
    assert pickup.to_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\rd\r\n"
    assert pickup.to_crlf(b"") == b""


def test_quarantine_moves_without_overwriting(queue_directory):
    first = drop(queue_directory)
    name = os.path.basename(first)
    moved = pickup.quarantine(queue_directory, first)
    assert moved == os.path.join(queue_directory, "corrupt", name)
    again = os.path.join(maildrop_directory(queue_directory), name)
    with open(again, "wb") as handle:
        handle.write(b"junk")
    assert pickup.quarantine(queue_directory, again) == moved + ".1"
    assert sorted(os.listdir(os.path.join(queue_directory, "corrupt"))) == [name, name + ".1"]
    assert pickup.scan(queue_directory) == []


def test_remove_is_idempotent(queue_directory):
    path = drop(queue_directory)
    pickup.remove(path)
    pickup.remove(path)
    assert not os.path.exists(path)


def test_abandoned_temporary_files_are_purged_only_when_old(queue_directory):
    directory = maildrop_directory(queue_directory)
    old, fresh = os.path.join(directory, ".tmp.old"), os.path.join(directory, ".tmp.fresh")
    for path in (old, fresh):
        open(path, "wb").close()
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    kept = drop(queue_directory)
    assert pickup.remove_abandoned_temporary_files(queue_directory) == [old]
    assert sorted(os.listdir(directory)) == sorted([".tmp.fresh", os.path.basename(kept)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_picked_up_messages_go_into_the_real_queue(queue_directory, backend):
    """The loop the daemon runs: pick up, commit, then remove; bad files are moved aside."""
    good = drop(queue_directory, b"To: t@example.net\n\nhello\n", extract_recipients=True)
    bad = os.path.join(maildrop_directory(queue_directory), "BAD0001")
    with open(bad, "wb") as handle:
        handle.write(b"garbage")
    store = open_store(backend, queue_directory)
    committed = []
    for path in pickup.scan(queue_directory):
        try:
            submission = pickup.pick_up(path)
        except CorruptMaildropFile:
            pickup.quarantine(queue_directory, path)
            continue
        committed += store.insert_many([submission.message])
        pickup.remove(path)
    [queued] = store.messages()
    assert queued.queue_id == committed[0]
    assert [r.address for r in queued.recipients] == ["bob@example.net", "t@example.net"]
    assert store.content(queued.queue_id) == b"To: t@example.net\r\n\r\nhello\r\n"
    assert queued.client.uid == os.getuid() and queued.origin == "local"
    assert pickup.scan(queue_directory) == []
    assert os.listdir(os.path.join(queue_directory, "corrupt")) == ["BAD0001"]
    assert not os.path.exists(good)
    store.close()

