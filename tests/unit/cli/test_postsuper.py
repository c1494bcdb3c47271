"""postsuper on both real queue backends. The report texts are Postfix 3.7's, as its
postsuper printed them (see the module docstring of mailferry.cli.postsuper)."""

import os

import pytest

from mailferry.cli.output import Reporter
from mailferry.cli.postsuper import execute, report_counts
from mailferry.local.maildrop import MaildropEnvelope, ensure_maildrop_directory, write_maildrop
from mailferry.message import ACTIVE, DEFERRED, DEFERRED_QUEUE, HOLD, PENDING
from tests.unit.local.queue_fixtures import BACKENDS, add_message, make_instance, open_store


@pytest.fixture(params=BACKENDS)
def queue(request, tmp_path):
    _, queue_directory = make_instance(tmp_path)
    store = open_store(request.param, queue_directory)
    yield store, str(queue_directory)
    store.close()


def run(queue, capsys, *requests, queues=()):
    store, queue_directory = queue
    reporter = Reporter("postsuper")
    report_counts(execute(store, queue_directory, list(requests), list(queues), reporter), reporter)
    return capsys.readouterr().err.splitlines()


def queues_of(store):
    return {message.queue_id: message.queue for message in store.messages()}


def test_delete_one(queue, capsys):
    store, _ = queue
    doomed, kept = add_message(store), add_message(store)
    assert run(queue, capsys, ("-d", doomed)) == [f"postsuper: {doomed}: removed",
                                                  "postsuper: Deleted: 1 message"]
    assert list(queues_of(store)) == [kept]


def test_delete_unknown_and_invalid_ids(queue, capsys):
    assert run(queue, capsys, ("-d", "NOSUCH"), ("-d", "../etc")) == [
        "postsuper: warning: invalid mail queue id: ../etc", "postsuper: Deleted: 0 messages"]


def test_delete_all_prints_no_ids(queue, capsys):
    store, _ = queue
    for _ in range(3):
        add_message(store)
    add_message(store, queue=HOLD)
    assert run(queue, capsys, ("-d", "ALL")) == ["postsuper: Deleted: 4 messages"]
    assert store.messages() == []


def test_all_must_be_upper_case(queue, capsys):
    store, _ = queue
    add_message(store)
    assert run(queue, capsys, ("-d", "all")) == ["postsuper: Deleted: 0 messages"]


def test_delete_all_in_one_queue(queue, capsys):
    store, _ = queue
    deferred = [add_message(store), add_message(store)]
    held = add_message(store, queue=HOLD)
    active = add_message(store, queue=ACTIVE)
    assert run(queue, capsys, ("-d", "ALL"), queues=[DEFERRED_QUEUE]) == ["postsuper: Deleted: 2 messages"]
    assert queues_of(store) == {held: HOLD, active: ACTIVE}
    assert not set(deferred) & set(queues_of(store))


def test_delete_by_id_outside_the_named_queue_does_nothing(queue, capsys):
    store, _ = queue
    held = add_message(store, queue=HOLD)
    assert run(queue, capsys, ("-d", held), queues=[DEFERRED_QUEUE]) == ["postsuper: Deleted: 0 messages"]
    assert held in queues_of(store)


def test_hold_release_requeue_texts(queue, capsys):
    store, _ = queue
    first, second = add_message(store), add_message(store)
    assert run(queue, capsys, ("-h", first)) == [f"postsuper: {first}: placed on hold",
                                                 "postsuper: Placed on hold: 1 message"]
    assert run(queue, capsys, ("-h", first)) == ["postsuper: Placed on hold: 0 messages"]
    assert run(queue, capsys, ("-H", first)) == [f"postsuper: {first}: released from hold",
                                                 "postsuper: Released from hold: 1 message"]
    assert run(queue, capsys, ("-H", first)) == ["postsuper: Released from hold: 0 messages"]
    assert run(queue, capsys, ("-r", second)) == [f"postsuper: {second}: requeued",
                                                  "postsuper: Requeued: 1 message"]


def test_all_forms(queue, capsys):
    store, _ = queue
    for _ in range(4):
        add_message(store)
    assert run(queue, capsys, ("-h", "ALL")) == ["postsuper: Placed on hold: 4 messages"]
    assert set(queues_of(store).values()) == {HOLD}
    assert run(queue, capsys, ("-h", "ALL")) == ["postsuper: Placed on hold: 0 messages"]
    assert run(queue, capsys, ("-H", "ALL"), queues=[HOLD]) == ["postsuper: Released from hold: 4 messages"]
    assert set(queues_of(store).values()) == {DEFERRED_QUEUE}
    assert run(queue, capsys, ("-h", "ALL"), queues=[DEFERRED_QUEUE]) == ["postsuper: Placed on hold: 4 messages"]
    assert run(queue, capsys, ("-r", "ALL")) == ["postsuper: Requeued: 4 messages"]
    assert set(queues_of(store).values()) == {ACTIVE}  # -r releases held mail, as Postfix's does


def test_requeue_makes_deferred_recipients_pending(queue, capsys):
    store, _ = queue
    queue_id = add_message(store, reasons={"bob@example.net": "try later"})
    assert store.get(queue_id).recipients[0].status == DEFERRED
    run(queue, capsys, ("-r", queue_id))
    message = store.get(queue_id)
    assert (message.queue, message.recipients[0].status) == (ACTIVE, PENDING)


def test_operations_apply_in_command_line_order_and_report_in_postfix_order(queue, capsys):
    store, _ = queue
    a, b, c, d = (add_message(store) for _ in range(4))
    store.hold([b])
    lines = run(queue, capsys, ("-r", a), ("-H", b), ("-h", c), ("-d", d), ("-d", a), ("-h", a))
    assert lines == [
        f"postsuper: {a}: requeued", f"postsuper: {b}: released from hold", f"postsuper: {c}: placed on hold",
        f"postsuper: {d}: removed", f"postsuper: {a}: removed",
        "postsuper: Requeued: 1 message", "postsuper: Deleted: 2 messages",
        "postsuper: Placed on hold: 1 message", "postsuper: Released from hold: 1 message"]
    assert queues_of(store) == {b: DEFERRED_QUEUE, c: HOLD}


def test_hold_then_release_the_same_message(queue, capsys):
    store, _ = queue
    queue_id = add_message(store)
    assert run(queue, capsys, ("-h", queue_id), ("-H", queue_id))[-2:] == [
        "postsuper: Placed on hold: 1 message", "postsuper: Released from hold: 1 message"]
    assert run(queue, capsys, ("-H", queue_id), ("-h", queue_id))[-2:] == [
        "postsuper: Placed on hold: 1 message", "postsuper: Released from hold: 0 messages"]


def test_the_same_id_twice_counts_once(queue, capsys):
    store, _ = queue
    queue_id = add_message(store)
    assert run(queue, capsys, ("-d", queue_id), ("-d", queue_id))[-1] == "postsuper: Deleted: 1 message"


def test_maildrop_files_can_be_deleted(queue, capsys):
    store, queue_directory = queue
    ensure_maildrop_directory(queue_directory)
    envelope = MaildropEnvelope("alice", ["bob@example.net"], os.getuid(), 0.0)
    named = os.path.basename(write_maildrop(queue_directory, envelope, b"x\n"))
    write_maildrop(queue_directory, envelope, b"y\n")
    queued = add_message(store)
    assert run(queue, capsys, ("-d", named)) == ["postsuper: Deleted: 0 messages"]  # not a default queue
    assert run(queue, capsys, ("-d", named), queues=["maildrop"]) == [
        f"postsuper: {named}: removed", "postsuper: Deleted: 1 message"]
    assert run(queue, capsys, ("-d", "ALL"), queues=["maildrop"]) == ["postsuper: Deleted: 1 message"]
    assert os.listdir(os.path.join(queue_directory, "maildrop")) == []
    assert queued in queues_of(store)


def test_a_queue_never_created_holds_nothing(tmp_path, capsys):
    _, queue_directory = make_instance(tmp_path)
    lines = run((None, str(queue_directory)), capsys, ("-d", "ALL"), ("-h", "ABCDEF1234"))
    assert lines == ["postsuper: Deleted: 0 messages", "postsuper: Placed on hold: 0 messages"]


# ---- the command


def test_command_end_to_end_with_ids_from_stdin(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    store = open_store("sqlite", queue_directory)
    ids = [add_message(store) for _ in range(3)]
    store.close()
    result = mailferry("postsuper", "-d", "-", config_dir=config_dir, stdin=f"{ids[0]}\n\n{ids[2]}\nNOSUCH\n")
    assert result.code == 0
    assert result.err.splitlines() == [f"mailferry/postsuper: {ids[0]}: removed",
                                       f"mailferry/postsuper: {ids[2]}: removed",
                                       "mailferry/postsuper: Deleted: 2 messages"]
    store = open_store("sqlite", queue_directory)
    assert [m.queue_id for m in store.messages()] == [ids[1]]
    store.close()


def test_invalid_queue_name_is_fatal(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("postsuper", "-d", "ALL", "bogus", config_dir=config_dir)
    assert (result.code, result.err.strip()) == (1, "mailferry/postsuper: fatal: invalid directory name: bogus")


def test_bad_option_and_forced_expiration(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    bad = mailferry("postsuper", "-x", config_dir=config_dir)
    assert bad.code == 1 and "usage: postsuper" in bad.err
    expire = mailferry("postsuper", "-e", "ALL", config_dir=config_dir)
    assert expire.code == 1 and "forced expiration is not supported" in expire.err


def test_missing_queue_directory(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_directory.rmdir()
    result = mailferry("postsuper", "-d", "ALL", config_dir=config_dir)
    assert result.code == 1 and f"chdir {queue_directory}: No such file or directory" in result.err


def test_sqlite_files_keep_their_owner(tmp_path, mailferry):
    """As root, postsuper must not leave a root-owned -wal file that locks the daemon out."""
    if os.geteuid() != 0:
        pytest.skip("only root can chown; an ordinary user's files are always its own")
    config_dir, queue_directory = make_instance(tmp_path)
    store = open_store("sqlite", queue_directory)
    add_message(store)
    store.close()
    os.chown(queue_directory / "queue.db", 65534, 65534)
    assert mailferry("postsuper", "-h", "ALL", config_dir=config_dir).code == 0
    for name in os.listdir(queue_directory):
        if name.startswith("queue.db"):
            assert os.stat(queue_directory / name).st_uid == 65534, name
