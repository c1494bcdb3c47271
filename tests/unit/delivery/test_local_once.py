"""A Maildir delivery repeated after a crash (before the queue recorded it) stores nothing twice."""

import os

from mailferry.delivery.local import maildir_name
from mailferry.delivery.mailbox import store
from mailferry.delivery.spawn import MailboxRequest, RunAs
from mailferry.message import QueuedMessage


def message(queue_id="6C8A2F41B3D7"):
    return QueuedMessage(queue_id, "active", "s@example.org", [], 10, 1700000000.5)


def test_name_is_stable_per_message_recipient_and_maildir():
    first = maildir_name(message(), "team@host.example", "/home/a/Maildir/")
    assert first == maildir_name(message(), "TEAM@host.example", "/home/a/Maildir/")
    assert first.startswith("1700000000.Q6C8A2F41B3D7R") and "/" not in first
    assert first != maildir_name(message(), "other@host.example", "/home/a/Maildir/")
    assert first != maildir_name(message(), "team@host.example", "/home/b/Maildir/")
    assert first != maildir_name(message("6C8A2F41B3E7"), "team@host.example", "/home/a/Maildir/")
    assert maildir_name(message(), "team@host.example", "/home/a/Mailbox") == ""


def test_second_store_of_the_same_delivery_is_a_success_that_adds_nothing(tmp_path):
    path = f"{tmp_path}/Maildir/"
    name = maildir_name(message(), "team@host.example", path)
    request = MailboxRequest(RunAs(user="nobody"), path, b"Subject: once\n\nbody\n", maildir_name=name)
    assert store(request).stored
    again = store(request)
    assert again.stored
    assert os.listdir(f"{path}new") == [name]
    assert os.listdir(f"{path}tmp") == []


def test_without_a_name_each_store_is_a_new_file(tmp_path):
    path = f"{tmp_path}/Maildir/"
    request = MailboxRequest(RunAs(user="nobody"), path, b"Subject: twice\n\nbody\n")
    assert store(request).stored and store(request).stored
    assert len(os.listdir(f"{path}new")) == 2
