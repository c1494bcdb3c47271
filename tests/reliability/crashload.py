"""The crash tests' tools: a recording SMTP loader, kill -9 of the daemon's whole process tree, and
what the queue held at the moment of a kill.

Every message carries a unique `X-Reliability-Id`. The loader records each one that got its 250
after DATA (or, for sendmail, exit status 0), and retries, with the same id, every one that did not:
as a real client does, so a message committed just before a kill, whose 250 never left, comes again.
That is the one way intake makes a duplicate, and the loader counts the messages it exposes to it:
those whose end of data was sent and whose reply had not come when the kill fell (`in_flight`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.mailferry import MailferryDaemon
from tests.peers.processes import alive, descendants

ID_HEADER = "X-Reliability-Id"
ID_PATTERN = re.compile(rb"^X-Reliability-Id: *(\S+)", re.MULTILINE | re.IGNORECASE)
STARTED = "daemon started -- version"


def ids_in(data: bytes) -> list[str]:
    return [found.decode() for found in ID_PATTERN.findall(data)]


def message_bytes(message_id: str, recipient: str, size: int = 300) -> bytes:
    """A small message; its last line, `end ID`, tells a whole copy from a cut one."""
    body = ("x" * 70 + "\r\n") * max(1, size // 72)
    return (f"From: <load@client.example>\r\nTo: <{recipient}>\r\nSubject: reliability {message_id}\r\n"
            f"{ID_HEADER}: {message_id}\r\n\r\n{body}end {message_id}\r\n").encode()


def whole_ids_in(data: bytes) -> list[str]:
    """The ids of the messages in `data` whose last line (`end ID`) arrived too."""
    return [found for found in ids_in(data) if f"\nend {found}".encode() in data]


def spool_maildir_settings(spool: Path) -> dict[str, str]:
    """main.cf settings that make local(8) deliver into the Maildir `spool`/USER/ (Postfix's
    mail_spool_directory with a trailing slash), in a directory of the test's own: the test
    accounts' homes are shared by every test run on the machine, and another run may empty them."""
    return {"home_mailbox": "", "mail_spool_directory": f"{spool}/", "alias_maps": "", "alias_database": ""}


# --- the daemon's process tree

def kill_tree(daemon: MailferryDaemon, timeout: float = 20.0) -> list[int]:
    """kill -9 the daemon's process group (master, smtpd workers, spawner) and every descendant
    outside it (the spawner runs delivery commands in process groups of their own); wait until
    they are all gone. Returns the pids killed."""
    assert daemon.process is not None
    pids = descendants(daemon.process.pid)
    try:
        os.killpg(daemon.process.pid, signal.SIGKILL)   # start-fg is its session's (and group's) leader
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    daemon.process.wait(timeout)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive after kill -9: {[p for p in pids if alive(p)]}"
        time.sleep(0.01)
    return pids


def restart(daemon: MailferryDaemon, starts: int, timeout: float = 60.0) -> None:
    """Start the daemon again and wait for its `starts`-th "daemon started" log line: after a kill
    the old pid file is still there, so start()'s own wait for it proves nothing."""
    daemon.start(timeout=timeout)
    daemon.wait_for_log(STARTED, timeout=timeout, count=starts)


def stop_quietly(daemon: MailferryDaemon) -> None:
    """For clean-ups: stop the daemon, and kill -9 whatever of its tree is left."""
    if daemon.process is None:
        return
    if daemon.process.poll() is None:
        try:
            daemon.stop(timeout=20)
        except Exception:
            pass
    try:
        leftovers = [pid for pid in descendants(daemon.process.pid) if pid != daemon.process.pid]
    except Exception:
        leftovers = []
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(daemon.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- the queue, read while the daemon is down

def _copy_of_queue(queue_directory: Path, into: Path) -> Path:
    """A copy of queue.db with its -wal: SQLite is never opened on the daemon's own files, where
    it would leave root-owned -shm/-wal files behind that the daemon (not root) cannot write."""
    for suffix in ("", "-wal"):
        source = queue_directory / f"queue.db{suffix}"
        if source.exists():
            shutil.copyfile(source, into / f"queue.db{suffix}")
    return into / "queue.db"


def queue_snapshot(queue_directory: Path) -> "QueueSnapshot":
    """What the queue holds (the daemon must be down): each message's reliability ids, whether
    any recipient still waits for delivery, and SQLite's integrity_check."""
    with tempfile.TemporaryDirectory(prefix="mailferry-queue-copy-") as scratch:
        path = _copy_of_queue(Path(queue_directory), Path(scratch))
        connection = sqlite3.connect(path)
        try:
            integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            waiting: Counter[str] = Counter()
            done: Counter[str] = Counter()
            rows = connection.execute(
                "SELECT m.queue_id, m.content, m.content_file, EXISTS (SELECT 1 FROM recipients r "
                "WHERE r.queue_id = m.queue_id AND r.status IN ('pending', 'deferred')) FROM messages m")
            for queue_id, content, content_file, pending in rows:
                if content_file:    # a large message's content is a file of its own (queue/sqlite.py)
                    try:
                        content = (Path(queue_directory) / "content" / content_file).read_bytes()
                    except FileNotFoundError:
                        integrity.append(f"{queue_id}: its content file {content_file} is missing")
                        continue
                (waiting if pending else done).update(ids_in(content))
        finally:
            connection.close()
    return QueueSnapshot(integrity, waiting, done)


@dataclass
class QueueSnapshot:
    integrity: list[str]
    waiting: Counter        # ids of messages with a recipient still to deliver
    done: Counter           # ids of messages every recipient of which is done (not yet removed)

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"]


# --- the loaders

@dataclass
class LoadFigures:
    acknowledged: dict[str, str] = field(default_factory=dict)   # reliability id -> queue id from the 250
    attempts: int = 0
    failures: Counter = field(default_factory=Counter)          # "stage: reply or error" -> how often
    replies: Counter = field(default_factory=Counter)           # first line of each reply to end of data, by code


class Loader:
    """`sessions` threads, each sending one message after another, each message a unique id
    (`prefix`SESSION-N). `_send_one(index, id)` returns True once the id is acknowledged; until then
    it is tried again, same id. `stop()` stops making new messages, waits until every started one
    was acknowledged, and returns the figures."""

    def __init__(self, recipient: str, sessions: int, prefix: str, size: int):
        self.recipient = recipient
        self.sessions = sessions
        self.prefix = prefix
        self.size = size
        self.figures = LoadFigures()
        self.lock = threading.Lock()
        self._numbers = iter(range(10**9))
        self._making = threading.Event()
        self._making.set()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._abandoned = False

    def start(self):
        for index in range(self.sessions):
            thread = threading.Thread(target=self._run, args=(index,), name=f"loader-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wait_acknowledged(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` messages in all were acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.figures.acknowledged) < count:
            assert not self._errors, f"the loader itself failed: {self._errors[0]!r}"
            assert time.monotonic() < deadline, (
                f"{len(self.figures.acknowledged)} of {count} acknowledged after {timeout} s; "
                f"failures: {dict(self.figures.failures)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 120.0) -> LoadFigures:
        self._making.clear()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        assert not stuck, f"loader sessions still sending after {timeout} s: {stuck}"
        assert not self._errors, f"the loader itself failed: {self._errors[0]!r}"
        return self.figures

    def abandon(self) -> None:
        """For clean-ups: every session ends at its next try, acknowledged or not; no waiting."""
        self._abandoned = True
        self._making.clear()

    def _run(self, index: int) -> None:
        try:
            current: str | None = None
            while not self._abandoned:
                if current is None:
                    if not self._making.is_set():
                        return
                    current = f"{self.prefix}{index}-{next(self._numbers)}"
                with self.lock:
                    self.figures.attempts += 1
                if self._send_one(current):
                    current = None
        except BaseException as error:  # recorded; stop() fails the test with it
            self._errors.append(error)

    def _send_one(self, message_id: str) -> bool:
        raise NotImplementedError


class SmtpLoader(Loader):
    """SMTP clients; acknowledged = 250 after DATA. A transaction cut short (refused connection,
    reset, 4xx) is tried again."""

    def __init__(self, port: int, recipient: str, sessions: int = 4, prefix: str = "m", size: int = 300,
                 timeout: float = 30.0):
        super().__init__(recipient, sessions, prefix, size)
        self.port = port
        self.timeout = timeout
        self.in_flight: set[str] = set()     # end of data sent, reply not yet read

    def in_flight_count(self) -> int:
        return len(self.in_flight)

    def _send_one(self, message_id: str) -> bool:
        """One connection, one transaction. True once it got a 250."""
        stage = "connect"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
                reader = sock.makefile("rb")
                stage = "greeting"
                self._expect(reader, b"220")
                stage = "session"                # greeted: from here on the server knows this session
                sock.sendall(b"EHLO loader.client.example\r\n")
                self._expect(reader, b"250")
                sock.sendall(f"MAIL FROM:<load@client.example>\r\nRCPT TO:<{self.recipient}>\r\nDATA\r\n".encode())
                self._expect(reader, b"250")
                self._expect(reader, b"250")
                self._expect(reader, b"354")
                content = message_bytes(message_id, self.recipient, self.size)
                sock.sendall(content)
                stage = "end of data"
                with self.lock:                  # the kill takes this lock: in_flight is exact
                    self.in_flight.add(message_id)
                    sock.sendall(b".\r\n")      # the content ends with CRLF
                try:
                    reply = self._read_reply(reader)
                finally:
                    with self.lock:
                        self.in_flight.discard(message_id)
                with self.lock:
                    self.figures.replies[reply[:3].decode(errors="replace")] += 1
                if not reply.startswith(b"250"):
                    with self.lock:
                        self.figures.failures[f"{stage}: {reply[:100].decode(errors='replace')}"] += 1
                    return False
                queue_id = reply.rsplit(b" ", 1)[-1].decode(errors="replace")
                with self.lock:
                    assert message_id not in self.figures.acknowledged
                    self.figures.acknowledged[message_id] = queue_id
                try:
                    sock.sendall(b"QUIT\r\n")
                except OSError:
                    pass
                return True
        except _Refused as refusal:
            with self.lock:
                self.figures.failures[f"{stage}: {refusal.reply[:100].decode(errors='replace')}"] += 1
            time.sleep(0.05)
            return False
        except (OSError, EOFError) as error:
            with self.lock:
                self.figures.failures[f"{stage}: {type(error).__name__}"] += 1
            time.sleep(0.05)       # not proof of anything: a pause before the client tries again
            return False

    def _expect(self, reader, code: bytes) -> bytes:
        reply = self._read_reply(reader)
        if not reply.startswith(code):
            raise _Refused(reply)
        return reply

    @staticmethod
    def _read_reply(reader) -> bytes:
        lines = []
        while True:
            line = reader.readline()
            if not line:
                raise EOFError("connection closed before a reply")
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)


class _Refused(Exception):
    def __init__(self, reply: bytes):
        super().__init__(reply)
        self.reply = reply


# --- the sendmail loader

class SendmailLoader(Loader):
    """mailferry-sendmail run in a loop by each thread; acknowledged = exit status 0."""

    def __init__(self, daemon: MailferryDaemon, recipient: str, sessions: int = 2, size: int = 300):
        super().__init__(recipient, sessions, "s", size)
        self.daemon = daemon

    def _send_one(self, message_id: str) -> bool:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "mailferry-sendmail"), "-C", str(self.daemon.config_dir),
             "-f", "load@client.example", self.recipient],
            input=message_bytes(message_id, self.recipient, self.size), capture_output=True,
            env=self.daemon.env, timeout=60)
        with self.lock:
            if done.returncode == 0:
                self.figures.acknowledged[message_id] = ""
                return True
            self.figures.failures[f"exit {done.returncode}: {done.stderr[-80:]!r}"] += 1
            return False
