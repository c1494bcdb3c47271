"""Durability, proven by order (issue 14, item 2): what strace sees the real daemon do.

The running daemon (start-fg, its smtpd workers, the spawner, and, -f, every thread and child)
is traced with `strace -f -tt -T -yy`, and 20 messages are sent over 4 concurrent sessions (so
that group commit makes some share a transaction) to a local(8) Maildir. Then, for each message:

- intake: the queue's writer thread wrote the WAL frames holding its queue ID (pwrite64 on
  queue.db-wal), then an fsync of queue.db-wal by that same thread RETURNED, and only after that
  return did any thread write `250 2.0.0 Ok: queued as ID` to the client's TCP socket
  (queue/sqlite.py: WAL, synchronous=FULL; queue/commit.py resolves the session's future after
  the COMMIT returns);
- Maildir delivery: in the spawner's child, the message file in Maildir/tmp was fsynced, linked
  into Maildir/new and that directory fsynced, all returned, before the child sent the daemon its
  answer naming the file (delivery/mailbox.py, master/spawner.py). The daemon learns that the
  delivery happened only from that answer, so the queue cannot record the recipient as done (or
  forget the message) before; the test also sees a WAL fsync after each answer, and the queue
  empty at the end.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from mailferry.queue.sqlite import CONTENT_FILE_MIN_BYTES
from tests.integration.conftest import base_main_cf, smtpd_master_cf
from tests.integration.test_local_delivery import LOCAL_SERVICE, local_accounts  # noqa: F401 (a fixture)
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.processes import descendants
from tests.reliability.crashload import message_bytes, spool_maildir_settings, stop_quietly, whole_ids_in
from tests.reliability.straces import Event, Tracer, parse

MESSAGES = 20
SESSIONS = 4
LARGE = CONTENT_FILE_MIN_BYTES + 4096   # the first message of each session: its content gets a file


@pytest.fixture
def traced_daemon(local_accounts):  # noqa: F811 (the fixture imported above)
    assert "mfuser1" in local_accounts
    directory = peer_tempdir("mailferry-strace-")
    spool = directory / "spool"
    spool.mkdir(mode=0o755)
    maildir = spool / "mfuser1"
    port = free_port()
    daemon = MailferryDaemon(directory, base_main_cf(directory, local_transport="local:$myhostname",
                                                     **spool_maildir_settings(spool)),
                             smtpd_master_cf(port, extra_services=LOCAL_SERVICE), port)
    tracer = None
    try:
        daemon.start()
        daemon.wait_for_log("daemon started -- version")
        tracer = Tracer(directory / "strace.out", descendants(daemon.process.pid))
        tracer.wait_attached()
        yield daemon, tracer, maildir
    finally:
        if tracer is not None:
            tracer.stop()
        stop_quietly(daemon)
        shutil.rmtree(directory, ignore_errors=True)


def send_concurrently(port: int, recipient: str) -> dict[str, str]:
    """MESSAGES messages over SESSIONS parallel sessions, the first of each session LARGE;
    reliability id -> queue ID from the 250."""
    acknowledged: dict[str, str] = {}
    errors: list[BaseException] = []

    def session(index: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                reader = sock.makefile("rb")

                def reply() -> bytes:
                    line = reader.readline()
                    while line[3:4] == b"-":
                        line = reader.readline()
                    return line

                assert reply().startswith(b"220")
                sock.sendall(b"EHLO strace.client.example\r\n")
                assert reply().startswith(b"250")
                for number in range(index, MESSAGES, SESSIONS):
                    message_id = f"t{number}"
                    sock.sendall(f"MAIL FROM:<s@client.example>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
                    assert [reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
                    size = LARGE if number < SESSIONS else 300
                    sock.sendall(message_bytes(message_id, recipient, size) + b".\r\n")
                    answer = reply()
                    assert answer.startswith(b"250 2.0.0 Ok: queued as "), answer
                    acknowledged[message_id] = answer.split()[-1].decode()
                sock.sendall(b"QUIT\r\n")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=session, args=(index,)) for index in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    assert len(acknowledged) == MESSAGES
    return acknowledged


def wal_path(event: Event) -> bool:
    return event.path.endswith("/queue.db-wal")


def prove_fsync_before_250(events: list[Event], queue_id: str) -> tuple[Event, Event, Event]:
    """The 250 for `queue_id`, the first WAL write holding that ID (its commit's; later commits
    rewrite the same pages, old rows and all) and the first fsync of the WAL after it by the same
    thread (that commit's fsync). Fails unless that fsync returned before the 250 was written."""
    replies = [e for e in events if e.name in ("write", "sendto", "writev", "sendmsg") and e.path.startswith("TCP")
               and f"queued as {queue_id}" in e.text]
    assert len(replies) == 1, f"{queue_id}: {len(replies)} writes of its 250 seen by strace"
    [reply] = replies
    frames = [e for e in events if e.name == "pwrite64" and wal_path(e) and queue_id in e.text]
    assert frames, f"{queue_id}: no WAL write holding the queue ID"
    frame = frames[0]
    syncs = [e for e in events if e.name in ("fsync", "fdatasync") and wal_path(e) and e.tid == frame.tid
             and frame.index < e.index and frame.returned <= e.entered]
    assert syncs and syncs[0].returned <= reply.entered, (
        f"{queue_id}: the 250 was written at {reply.entered:.6f}, its commit's fsync of the WAL "
        f"{'returned at %.6f' % syncs[0].returned if syncs else 'never happened'} (RFC 5321 6.1)")
    return reply, frame, syncs[0]


def prove_maildir_file_synced_before_answer(events: list[Event], maildir: str, name: str) -> Event:
    answers = [e for e in events if e.name in ("sendto", "write", "sendmsg") and e.path.startswith("UNIX")
               and name in e.text and "result" in e.text]
    assert len(answers) == 1, f"{name}: {len(answers)} spawner answers name it"
    [answer] = answers
    child = [e for e in events if e.tid == answer.tid and e.index < answer.index]
    files = {e.path for e in child if e.name == "write" and e.path.startswith(f"{maildir}/tmp/")}
    assert len(files) == 1, f"{name}: the spawner child wrote {files}"
    [tmp] = files
    file_syncs = [e for e in child if e.name in ("fsync", "fdatasync") and e.path == tmp]
    last_write = max(e.returned for e in child if e.name == "write" and e.path == tmp)
    assert any(last_write <= e.entered and e.returned <= answer.entered for e in file_syncs), (
        f"{name}: its file {tmp} was not fsynced before the answer that says it is delivered")
    links = [e for e in child if e.name in ("link", "linkat", "rename", "renameat", "renameat2")
             and f"{maildir}/new/{name}" in e.text]
    assert links, f"{name}: no link into Maildir/new seen"
    dir_syncs = [e for e in child if e.name in ("fsync", "fdatasync") and e.path == f"{maildir}/new"
                 and e.entered >= links[-1].returned and e.returned <= answer.entered]
    assert dir_syncs, f"{name}: Maildir/new was not fsynced after the link and before the answer"
    return answer


def test_each_250_follows_the_fsync_that_made_its_message_durable_and_maildir_files_are_synced_first(
        traced_daemon):
    daemon, tracer, maildir = traced_daemon
    acknowledged = send_concurrently(daemon.port, "mfuser1@example.test")
    new = maildir / "new"
    deadline = time.monotonic() + 120
    while not (new.is_dir() and len(list(new.iterdir())) >= MESSAGES and daemon.queue_summary()[0] == 0):
        assert time.monotonic() < deadline, f"not delivered: {daemon.log_tail(20)}"
        time.sleep(0.1)
    daemon.wait_for_log(": removed", count=MESSAGES)
    events = tracer.stop()
    assert events, "strace recorded nothing"

    commits_shared = 0
    syncs_used: dict[int, int] = {}
    content_directory = str(daemon.queue_directory / "content")
    for message_id, queue_id in acknowledged.items():
        reply, frame, sync = prove_fsync_before_250(events, queue_id)
        syncs_used[sync.index] = syncs_used.get(sync.index, 0) + 1
        if int(message_id[1:]) < SESSIONS:
            prove_content_file_synced_before_its_row(events, content_directory, queue_id, frame)
    commits_shared = sum(1 for count in syncs_used.values() if count > 1)

    delivered = {}
    for path in new.iterdir():
        [found] = whole_ids_in(path.read_bytes())
        delivered[found] = path.name
    assert set(delivered) == set(acknowledged)
    wal_syncs = [e for e in events if e.name in ("fsync", "fdatasync") and wal_path(e)]
    for message_id, name in delivered.items():
        answer = prove_maildir_file_synced_before_answer(events, str(maildir), name)
        # ... and the queue recorded the outcome only after that answer: a WAL fsync follows it.
        assert any(e.entered >= answer.returned for e in wal_syncs), f"{name}: no queue commit after delivery"
    print(f"strace figures: {MESSAGES} messages, {len(syncs_used)} WAL fsyncs made their 250s "
          f"({commits_shared} shared by several messages: group commit), {len(delivered)} Maildir files "
          f"fsynced before the spawner answered")


def prove_content_file_synced_before_its_row(events: list[Event], directory: str, queue_id: str,
                                             frame: Event) -> None:
    """A large message's content file (queue/sqlite.py stage_content), named by its queue ID, was
    written and fsynced, and then its directory fsynced, all returned before the WAL write that holds
    the row naming it: the row can never name a file a crash could lose."""
    path = f"{directory}/{queue_id}"
    writes = [e for e in events if e.name in ("write", "pwrite64", "writev") and e.path == path]
    assert writes, f"{queue_id}: no write of its content file {path}"
    file_syncs = [e for e in events if e.name in ("fsync", "fdatasync") and e.path == path
                  and e.entered >= max(w.returned for w in writes) and e.returned <= frame.entered]
    assert file_syncs, f"{queue_id}: {path} was not fsynced after its last write and before its row's WAL write"
    directory_syncs = [e for e in events if e.name in ("fsync", "fdatasync") and e.path == directory
                       and e.entered >= file_syncs[0].returned and e.returned <= frame.entered]
    assert directory_syncs, f"{queue_id}: {directory} was not fsynced between its file's fsync and its row"


def synthetic_trace(fsync_returns: str) -> str:
    return ("12 04:00:00.000050 pwrite64(5</q/queue.db-wal>, \"..AB..\", 4096, 0) = 4096 <0.000010>\n"
            "12 04:00:00.000100 fsync(5</q/queue.db-wal> <unfinished ...>\n"
            "13 04:00:00.000200 write(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "
            "\"250 2.0.0 Ok: queued as AB\\r\\n\", 31) = 31 <0.000010>\n"
            f"12 04:00:00.000300 <... fsync resumed>) = 0 <{fsync_returns}>\n")


def test_the_check_refuses_a_250_written_before_the_fsync_returned():
    """The proof can fail: a trace whose 250 went out while the fsync was still running."""
    events = parse(synthetic_trace("0.000150"))
    fsync = next(e for e in events if e.name == "fsync")
    assert (fsync.tid, fsync.path, fsync.result) == (12, "/q/queue.db-wal", "0")
    assert fsync.returned == pytest.approx(4 * 3600 + 0.00025)   # entry + duration, joined across the lines
    with pytest.raises(AssertionError, match="its commit.s fsync of the WAL returned"):
        prove_fsync_before_250(events, "AB")
    # the same trace with an fsync that returned before the write passes
    prove_fsync_before_250(parse(synthetic_trace("0.000050")), "AB")
