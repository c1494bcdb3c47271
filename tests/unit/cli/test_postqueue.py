"""postqueue -p / -j / -f / -i / -s. The listing goldens are Postfix 3.7's own output
(recorded by test_postqueue_postfix.py from a private Postfix instance)."""

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from mailferry.cli.queue_listing import (EMPTY, ListedMessage, collect, format_json, format_listing,
                                         from_queued)
from mailferry.message import ACTIVE, BOUNCED, DEFERRED_QUEUE, HOLD
from tests.unit.local.queue_fixtures import entries, listed_from_json
from tests.unit.local.queue_fixtures import BACKENDS, add_message, make_instance, open_store

GOLDEN = Path(__file__).resolve().parent.parent / "local" / "golden"
QUEUES = {"active": ACTIVE, "deferred": DEFERRED_QUEUE, "hold": HOLD}


def golden(layout):
    return (GOLDEN / f"postfix-{layout}.json").read_text(), (GOLDEN / f"postfix-{layout}.txt").read_text()


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("layout", ["short", "long"])
def test_formatter_prints_exactly_what_postfix_printed(layout):
    as_json, listing = golden(layout)
    assert format_listing(listed_from_json(as_json), long_layout=layout == "long") == listing


def fill_from_postfix(store, as_json):
    for item in map(json.loads, as_json.splitlines()):
        sender = "" if item["sender"] == "MAILER-DAEMON" else item["sender"]
        reasons = {r["address"]: r["delay_reason"] for r in item["recipients"] if "delay_reason" in r}
        add_message(store, sender, [r["address"] for r in item["recipients"]], QUEUES[item["queue_name"]],
                    reasons, size=item["message_size"], arrival_time=item["arrival_time"],
                    queue_id=item["queue_id"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["short", "long"])
def test_the_same_queue_in_mailferry_lists_as_in_postfix(tmp_path, backend, layout):
    as_json, listing = golden(layout)
    _, queue_directory = make_instance(tmp_path)
    store = open_store(backend, queue_directory)
    fill_from_postfix(store, as_json)
    ours = format_listing(collect(str(queue_directory), store), long_layout=layout == "long")
    assert entries(ours) == entries(listing)  # Postfix's order within a queue is its hash order
    ours_json = [json.loads(line) for line in format_json(collect(str(queue_directory), store)).splitlines()]
    theirs = [json.loads(line) for line in as_json.splitlines()]
    assert sorted(ours_json, key=lambda m: m["queue_id"]) == sorted(theirs, key=lambda m: m["queue_id"])
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_showq_order_active_deferred_hold(tmp_path, backend):
    _, queue_directory = make_instance(tmp_path)
    store = open_store(backend, queue_directory)
    held = add_message(store, queue=HOLD, arrival_time=100)
    deferred = add_message(store, queue=DEFERRED_QUEUE, arrival_time=300)
    older_deferred = add_message(store, queue=DEFERRED_QUEUE, arrival_time=200)
    active = add_message(store, queue=ACTIVE, arrival_time=400)
    assert [m.queue_id for m in collect(str(queue_directory), store)] == [active, older_deferred, deferred, held]
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_delivered_recipients_are_not_listed(tmp_path, backend):
    _, queue_directory = make_instance(tmp_path)
    store = open_store(backend, queue_directory)
    queue_id = add_message(store, recipients=("done@example.net", "bounced@example.net", "left@example.net"),
                           sent=("done@example.net",))
    message = store.get(queue_id)
    message.recipients[1].status = BOUNCED
    store.update(message)
    [listed] = collect(str(queue_directory), store)
    assert listed.recipients == [("left@example.net", "")]
    store.close()


def test_empty_queue():
    assert format_listing([]) == "Mail queue is empty\n"
    assert format_json([]) == ""


def test_one_request_and_kbytes_rounded_down():
    one = ListedMessage("3F2A1B4C5D", DEFERRED_QUEUE, 2047, 0, "a@example.org", [("b@example.net", "")])
    assert format_listing([one]).endswith("\n\n-- 1 Kbytes in 1 Request.\n")


def test_reason_is_repeated_when_it_changes_back():
    message = ListedMessage("3F2A1B4C5D", DEFERRED_QUEUE, 10, 0, "", [
        ("a@x", "first"), ("b@x", "first"), ("c@x", "second"), ("d@x", ""), ("e@x", "first")])
    lines = format_listing([message]).splitlines()
    assert lines[1] == "3F2A1B4C5D       10 Thu Jan  1 00:00:00  MAILER-DAEMON"
    assert [line.strip() for line in lines[2:10]] == [
        "(first)", "a@x", "b@x", "(second)", "c@x", "d@x", "(first)", "e@x"]
    assert lines[2] == "(first)".rjust(78)


def test_a_multi_line_reply_is_listed_on_one_line(tmp_path):
    _, queue_directory = make_instance(tmp_path)
    store = open_store("ram", queue_directory)
    queue_id = add_message(store, reasons={"bob@example.net": "450-first line\r\n450 second line"})
    assert from_queued(store.get(queue_id)).recipients == [("bob@example.net", "450-first line 450 second line")]


def test_long_ids_switch_to_the_long_layout():
    short = ListedMessage("6110D1F7FE67", ACTIVE, 1, 0, "a", [])
    longer = ListedMessage("4jZ3gd3SK5zJ9L2", HOLD, 1, 0, "a", [])
    from mailferry.cli.queue_listing import wants_long_layout
    assert not wants_long_layout([short], long_queue_ids=False)
    assert wants_long_layout([short], long_queue_ids=True)
    assert wants_long_layout([short, longer], long_queue_ids=False)


def test_from_queued_keeps_queue_and_size(tmp_path):
    _, queue_directory = make_instance(tmp_path)
    store = open_store("ram", queue_directory)
    queue_id = add_message(store, queue=HOLD, size=1234, reasons={"bob@example.net": "Mailbox full"})
    listed = from_queued(store.get(queue_id))
    assert (listed.queue_name, listed.size, listed.recipients) == (HOLD, 1234, [("bob@example.net", "Mailbox full")])


# ---- the command


def add_to_sqlite(queue_directory, **fields):
    store = open_store("sqlite", queue_directory)
    queue_id = add_message(store, **fields)
    store.close()
    return queue_id


def test_postqueue_p_and_j(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_id = add_to_sqlite(queue_directory, queue=HOLD, reasons={"bob@example.net": "Mailbox full"})
    listing = mailferry("postqueue", "-p", config_dir=config_dir)
    assert listing.code == 0, listing.err
    assert listing.out.splitlines()[1].startswith(f"{queue_id}!")
    as_json = mailferry("postqueue", "-j", config_dir=config_dir)
    assert json.loads(as_json.out)["recipients"] == [{"address": "bob@example.net", "delay_reason": "Mailbox full"}]


def test_a_queue_that_was_never_created_is_empty_and_stays_uncreated(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    result = mailferry("postqueue", "-p", config_dir=config_dir)
    assert (result.code, result.out) == (0, EMPTY + "\n")
    assert not (queue_directory / "queue.db").exists()


def test_missing_queue_directory_is_fatal_as_in_postfix(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_directory.rmdir()
    result = mailferry("postqueue", "-p", config_dir=config_dir)
    assert result.code == 69
    assert f"fatal: chdir {queue_directory}: No such file or directory" in result.err


def test_missing_main_cf_is_fatal(tmp_path, mailferry):
    result = mailferry("postqueue", "-p", config_dir=tmp_path / "nowhere")
    assert result.code == 69
    assert f"fatal: open {tmp_path / 'nowhere' / 'main.cf'}: No such file or directory" in result.err


@pytest.mark.parametrize("args", [[], ["-p", "-f"], ["-p", "extra"], ["-x"]])
def test_usage_errors_exit_69(tmp_path, mailferry, args):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("postqueue", *args, config_dir=config_dir)
    assert result.code == 69
    assert "usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site" in result.err


def test_per_site_flush_is_not_supported(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("postqueue", "-s", "example.com", config_dir=config_dir)
    assert result.code == 69 and "example.com" in result.err and "postqueue -f" in result.err


def test_flush_with_the_daemon_down_marks_mail_due_and_says_so(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_id = add_to_sqlite(queue_directory, reasons={"bob@example.net": "later"})
    store = open_store("sqlite", queue_directory)
    message = store.get(queue_id)
    message.next_attempt = time.time() + 3600
    store.update(message)
    store.close()
    result = mailferry("postqueue", "-f", config_dir=config_dir)
    assert result.code == 69
    assert "fatal: Cannot flush mail queue - mail system is down" in result.err
    store = open_store("sqlite", queue_directory)
    assert store.get(queue_id).next_attempt <= time.time()
    store.close()


class FakeDaemon:
    """Answers the control socket as the daemon does, and remembers what it was told."""

    def __init__(self, queue_directory):
        os.makedirs(os.path.join(queue_directory, "public"), exist_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(os.path.join(queue_directory, "public", "control"))
        self.server.listen(4)
        self.commands = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                self.commands.append(connection.recv(64).decode().strip())
                connection.sendall(b"ok\n")

    def close(self):
        self.server.close()


@pytest.fixture
def daemon(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    fake = FakeDaemon(str(queue_directory))
    yield config_dir, queue_directory, fake
    fake.close()


def test_flush_wakes_the_daemon(daemon, mailferry):
    config_dir, _, fake = daemon
    result = mailferry("postqueue", "-f", config_dir=config_dir)
    assert (result.code, result.err) == (0, "")
    assert fake.commands == ["flush"]


def test_flush_one_message(daemon, mailferry):
    config_dir, queue_directory, fake = daemon
    queue_id = add_to_sqlite(queue_directory, reasons={"bob@example.net": "later"})
    store = open_store("sqlite", queue_directory)
    message = store.get(queue_id)
    message.next_attempt = time.time() + 3600
    store.update(message)
    store.close()
    assert mailferry("postqueue", "-i", queue_id, config_dir=config_dir).code == 0
    store = open_store("sqlite", queue_directory)
    assert store.get(queue_id).next_attempt <= time.time()
    store.close()
    assert fake.commands == ["flush"]
