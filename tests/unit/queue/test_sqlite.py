"""The SQLite store: files, durability, full disks, damage, other processes."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailferry.message import HOLD
from mailferry.queue import QueueError, QueueFull, SqliteQueueStore, open_queue
from mailferry.queue import sqlite as sqlite_module
from mailferry.queue.queue_id import new_queue_ids
from tests.conftest import ROOT

from .samples import problems_with, sample_message, self_checking_message

NOBODY = 65534


def fill(store, first, count, recipients=3, size=3000):
    return store.insert_many([self_checking_message(first + n, recipients, os.urandom(size))
                              for n in range(count)])


def queue_files(path):
    return [f"{path}{suffix}" for suffix in ("", "-wal", "-shm")]


# --- files

def test_files_are_private_even_with_a_lax_umask(tmp_path):
    path = tmp_path / "queue.db"
    old = os.umask(0)
    try:
        store = SqliteQueueStore(path)
        store.insert_many([sample_message()])
        for name in queue_files(path):
            assert os.stat(name).st_mode & 0o777 == 0o600, name
    finally:
        os.umask(old)
        store.close()


def test_files_belong_to_mail_owner(tmp_path):
    path = tmp_path / "queue.db"
    store = SqliteQueueStore(path, owner_uid=NOBODY, owner_gid=NOBODY)
    store.insert_many([sample_message()])
    for name in queue_files(path):
        assert (os.stat(name).st_uid, os.stat(name).st_gid) == (NOBODY, NOBODY), name
    store.close()
    assert not os.path.exists(f"{path}-wal"), "the last close checkpoints and removes the WAL"
    # Opened again by root without an owner (a queue tool): SQLite gives the
    # new -wal and -shm the database's owner.
    store = SqliteQueueStore(path)
    store.insert_many([sample_message()])
    for name in queue_files(path):
        assert os.stat(name).st_uid == NOBODY, name
    store.close()


def test_open_queue_by_mail_owner_name(tmp_path):
    store = open_queue(tmp_path, owner="nobody")
    assert os.stat(tmp_path / "queue.db").st_uid == NOBODY
    store.close()
    with pytest.raises(QueueError, match="no-such-user"):
        open_queue(tmp_path, owner="no-such-user")
    with pytest.raises(ValueError):
        open_queue(tmp_path, backend="maildir")


def test_uses_wal_and_full_sync(sqlite_store):
    connection = sqlite_store._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_messages_survive_closing_and_reopening(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    ids = fill(store, 0, 10)
    store.hold(ids[:2])
    store.close()
    store = SqliteQueueStore(tmp_path / "queue.db")
    assert sorted(m.queue_id for m in store.messages()) == sorted(ids)
    assert [m.queue_id for m in store.messages(HOLD)] == ids[:2]
    assert all(problems_with(store, queue_id) == [] for queue_id in ids)
    store.close()


def test_closed_store_raises_queue_error(tmp_path):
    store = SqliteQueueStore(tmp_path / "queue.db")
    store.close()
    with pytest.raises(QueueError, match="closed"):
        store.insert_many([sample_message()])


def test_missing_directory_is_a_queue_error_naming_the_file(tmp_path):
    with pytest.raises(QueueError, match=str(tmp_path / "gone" / "queue.db")):
        SqliteQueueStore(tmp_path / "gone" / "queue.db")


# --- damage

def test_a_file_that_is_not_a_database_is_named(tmp_path):
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not a queue\n" * 500)
    with pytest.raises(QueueError, match=f"{path}: the queue database is damaged"):
        SqliteQueueStore(path)


def test_damaged_pages_are_found_on_open(tmp_path):
    path = tmp_path / "queue.db"
    store = SqliteQueueStore(path)
    for first in range(0, 200, 20):
        fill(store, first, 20)
    store.close()
    page_size = 4096
    with open(path, "r+b") as database:
        database.seek(page_size * 5 + 8)       # into a b-tree page's cell pointers
        database.write(b"\xff" * 64)
    with pytest.raises(QueueError, match=f"{path}: "):
        SqliteQueueStore(path)


def test_schema_from_another_version_is_refused(tmp_path):
    path = tmp_path / "queue.db"
    SqliteQueueStore(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueError, match="schema version 99"):
        SqliteQueueStore(path)


@pytest.mark.parametrize("version, added_since", [
    (1, ("delay_warned", "content_filter", "content_file")),    # before delay warnings
    (2, ("content_filter", "content_file")),                    # before content filters
    (3, ("content_file",)),                                     # before content files
])
def test_an_older_queue_is_upgraded_in_place(tmp_path, version, added_since):
    """Queues written by an older mailferry keep their mail (unfiltered, not warned) and gain the columns."""
    path = tmp_path / "queue.db"
    store = SqliteQueueStore(path)
    ids = fill(store, 0, 3)
    store.close()
    with sqlite3.connect(path) as connection:
        for column in added_since:
            connection.execute(f"ALTER TABLE messages DROP COLUMN {column}")
        connection.execute(f"PRAGMA user_version = {version}")
    store = SqliteQueueStore(path)
    try:
        assert sorted(m.queue_id for m in store.messages()) == sorted(ids)
        assert all(problems_with(store, queue_id) == [] for queue_id in ids)
        assert {store.get(queue_id).content_filter for queue_id in ids} == {""}
        message = store.get(ids[0])
        message.delay_warned = True
        store.update(message)
        assert store.get(ids[0]).delay_warned is True
        [filtered] = store.insert_many([sample_message(1)])
        assert store.get(filtered).content_filter == "smtp:[127.0.0.2]:10024"
    finally:
        store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION


# --- queue IDs

def test_an_id_used_by_another_process_is_replaced(sqlite_store, monkeypatch):
    [taken] = sqlite_store.insert_many([sample_message(1)])
    handed_out = iter([[taken]])
    monkeypatch.setattr(sqlite_module, "new_queue_ids",
                        lambda count: next(handed_out, None) or new_queue_ids(count))
    [fresh] = sqlite_store.insert_many([sample_message(2)])
    assert fresh != taken and fresh > taken
    assert sqlite_store.stats["queue_id_collisions"] == 1
    assert sqlite_store.get(taken).sender == "sender1@example.org"
    assert sqlite_store.get(fresh).sender == "sender2@example.org"


# --- a full disk

def test_full_database_refuses_the_batch_and_keeps_the_queue(sqlite_store):
    store = sqlite_store
    kept = fill(store, 0, 20)
    connection = store._connection()      # max_page_count belongs to this thread's connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + 40}")
    with pytest.raises(QueueFull) as raised:
        for first in range(100, 10_000, 10):
            kept += fill(store, first, 10)
    assert (raised.value.reply_code, raised.value.enhanced_status) == (452, "4.3.1")
    assert "queue is full" in str(raised.value)
    assert sorted(m.queue_id for m in store.messages()) == sorted(kept), \
        "nothing of the refused batch is visible"
    assert [problem for queue_id in kept for problem in problems_with(store, queue_id)] == []
    assert store.check() == []
    assert store.stats["full"] == 1

    store.delete(kept[:20])                # the operator makes room
    kept = kept[20:] + fill(store, 20_000, 10)
    connection.execute(f"PRAGMA max_page_count = {pages * 100}")
    kept += fill(store, 30_000, 40)
    assert sorted(m.queue_id for m in store.messages()) == sorted(kept)
    assert [problem for queue_id in kept for problem in problems_with(store, queue_id)] == []


# --- batches

def test_batch_is_one_commit_and_invisible_until_it_ends(tmp_path):
    writer = SqliteQueueStore(tmp_path / "queue.db")
    reader = SqliteQueueStore(tmp_path / "queue.db")
    [first] = writer.insert_many([sample_message(1)])
    commits = writer.stats["commits"]
    with writer.batch():
        [second] = writer.insert_many([sample_message(2)])
        writer.hold([first])
        assert writer.get(second) is not None, "the batch sees its own writes"
        assert reader.get(second) is None
        assert reader.get(first).queue != HOLD
    assert writer.stats["commits"] == commits + 1
    assert reader.get(second) is not None and reader.get(first).queue == HOLD
    writer.close()
    reader.close()


def test_batch_rolled_back_by_an_exception(sqlite_store):
    with pytest.raises(RuntimeError):
        with sqlite_store.batch():
            sqlite_store.insert_many([sample_message(1)])
            raise RuntimeError("no")
    assert sqlite_store.messages() == []
    sqlite_store.insert_many([sample_message(2)])
    assert len(sqlite_store.messages()) == 1


def test_a_failed_write_in_a_batch_spares_the_others(sqlite_store):
    [taken] = sqlite_store.insert_many([sample_message(1)])
    with sqlite_store.batch():
        [kept] = sqlite_store.insert_many([sample_message(2)])
        with pytest.raises(QueueError):
            sqlite_store.insert_many([sample_message(3), sample_message(4, queue_id=taken)])
        sqlite_store.hold([kept])
    assert sorted(m.queue_id for m in sqlite_store.messages()) == sorted([taken, kept])
    assert sqlite_store.get(kept).queue == HOLD


# --- other processes and threads

QUEUE_TOOL = """
import sqlite3, sys
from mailferry.queue import SqliteQueueStore
store = SqliteQueueStore(sys.argv[1])
print(len(store.messages()), flush=True)
probe = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    probe.execute("BEGIN IMMEDIATE")
    print("free", flush=True)
except sqlite3.OperationalError:
    print("locked", flush=True)
probe.close()
print(store.hold(None), flush=True)
"""


def voluntary_switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def wait_for_lock_retries(process: subprocess.Popen, retries: int, timeout: float = 30) -> None:
    """Until `process` has gone to sleep `retries` times in SQLite's busy
    handler (each retry is one nanosleep, so one voluntary context switch)."""
    start = voluntary_switches(process.pid)
    deadline = time.monotonic() + timeout
    while voluntary_switches(process.pid) - start < retries:
        assert process.poll() is None, f"the tool stopped waiting for the lock: {process.communicate()}"
        assert time.monotonic() < deadline, "the tool neither waited nor stopped"
        time.sleep(0.01)
    assert Path(f"/proc/{process.pid}/wchan").read_text() == "hrtimer_nanosleep"


def wait_for_flock(process: subprocess.Popen, timeout: float = 30) -> None:
    """Until `process` sleeps in flock(2), waiting for another writer's turn."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{process.pid}/wchan").read_text() not in ("flock_lock_inode_wait", "locks_lock_inode_wait"):
        assert process.poll() is None, f"the tool stopped waiting for the lock: {process.communicate()}"
        assert time.monotonic() < deadline, (
            f"the tool never waited in flock: {Path(f'/proc/{process.pid}/wchan').read_text()}")
        time.sleep(0.01)


def test_a_writer_without_the_lock_file_falls_back_to_sqlites_busy_wait(tmp_path):
    """A queue tool whose turn is not the daemon's (here: queue.db-lock replaced under the daemon,
    so the two flock different files) still waits for the daemon's commit, in SQLite's busy
    handler (each retry one nanosleep), and then writes."""
    path = tmp_path / "queue.db"
    daemon = SqliteQueueStore(path)
    fill(daemon, 0, 3)
    with daemon.batch():
        fill(daemon, 10, 2)
        os.unlink(f"{path}-lock")
        os.mkdir(f"{path}-lock")          # the tool's flock is on this, the daemon's on the old file
        tool = subprocess.Popen([sys.executable, "-c", QUEUE_TOOL, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert tool.stdout.readline().strip() == "3"
        assert tool.stdout.readline().strip() == "locked"
        wait_for_lock_retries(tool, 10)
    out, _ = tool.communicate(timeout=30)
    assert int(out) == 5
    daemon.close()


def test_queue_tool_reads_at_once_and_writes_after_the_daemon(tmp_path):
    path = tmp_path / "queue.db"
    daemon = SqliteQueueStore(path)
    fill(daemon, 0, 3)
    with daemon.batch():
        fill(daemon, 10, 2)               # not committed yet: the tool must not see these
        tool = subprocess.Popen([sys.executable, "-c", QUEUE_TOOL, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert tool.stdout.readline().strip() == "3"
        assert tool.stdout.readline().strip() == "locked"   # the daemon's batch holds the write lock
        # The tool's hold() waits for the daemon's writer turn (an flock of queue.db-lock, before
        # SQLite's own lock: queue/sqlite.py _writer_turn), asleep in the kernel, not failing.
        wait_for_flock(tool)
    out, _ = tool.communicate(timeout=30)
    # All five: its write waited for the daemon's commit rather than failing or going first.
    assert int(out) == 5
    assert {m.queue for m in daemon.messages()} == {HOLD}
    daemon.close()


def test_readers_in_threads_while_writing(sqlite_store):
    failures = []
    stop = threading.Event()

    def read():
        try:
            while not stop.is_set():
                for message in sqlite_store.due(time.time() + 10, 50):
                    assert problems_with(sqlite_store, message.queue_id) == []
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for first in range(0, 400, 20):
        fill(sqlite_store, first, 20, size=500)
    stop.set()
    for reader in readers:
        reader.join()
    assert failures == []
    assert len(sqlite_store.messages()) == 400


# --- crashes

def test_kill_9_at_any_moment_leaves_only_whole_messages(tmp_path):
    """SIGKILL a writer 20 times at random moments: every batch it reported is
    there, and every message there is whole (all recipients, content hash).
    Checked messages are then deleted, so later rounds also write into freed
    pages, as a busy queue does."""
    path = tmp_path / "queue.db"
    chance = random.Random(20240229)
    checked = swept = with_files = 0
    for round_number in range(20):
        reported: set[str] = set()
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.queue.crash_writer", str(path), str(round_number)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready = child.stdout.readline()
        assert ready == b"ready\n", child.communicate()[1].decode()
        time.sleep(chance.uniform(0.01, 0.2))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err.decode()
        for line in out.split(b"\n")[:-1]:    # the last piece is "" or a line cut short
            reported.update(line.decode().split())

        store = SqliteQueueStore(path)         # recovers the WAL, then quick_check
        try:
            present = {message.queue_id for message in store.messages()}
            assert reported <= present, f"lost after round {round_number}: {reported - present}"
            assert [problem for queue_id in present
                    for problem in problems_with(store, queue_id)] == []
            swept += len(store.sweep_content_files())   # written, then killed before the row
            assert store.missing_content_files() == []   # every file a row names is there
            with_files += len(os.listdir(store.content_directory))
            checked += store.delete(None)
            store.removed_files()
            assert os.listdir(store.content_directory) == []
        finally:
            store.close()
    assert checked > 500, "the writer should have committed plenty"
    assert with_files > 10, "some messages should have been large enough for a file of their own"


# --- a real full file system

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs. Needs root; fails (never skips) when it cannot be mounted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}"
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.integration
def test_full_file_system(small_tmpfs):
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * (512 << 10))
    store = SqliteQueueStore(small_tmpfs / "queue.db")
    kept = []
    with pytest.raises(QueueFull):
        for first in range(0, 10_000, 5):
            kept += fill(store, first, 5, size=8000)
    assert 20 < len(kept) < 300
    assert sorted(m.queue_id for m in store.messages()) == sorted(kept)
    assert [problem for queue_id in kept for problem in problems_with(store, queue_id)] == []

    ballast.unlink()                        # the operator frees space
    kept += fill(store, 20_000, 5, size=8000)
    store.close()
    store = SqliteQueueStore(small_tmpfs / "queue.db")
    assert sorted(m.queue_id for m in store.messages()) == sorted(kept)
    assert [problem for queue_id in kept for problem in problems_with(store, queue_id)] == []
    store.close()


# --- who checkpoints the WAL

def test_the_daemons_stores_leave_checkpoints_out_of_their_commits(tmp_path):
    path = tmp_path / "queue.db"
    worker = SqliteQueueStore(path, checkpoints=sqlite_module.CHECKPOINTS_ELSEWHERE)
    tool = SqliteQueueStore(path)
    try:
        fill(worker, 0, 5)
        assert worker._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert tool._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        worker.close()
        tool.close()


def test_the_master_checkpoints_in_the_background(tmp_path):
    """A store with background checkpoints copies what the other writers commit back into the
    database on its own thread: after a while, every WAL frame is checkpointed."""
    path = tmp_path / "queue.db"
    master = SqliteQueueStore(path, checkpoints=sqlite_module.BACKGROUND_CHECKPOINTS)
    worker = SqliteQueueStore(path, checkpoints=sqlite_module.CHECKPOINTS_ELSEWHERE)
    try:
        for first in range(0, 600, 50):
            fill(worker, first, 50, size=4000)      # about 600 pages, none checkpointed by the worker
        # Only a checkpoint writes rows into queue.db itself (commits go to queue.db-wal).
        deadline = time.monotonic() + 10
        while os.path.getsize(path) < 2_000_000:
            assert time.monotonic() < deadline, (
                f"queue.db is {os.path.getsize(path)} bytes: the WAL was not checkpointed")
            time.sleep(0.05)
        assert master.stats["checkpoints"] > 0
    finally:
        worker.close()
        master.close()
