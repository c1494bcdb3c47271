"""The queue on disk: one SQLite database, `queue_directory/queue.db`.

Why SQLite: a message's envelope, recipients and content go in with one
transaction, so after a crash at any instant a message is wholly there or
not there at all, and one fsync covers a whole batch (group commit, see
commit.py). WAL mode lets the queue tools (other processes) read while the
daemon writes; `synchronous=FULL` makes every COMMIT durable before it
returns, which is what lets smtpd answer 250 (RFC 5321 §6.1).

Large content goes to its own file, `queue_directory/content/NAME`, written and
fsynced (with its directory) before the row naming it commits: as Postfix
writes a queue file once and fsyncs it once. Measured with bench/relay at
1 MiB a message: kept as a BLOB, each message was written twice (into the WAL,
then into the database at checkpoint) under SQLite's one write lock, which the
smtpd workers' writers then waited for most of the time. A file is written by the
session's own thread, outside that lock, and the row stays small. The file goes
after the row's removal commits; a crash between leaves a file no row names,
which the daemon removes when it next starts (sweep_content_files).

Each thread gets its own connection: readers never wait for the writer,
and writers (the daemon's writer thread, a queue tool) are serialised by
SQLite's own lock, waited for up to BUSY_TIMEOUT.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from queue import SimpleQueue

from mailferry.message import (
    ACTIVE,
    DEFERRED,
    DEFERRED_QUEUE,
    HOLD,
    PENDING,
    ClientInfo,
    NewMessage,
    QueuedMessage,
    Recipient,
)
from mailferry.queue.queue_id import new_queue_ids, skip_past_queue_id
from mailferry.queue.store import QueueError, QueueFull, QueueStore

SCHEMA_VERSION = 4
CONTENT_DIRECTORY = "content"
AUTO_CHECKPOINTS, BACKGROUND_CHECKPOINTS, CHECKPOINTS_ELSEWHERE = "auto", "background", "elsewhere"
CHECKPOINT_INTERVAL = 0.25    # seconds between the background checkpoints
# Content of at least this many bytes goes to its own file. Below it a BLOB costs less: the
# group commit makes one fsync cover a whole batch, where every file needs its own two.
CONTENT_FILE_MIN_BYTES = 128 << 10
BUSY_TIMEOUT = 10.0          # seconds a writer waits for another (e.g. postsuper -d ALL)
QUICK_CHECK_MAX_BYTES = 64 << 20   # check at open only while that stays well under a second
_ID_ATTEMPTS = 5
_SQL_IN_CHUNK = 500
_AUX_SUFFIXES = ("", "-wal", "-shm", "-lock")

_SCHEMA = (
    """CREATE TABLE messages (
        queue_id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        sender TEXT NOT NULL,
        arrival_time REAL NOT NULL,
        next_attempt REAL NOT NULL,
        attempts INTEGER NOT NULL,
        size INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        client_name TEXT NOT NULL,
        client_address TEXT NOT NULL,
        client_port INTEGER NOT NULL,
        client_helo TEXT NOT NULL,
        client_protocol TEXT NOT NULL,
        client_tls TEXT NOT NULL,
        client_sasl_username TEXT NOT NULL,
        client_uid INTEGER,
        origin TEXT NOT NULL,
        dsn_ret TEXT,
        dsn_envid TEXT,
        body_type TEXT,
        smtputf8 INTEGER NOT NULL,
        content BLOB NOT NULL,
        delay_warned INTEGER NOT NULL DEFAULT 0,
        content_filter TEXT NOT NULL DEFAULT '',
        content_file TEXT
    )""",
    # The scheduler's question. Partial, so held mail costs it nothing.
    f"CREATE INDEX messages_due ON messages (next_attempt, arrival_time) WHERE queue != '{HOLD}'",
    # WITHOUT ROWID clusters recipients by message: one message's sit together.
    """CREATE TABLE recipients (
        queue_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        address TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT,
        status TEXT NOT NULL,
        dsn TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (queue_id, position)
    ) WITHOUT ROWID""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_ENVELOPE = ("queue_id, queue, sender, arrival_time, next_attempt, attempts, size, message_id, "
             "client_name, client_address, client_port, client_helo, client_protocol, client_tls, "
             "client_sasl_username, client_uid, origin, dsn_ret, dsn_envid, body_type, smtputf8, delay_warned, "
             "content_filter")
_INSERT_MESSAGE = (f"INSERT INTO messages ({_ENVELOPE}, content, content_file) "
                   f"VALUES ({', '.join('?' * 25)})")
_INSERT_RECIPIENT = ("INSERT INTO recipients (queue_id, position, address, orcpt, notify, status, "
                     "dsn, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_RECIPIENT_COLUMNS = "queue_id, address, orcpt, notify, status, dsn, reason"
_SELECT_DUE = (f"SELECT {_ENVELOPE} FROM messages WHERE queue != '{HOLD}' AND next_attempt <= ? "
               "AND queue_id NOT IN (SELECT value FROM json_each(?)) "
               "ORDER BY next_attempt, arrival_time LIMIT ?")
_UPDATE_ENVELOPE = (f"UPDATE messages SET queue = CASE queue WHEN '{HOLD}' THEN queue ELSE ? END, "
                    "next_attempt = ?, attempts = ?, delay_warned = ? WHERE queue_id = ?")
_UPDATE_RECIPIENT = ("UPDATE recipients SET status = ?, dsn = ?, reason = ? "
                     "WHERE queue_id = ? AND position = ?")


class _ThreadState(threading.local):
    connection: sqlite3.Connection | None = None
    batch_depth: int = 0
    # The error after which SQLite rolled the whole batch back (it may, on SQLITE_FULL).
    batch_lost_by: sqlite3.Error | None = None
    # Content files of rows this transaction deletes: unlinked once it commits, kept if it rolls back.
    doomed: list[str]

    def __init__(self) -> None:
        self.doomed = []


class _QueueIdTaken(QueueError):
    """Another process already used one of the batch's IDs; the batch is retried."""


class SqliteQueueStore(QueueStore):
    def __init__(self, path: str | os.PathLike[str], owner_uid: int | None = None,
                 owner_gid: int | None = None, checkpoints: str = AUTO_CHECKPOINTS) -> None:
        """`checkpoints`: who copies the WAL back into the database. AUTO_CHECKPOINTS: SQLite's
        default, the commit that fills the WAL past 1,000 pages does it before it returns (the
        queue tools). BACKGROUND_CHECKPOINTS: a thread of this store, every CHECKPOINT_INTERVAL
        (the daemon's master). CHECKPOINTS_ELSEWHERE: another process's store does (the smtpd
        workers). Measured with bench/relay's latency probes: the commit that ran the checkpoint
        held its sessions' 250s, and the other writers' turn, for tens of ms (end of DATA to 250,
        max 37-91 ms a round; without checkpoints in the commit, 20-25 ms; Postfix 18-22 ms)."""
        if checkpoints not in (AUTO_CHECKPOINTS, BACKGROUND_CHECKPOINTS, CHECKPOINTS_ELSEWHERE):
            raise ValueError(f"checkpoints: {checkpoints!r}")
        super().__init__()
        self.checkpoints = checkpoints
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self.path = Path(path)
        self.content_directory = self.path.parent / CONTENT_DIRECTORY
        self.content_file_min_bytes = CONTENT_FILE_MIN_BYTES
        self._unlinker = _Unlinker()
        self._turn = threading.Lock()      # this process's writers, before the flock (_writer_turn)
        self._lock_fd: int | None = None
        self._owner = (owner_uid, owner_gid)
        self._local = _ThreadState()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._create_file()
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise
        if checkpoints == BACKGROUND_CHECKPOINTS:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="queue-checkpointer",
                                                  daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """PASSIVE: copies what it can without waiting for, or blocking, any reader or writer."""
        while not self._stop_checkpoints.wait(CHECKPOINT_INTERVAL):
            try:
                self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._count("checkpoints")
            except (sqlite3.Error, QueueError):
                self._count("checkpoint_errors")    # the next one tries again; the WAL only grows

    # --- intake

    def insert_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Messages keep the queue_id smtpd gave them; the others get one here."""
        self._count("insert_many")
        if not messages:
            return []
        for _ in range(_ID_ATTEMPTS):
            ids = _ids_for(messages)
            message_rows, recipient_rows = _rows_for(ids, messages, time.time())
            try:
                with self._write_transaction() as connection:
                    connection.executemany(_INSERT_MESSAGE, message_rows)
                    connection.executemany(_INSERT_RECIPIENT, recipient_rows)
            except _QueueIdTaken:
                self._count("queue_id_collisions")
                self._skip_past_taken(ids, messages)
                continue
            self._count("messages_inserted", len(message_rows))
            self._count("recipients_inserted", len(recipient_rows))
            return ids
        raise QueueError(f"{self.path}: no free queue ID after {_ID_ATTEMPTS} attempts")

    def _skip_past_taken(self, ids: list[str], messages: Sequence[NewMessage]) -> None:
        """After a duplicate key: make fresh IDs miss the taken ones, unless the
        taken one was given by smtpd (it is in Received: and the log already)."""
        with self._read_transaction() as connection:
            taken = {row[0] for chunk in _chunks(ids) for row in connection.execute(
                f"SELECT queue_id FROM messages WHERE queue_id IN ({_marks(chunk)})", chunk)}
        given = [message.queue_id for message in messages if message.queue_id]
        reused = sorted(taken.intersection(given))
        if reused or len(set(given)) < len(given):
            raise QueueError(f"{self.path}: queue ID already in use: "
                             f"{', '.join(reused) or 'the same ID twice in one batch'}")
        if taken:
            skip_past_queue_id(max(taken))

    # --- large content in its own file

    def stages(self, message: NewMessage) -> bool:
        return len(message.content) >= self.content_file_min_bytes

    def stage_content(self, message: NewMessage) -> NewMessage:
        """Write the content to queue_directory/content/ and fsync it and the directory.
        Only then may the row naming it commit. Raises QueueFull or QueueError."""
        self._count("content_files")
        name, descriptor = self._new_content_file(message.queue_id)
        path = self.content_directory / name
        try:
            try:
                view = memoryview(message.content)
                while view:
                    view = view[os.write(descriptor, view):]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self._sync(self.content_directory)
        except OSError as exc:
            _unlink_quietly(path)
            raise self._file_error(path, exc) from exc
        return dataclasses.replace(message, content_file=name)

    def discard_staged(self, messages: Sequence[NewMessage]) -> None:
        """Only files no row names go: after a failed COMMIT whose outcome SQLite could
        not know (an I/O error), a row may be there after all, and it needs its file."""
        staged = [message.content_file for message in messages if message.content_file]
        if not staged:
            return
        try:
            with self._read_transaction() as connection:
                named = {row[0] for chunk in _chunks(staged) for row in connection.execute(
                    f"SELECT content_file FROM messages WHERE content_file IN ({_marks(chunk)})", chunk)}
        except QueueError:
            return      # the next start's sweep decides
        for name in staged:
            if name not in named:
                _unlink_quietly(self.content_directory / name)

    def _new_content_file(self, queue_id: str) -> tuple[str, int]:
        """A new file named by the queue ID (as Postfix names its queue files), or by a
        random name when there is none yet or that name is taken (a retry)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        name = queue_id or f"N{secrets.token_hex(8)}"
        for _ in range(_ID_ATTEMPTS):
            path = self.content_directory / name
            try:
                return name, os.open(path, flags, 0o600)
            except FileExistsError:
                name = f"{queue_id or 'N'}.{secrets.token_hex(4)}"
            except FileNotFoundError:
                try:    # a queue made before content files existed
                    os.mkdir(self.content_directory, 0o700)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise self._file_error(self.content_directory, exc) from exc
            except OSError as exc:
                raise self._file_error(path, exc) from exc
        raise QueueError(f"{self.content_directory}: no free file name after {_ID_ATTEMPTS} attempts")

    def _file_error(self, path: Path, exc: OSError) -> QueueError:
        self._count("errors")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return QueueFull(f"{path}: the queue is full: {exc.strerror}")
        return QueueError(f"{path}: {exc.strerror}")

    def _read_content(self, content: bytes, content_file: str | None) -> bytes | None:
        """A row's content: the BLOB, or its file's bytes (None: removed meanwhile)."""
        if not content_file:
            return content
        try:
            with open(self.content_directory / content_file, "rb", buffering=0) as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._file_error(self.content_directory / content_file, exc) from exc

    def sweep_content_files(self) -> list[str]:
        """Remove the content files no row names (left by a crash between a row's removal
        and its file's, or between a file's write and a failed insert). Only while no
        smtpd can be between stage_content and the insert: at start, before the workers."""
        try:
            present = os.listdir(self.content_directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._file_error(self.content_directory, exc) from exc
        with self._read_transaction() as connection:
            named = {row[0] for row in connection.execute(
                "SELECT content_file FROM messages WHERE content_file IS NOT NULL")}
        removed = sorted(name for name in present if name not in named)
        for name in removed:
            _unlink_quietly(self.content_directory / name)
        return removed

    # --- reading

    def get(self, queue_id: str) -> QueuedMessage | None:
        self._count("get")
        with self._read_transaction() as connection:
            row = connection.execute(
                f"SELECT {_ENVELOPE} FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
            if row is None:
                return None
            return _queued_message(row, _recipients_of(connection, [queue_id])[queue_id])

    def contents(self, queue_ids: Sequence[str]) -> dict[str, bytes]:
        """Several messages' content in one read; messages no longer queued are absent."""
        self._count("contents")
        found: dict[str, bytes] = {}
        with self._read_transaction() as connection:
            for chunk in _chunks(queue_ids):
                for queue_id, content, content_file in connection.execute(
                        f"SELECT queue_id, content, content_file FROM messages "
                        f"WHERE queue_id IN ({_marks(chunk)})", chunk):
                    content = self._read_content(content, content_file)
                    if content is not None:
                        found[queue_id] = content
        return found

    def content(self, queue_id: str) -> bytes:
        """The message's content; KeyError if it is no longer queued."""
        self._count("content")
        with self._read_transaction() as connection:
            row = connection.execute(
                "SELECT content, content_file FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
            content = None if row is None else self._read_content(*row)
        if content is None:
            raise KeyError(queue_id)
        return content

    def messages(self, queue: str | None = None) -> list[QueuedMessage]:
        self._count("messages")
        with self._read_transaction() as connection:
            if queue is None:
                rows = connection.execute(
                    f"SELECT {_ENVELOPE} FROM messages ORDER BY arrival_time, queue_id").fetchall()
                recipients = _all_recipients(connection)
            else:
                rows = connection.execute(
                    f"SELECT {_ENVELOPE} FROM messages WHERE queue = ? "
                    "ORDER BY arrival_time, queue_id", (queue,)).fetchall()
                recipients = _recipients_of(connection, [row[0] for row in rows])
        return [_queued_message(row, recipients.get(row[0], [])) for row in rows]

    def counts(self) -> dict[str, int]:
        # One grouped COUNT reads the queue column only, never the content or the recipients.
        self._count("counts")
        with self._read_transaction() as connection:
            return dict(connection.execute("SELECT queue, COUNT(*) FROM messages GROUP BY queue").fetchall())

    def due(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[QueuedMessage]:
        """Due messages in the order they became due (next_attempt), then arrival."""
        self._count("due")
        # The messages being delivered stay due; they are left out in SQL, so that
        # neither they nor their recipients are read again while they are away.
        excluded = json.dumps(list(exclude)) if exclude else "[]"
        with self._read_transaction() as connection:
            rows = connection.execute(_SELECT_DUE, (now, excluded, limit)).fetchall()
            recipients = _recipients_of(connection, [row[0] for row in rows])
        return [_queued_message(row, recipients.get(row[0], [])) for row in rows]

    # --- delivery results

    def update(self, message: QueuedMessage) -> None:
        """Store the delivery state. An operator's hold wins over the scheduler's
        queue; a message deleted meanwhile (postsuper -d) stays deleted."""
        self._count("update")
        with self._write_transaction() as connection:
            changed = connection.execute(_UPDATE_ENVELOPE, (
                message.queue, message.next_attempt, message.attempts, int(message.delay_warned),
                message.queue_id)).rowcount
            if not changed:
                self._count("update_missing")
                return
            connection.executemany(_UPDATE_RECIPIENT, [
                (recipient.status, recipient.dsn, recipient.reason, message.queue_id, position)
                for position, recipient in enumerate(message.recipients)])

    def remove(self, queue_id: str) -> bool:
        self._count("remove")
        with self._write_transaction() as connection:
            connection.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
            removed = connection.execute(
                "DELETE FROM messages WHERE queue_id = ? RETURNING content_file", (queue_id,)).fetchall()
            self._doom([content_file for (content_file,) in removed])
            return bool(removed)

    # --- operator actions

    def hold(self, queue_ids: Sequence[str] | None) -> int:
        self._count("hold")
        with self._write_transaction() as connection:
            return _change_messages(connection, f"SET queue = '{HOLD}' WHERE queue != '{HOLD}'",
                                    (), queue_ids)

    def release(self, queue_ids: Sequence[str] | None) -> int:
        """Move held mail to the deferred queue, due now (postsuper -H)."""
        self._count("release")
        with self._write_transaction() as connection:
            return _change_messages(
                connection, f"SET queue = '{DEFERRED_QUEUE}', next_attempt = ? "
                f"WHERE queue = '{HOLD}'", (time.time(),), queue_ids)

    def requeue(self, queue_ids: Sequence[str] | None) -> int:
        """As postsuper -r: held mail is requeued too, and so released."""
        self._count("requeue")
        with self._write_transaction() as connection:
            _change_recipients(connection, f"SET status = '{PENDING}' WHERE status = '{DEFERRED}'",
                               queue_ids)
            return _change_messages(connection, f"SET queue = '{ACTIVE}', next_attempt = ? "
                                    "WHERE 1", (time.time(),), queue_ids)

    def delete(self, queue_ids: Sequence[str] | None, queue: str | None = None) -> int:
        self._count("delete")
        where, parameters = ("WHERE queue = ?", (queue,)) if queue else ("WHERE 1", ())
        with self._write_transaction() as connection:
            if queue_ids is None:
                connection.execute("DELETE FROM recipients WHERE queue_id IN "
                                   f"(SELECT queue_id FROM messages {where})", parameters)
                removed = connection.execute(f"DELETE FROM messages {where} RETURNING content_file",
                                             parameters).fetchall()
                self._doom([content_file for (content_file,) in removed])
                return len(removed)
            chosen = [(*parameters, queue_id) for queue_id in _distinct(queue_ids)]
            for chunk in _chunks([queue_id for *_, queue_id in chosen]):
                self._doom([content_file for (content_file,) in connection.execute(
                    f"SELECT content_file FROM messages {where} AND queue_id IN ({_marks(chunk)})",
                    (*parameters, *chunk))])
            connection.executemany("DELETE FROM recipients WHERE queue_id IN (SELECT queue_id "
                                   f"FROM messages {where} AND queue_id = ?)", chosen)
            return connection.executemany(
                f"DELETE FROM messages {where} AND queue_id = ?", chosen).rowcount

    def flush(self, queue_ids: Sequence[str] | None = None) -> int:
        """Make mail due now: all deferred mail, or the named messages unless held.
        Returns how many were not due yet."""
        self._count("flush")
        now = time.time()
        eligible = f"queue = '{DEFERRED_QUEUE}'" if queue_ids is None else f"queue != '{HOLD}'"
        with self._write_transaction() as connection:
            return _change_messages(connection, f"SET next_attempt = ? WHERE {eligible} "
                                    "AND next_attempt > ?", (now, now), queue_ids)

    # --- batches and checks

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write of this thread inside the block one transaction.

        GroupCommitter uses it so that one fsync covers a whole batch of
        inserts, updates and removals. Inside, each write is a savepoint
        (undone alone if it fails) and is NOT durable when it returns: only
        when the block ends without an exception. If the commit fails,
        QueueError or QueueFull is raised and none of the writes happened.
        """
        state = self._local
        if state.batch_depth:
            state.batch_depth += 1
            try:
                yield
            finally:
                state.batch_depth -= 1
            return
        connection = self._connection()
        with self._writer_turn():
            with self._translated_errors():
                connection.execute("BEGIN IMMEDIATE")
            state.batch_depth, state.batch_lost_by, state.doomed = 1, None, []
            try:
                yield
            except BaseException:
                self._roll_back(connection)
                raise
            finally:
                state.batch_depth = 0
            with self._translated_errors():
                self._raise_if_batch_lost(connection)
                self._commit(connection)

    def _raise_if_batch_lost(self, connection: sqlite3.Connection) -> None:
        if not connection.in_transaction:
            raise self._local.batch_lost_by or sqlite3.OperationalError(
                "the batch was rolled back after an error")

    def check(self) -> list[str]:
        """SQLite's quick_check: the problems found, [] if none."""
        self._count("check")
        with self._read_transaction() as connection:
            answer = [row[0] for row in connection.execute("PRAGMA quick_check")]
        return [] if answer == ["ok"] else answer

    def missing_content_files(self) -> list[tuple[str, Path]]:
        """(queue ID, path) of each message whose content file is gone (removed by hand, a
        damaged file system): the master warns of them at start. Such a message cannot be
        delivered; the rest of the queue is not held up by it."""
        with self._read_transaction() as connection:
            named = connection.execute("SELECT queue_id, content_file FROM messages "
                                       "WHERE content_file IS NOT NULL").fetchall()
        return [(queue_id, self.content_directory / name) for queue_id, name in named
                if not (self.content_directory / name).exists()]

    def removed_files(self) -> None:
        """Wait until the content files of committed removals are gone (they go on a thread
        of their own: unlinking 1 MiB held the writer's next commit up)."""
        self._unlinker.wait()

    def close(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._unlinker.close()
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
            lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)
        for connection in connections:
            connection.close()

    # --- connections

    def _create_file(self) -> None:
        """Create queue.db as mode 0600 before SQLite does: SQLite gives the
        -wal and -shm files the database's mode and (as root) its owner."""
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise QueueError(
                f"{self.path}: cannot create the queue database: {exc.strerror}") from exc
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._sync_directory()

    def _sync_directory(self) -> None:
        self._sync(self.path.parent)

    @staticmethod
    def _sync(directory: Path) -> None:
        # A new file's name is durable only once its directory is synced.
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _set_up(self) -> None:
        connection = self._connection()
        with self._translated_errors():
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise QueueError(f"{self.path}: cannot use WAL mode (journal_mode is {mode})")
            self._create_schema(connection)
        self._secure_files()
        if os.path.getsize(self.path) <= QUICK_CHECK_MAX_BYTES:
            problems = self.check()
            if problems:
                raise QueueError(f"{self.path}: the queue database is damaged: "
                                 + "; ".join(problems[:5]))

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        # Only a new database needs the write lock: a queue tool opening the
        # queue must not wait for the daemon's writer.
        if self._schema_version(connection) == SCHEMA_VERSION:
            return
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(connection)   # another process may have won
            if version == 0:
                for statement in _SCHEMA:
                    connection.execute(statement)
            elif version in (1, 2, 3):
                if version == 1:
                    # Version 2 remembers whether a delay warning was sent (delay_warning_time).
                    connection.execute("ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0")
                if version <= 2:
                    # Version 3 stores the message's content filter (content_filter, FILTER).
                    connection.execute("ALTER TABLE messages ADD COLUMN content_filter TEXT NOT NULL DEFAULT ''")
                # Version 4 keeps large content in its own file (content_file; NULL: the BLOB).
                connection.execute("ALTER TABLE messages ADD COLUMN content_file TEXT")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise QueueError(f"{self.path}: queue schema version {version}, "
                                 f"this mailferry knows {SCHEMA_VERSION}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @staticmethod
    def _schema_version(connection: sqlite3.Connection) -> int:
        return connection.execute("PRAGMA user_version").fetchone()[0]

    def _secure_files(self) -> None:
        uid, gid = self._owner
        for suffix in _AUX_SUFFIXES:
            name = f"{self.path}{suffix}"
            try:
                os.chmod(name, 0o600)
                if uid is not None or gid is not None:
                    os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise QueueError(f"{name}: {exc.strerror}") from exc

    def _connection(self) -> sqlite3.Connection:
        connection = self._local.connection
        if connection is not None and not self._closed:
            return connection
        if self._closed:
            raise QueueError(f"{self.path}: the queue is closed")
        with self._translated_errors():
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                         check_same_thread=False, cached_statements=64)
            connection.execute("PRAGMA synchronous = FULL")
            if self.checkpoints != AUTO_CHECKPOINTS:
                connection.execute("PRAGMA wal_autocheckpoint = 0")
        with self._lock:
            self._connections.append(connection)
        self._local.connection = connection
        return connection

    def _discard(self, connection: sqlite3.Connection) -> None:
        """Drop a connection left in an unknown state; the next call opens a new one."""
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        if self._local.connection is connection:
            self._local.connection = None
        try:
            connection.close()
        except sqlite3.Error:
            pass

    # --- transactions

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for all of a call's SELECTs."""
        connection = self._connection()
        with self._translated_errors():
            if connection.in_transaction:      # inside batch(): see its own writes
                yield connection
                return
            connection.execute("BEGIN")
            try:
                yield connection
            except BaseException:
                self._roll_back(connection)
                raise
            connection.execute("COMMIT")

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with self._translated_errors():
            if self._local.batch_depth:
                yield from self._savepoint(connection)
                return
            with self._writer_turn():
                connection.execute("BEGIN IMMEDIATE")
                self._local.doomed = []
                try:
                    yield connection
                except BaseException:
                    self._roll_back(connection)
                    raise
                self._commit(connection)

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """Writers take turns on an flock of queue.db-lock before SQLite's own lock.

        Measured with bench/relay's latency probes: the smtpd workers' writers and the master's
        found SQLite's lock taken and slept in its busy handler (1, 2, 5, 10 ms ...) while the
        lock was free again long before: end of DATA to 250 took 8.7 ms at the median against
        Postfix's 1.6 ms. A writer blocked in flock wakes the moment the lock is released.
        A store that cannot open the lock file (a queue tool without the rights) relies on
        SQLite's busy handler alone, as before."""
        with self._turn:
            descriptor = self._lock_descriptor()
            if descriptor is None:
                yield
                return
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)

    def _lock_descriptor(self) -> int | None:
        if self._lock_fd is None and not self._closed:
            try:
                self._lock_fd = os.open(f"{self.path}-lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return None
        return self._lock_fd

    def _savepoint(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # Once SQLite has rolled the batch back, writing would autocommit outside it.
        self._raise_if_batch_lost(connection)
        connection.execute("SAVEPOINT write")
        doomed = len(self._local.doomed)
        try:
            yield connection
        except BaseException as exc:
            del self._local.doomed[doomed:]     # those rows stay
            if connection.in_transaction:
                connection.execute("ROLLBACK TO write")
                connection.execute("RELEASE write")
            elif isinstance(exc, sqlite3.Error):
                self._local.batch_lost_by = exc
            raise
        connection.execute("RELEASE write")

    def _commit(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("COMMIT")
        except sqlite3.Error:
            self._roll_back(connection)
            raise
        self._count("commits")
        doomed, self._local.doomed = self._local.doomed, []
        if doomed:
            self._unlinker.remove([self.content_directory / content_file for content_file in doomed])

    def _doom(self, content_files: list[str | None]) -> None:
        """Remove these content files once the current transaction commits."""
        self._local.doomed += [name for name in content_files if name]

    def _roll_back(self, connection: sqlite3.Connection) -> None:
        self._count("rollbacks")
        self._local.doomed = []
        if not connection.in_transaction:
            return
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            self._discard(connection)

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            error = self._queue_error(exc)
            self._count("full" if isinstance(error, QueueFull) else "errors")
            raise error from exc

    def _queue_error(self, exc: sqlite3.Error) -> QueueError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            return QueueFull(f"{self.path}: the queue is full: {exc}")
        if code == sqlite3.SQLITE_CONSTRAINT:
            return _QueueIdTaken(f"{self.path}: {exc}")
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return QueueError(f"{self.path}: the queue database is damaged: {exc}")
        return QueueError(f"{self.path}: {exc}")

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[name] += amount


# --- rows <-> records

def _ids_for(messages: Sequence[NewMessage]) -> list[str]:
    ids = [message.queue_id for message in messages]
    if all(ids):
        return ids
    fresh = iter(new_queue_ids(ids.count("")))
    return [queue_id or next(fresh) for queue_id in ids]


def _rows_for(ids: list[str], messages: Sequence[NewMessage],
              now: float) -> tuple[list[tuple], list[tuple]]:
    """The INSERT parameters for a batch: the hot path, kept to plain tuples."""
    message_rows = []
    recipient_rows: list[tuple] = []
    for queue_id, message in zip(ids, messages):
        client = message.client
        content = message.content
        stored = b"" if message.content_file else content
        message_rows.append((
            queue_id, HOLD if message.hold else ACTIVE, message.sender, message.arrival_time or now, now, 0,
            len(content),
            message.message_id, client.name, client.address, client.port, client.helo,
            client.protocol, client.tls, client.sasl_username, client.uid, message.origin,
            message.dsn_ret,
            message.dsn_envid, message.body_type, message.smtputf8, 0, message.content_filter, stored,
            message.content_file or None))
        recipient_rows += [
            (queue_id, position, recipient.address, recipient.orcpt, recipient.notify,
             recipient.status, recipient.dsn, recipient.reason)
            for position, recipient in enumerate(message.recipients)]
    return message_rows, recipient_rows


class _Unlinker:
    """One thread that removes files after their rows' removal committed. A crash that
    leaves some behind is mended at the next start (sweep_content_files)."""

    def __init__(self) -> None:
        self._work: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, paths: list[Path]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="queue-unlinker", daemon=True)
                self._thread.start()
        self._work.put(paths)

    def wait(self) -> None:
        if self._thread is not None:
            done = threading.Event()
            self._work.put(done)
            done.wait()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._work.put(None)
            thread.join()

    def _run(self) -> None:
        while (work := self._work.get()) is not None:
            if isinstance(work, threading.Event):
                work.set()
                continue
            for path in work:
                _unlink_quietly(path)


def _unlink_quietly(path: Path) -> None:
    """A file that cannot go now is swept at the next start; its row is gone already."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _queued_message(row: tuple, recipients: list[Recipient]) -> QueuedMessage:
    (queue_id, queue, sender, arrival_time, next_attempt, attempts, size, message_id,
     client_name, client_address, client_port, client_helo, client_protocol, client_tls,
     client_sasl_username, client_uid, origin, dsn_ret, dsn_envid, body_type, smtputf8,
     delay_warned, content_filter) = row
    client = ClientInfo(client_name, client_address, client_port, client_helo, client_protocol,
                        client_tls, client_sasl_username, client_uid)
    return QueuedMessage(queue_id, queue, sender, recipients, size, arrival_time, next_attempt,
                         attempts, message_id, client, origin, dsn_ret, dsn_envid, body_type,
                         bool(smtputf8), bool(delay_warned), content_filter)


def _all_recipients(connection: sqlite3.Connection) -> dict[str, list[Recipient]]:
    return _group_recipients(connection.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM recipients ORDER BY queue_id, position"))


def _recipients_of(connection: sqlite3.Connection,
                   ids: Sequence[str]) -> dict[str, list[Recipient]]:
    grouped: dict[str, list[Recipient]] = {queue_id: [] for queue_id in ids}
    for chunk in _chunks(ids):
        grouped.update(_group_recipients(connection.execute(
            f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE queue_id IN ({_marks(chunk)}) "
            "ORDER BY queue_id, position", chunk)))
    return grouped


def _group_recipients(rows: Iterator[tuple]) -> dict[str, list[Recipient]]:
    grouped: dict[str, list[Recipient]] = {}
    for queue_id, *fields in rows:
        grouped.setdefault(queue_id, []).append(Recipient(*fields))
    return grouped


def _change_messages(connection: sqlite3.Connection, change: str, parameters: tuple,
                     queue_ids: Sequence[str] | None) -> int:
    """UPDATE messages `change` (SET ... WHERE ...) for every message or the named ones."""
    if queue_ids is None:
        return connection.execute(f"UPDATE messages {change}", parameters).rowcount
    return connection.executemany(f"UPDATE messages {change} AND queue_id = ?",
                                  [(*parameters, queue_id) for queue_id in _distinct(queue_ids)]
                                  ).rowcount


def _change_recipients(connection: sqlite3.Connection, change: str,
                       queue_ids: Sequence[str] | None) -> int:
    if queue_ids is None:
        return connection.execute(f"UPDATE recipients {change}").rowcount
    return connection.executemany(f"UPDATE recipients {change} AND queue_id = ?",
                                  [(queue_id,) for queue_id in _distinct(queue_ids)]).rowcount


def _distinct(queue_ids: Sequence[str]) -> list[str]:
    # A queue ID named twice must count once, as in `postsuper -d A -d A`.
    return list(dict.fromkeys(queue_ids))


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _SQL_IN_CHUNK):
        yield items[start:start + _SQL_IN_CHUNK]


def _marks(chunk: Sequence[str]) -> str:
    return ", ".join("?" * len(chunk))
