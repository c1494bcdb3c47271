"""Maildir and mbox writers (delivery/mailbox.py), called in this process.

In the daemon they run in a spawner child as the user; here, as whoever runs
the tests: what is checked is the file format, atomicity and locking.
"""

import errno
import os
import re
import stat
import subprocess
import sys
import time

import pytest

from mailferry.delivery import mailbox
from mailferry.delivery.spawn import MailboxRequest, RunAs

ME = RunAs(uid=os.getuid(), gid=os.getgid())
MESSAGE = b"Return-Path: <a@example.test>\nSubject: hi\n\nFrom the start\nFrom: not a header\n>From kept\nend\n"


def maildir_request(path, content=MESSAGE, **options):
    return MailboxRequest(ME, f"{path}/", content, **options)


def mbox_request(path, content=MESSAGE, **options):
    return MailboxRequest(ME, str(path), content, **options)


# ---- Maildir

def test_a_maildir_is_made_with_its_three_directories_and_the_message_lands_in_new(tmp_path):
    result = mailbox.store(maildir_request(tmp_path / "Maildir"))
    assert result.stored, result.error
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE((tmp_path / "Maildir" / sub).stat().st_mode) == 0o700
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    assert os.listdir(tmp_path / "Maildir" / "new") == [result.file]
    assert (tmp_path / "Maildir" / "new" / result.file).read_bytes() == MESSAGE
    assert re.fullmatch(r"\d+\.V[0-9a-f]+I[0-9a-f]+M\d+\.[^/:]+", result.file)


def test_two_deliveries_make_two_files(tmp_path):
    names = {mailbox.store(maildir_request(tmp_path / "Maildir")).file for _ in range(3)}
    assert len(names) == 3
    assert set(os.listdir(tmp_path / "Maildir" / "new")) == names


def test_nothing_is_in_new_until_the_message_is_complete_and_synced(tmp_path, monkeypatch):
    seen = []
    real_link, real_fsync = os.link, os.fsync
    synced = []

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def link(source, target):
        seen.append((os.listdir(tmp_path / "Maildir" / "new"), open(source, "rb").read(), list(synced)))
        real_link(source, target)
    monkeypatch.setattr(mailbox.os, "link", link)
    monkeypatch.setattr(mailbox.os, "fsync", fsync)
    result = mailbox.store(maildir_request(tmp_path / "Maildir"))
    [(new_before, content, synced_before)] = seen
    assert new_before == [] and content == MESSAGE
    assert any("/tmp/" in path for path in synced_before), "the file was not fsynced before the link"
    assert synced[-1] == str(tmp_path / "Maildir" / "new"), "new/ was not fsynced after the link"
    assert result.stored


def test_a_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(fd, data):
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(mailbox, "_write_all", full)
    result = mailbox.store(maildir_request(tmp_path / "Maildir"))
    assert not result.stored and result.errno == errno.ENOSPC
    assert result.error.startswith(f"create maildir file {tmp_path}/Maildir/tmp/")
    assert result.error.endswith(": No space left on device")
    assert os.listdir(tmp_path / "Maildir" / "tmp") == os.listdir(tmp_path / "Maildir" / "new") == []


def test_a_message_over_the_limit_is_too_big_for_a_maildir(tmp_path):
    result = mailbox.store(maildir_request(tmp_path / "Maildir", size_limit=len(MESSAGE) - 1))
    assert (result.stored, result.too_big, result.errno) == (False, True, errno.EFBIG)
    assert mailbox.store(maildir_request(tmp_path / "Maildir", size_limit=len(MESSAGE))).stored


def test_a_maildir_path_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "Maildir").write_text("not a directory")
    result = mailbox.store(maildir_request(tmp_path / "Maildir"))
    assert not result.stored and result.errno == errno.ENOTDIR
    assert result.error.startswith(f"create maildir {tmp_path}/Maildir/: ")


# ---- mbox

def test_an_mbox_entry_has_a_from_line_quoting_and_a_blank_line_after(tmp_path):
    path = tmp_path / "mbox"
    arrival = time.mktime((2026, 12, 6, 1, 2, 3, 0, 0, -1))
    assert mailbox.store(mbox_request(path, sender="a@example.test", arrival_time=arrival)).stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == (b"From a@example.test  Sun Dec  6 01:02:03 2026\n"
                                 b"Return-Path: <a@example.test>\nSubject: hi\n\n>From the start\n"
                                 b"From: not a header\n>From kept\nend\n\n")


def test_the_null_sender_is_mailer_daemon_and_entries_are_appended(tmp_path):
    path = tmp_path / "mbox"
    path.write_bytes(b"old\n\n")
    assert mailbox.store(mbox_request(path, b"one\n")).stored
    assert mailbox.store(mbox_request(path, b"two without newline")).stored
    entries = path.read_bytes().split(b"\n")
    assert entries[0:2] == [b"old", b""]
    assert re.fullmatch(rb"From MAILER-DAEMON  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", entries[2])
    assert entries[3:5] == [b"one", b""]
    assert entries[6:] == [b"two without newline", b"", b""]


def test_a_full_mbox_refuses_the_message_and_stays_as_it_was(tmp_path):
    path = tmp_path / "mbox"
    path.write_bytes(b"x" * 100)
    result = mailbox.store(mbox_request(path, b"y\n", size_limit=120))
    assert (result.stored, result.too_big, result.errno) == (False, True, errno.EFBIG)
    assert result.error == (f"cannot update mailbox {path} for user {mailbox._whoami()}. "
                            "error writing message: File too large")
    assert path.read_bytes() == b"x" * 100


def test_a_failed_write_is_cut_back_to_the_old_size(tmp_path, monkeypatch):
    path = tmp_path / "mbox"
    path.write_bytes(b"kept\n\n")

    def full(fd, data):
        os.write(fd, data[:7])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(mailbox, "_write_all", full)
    result = mailbox.store(mbox_request(path))
    assert not result.stored and result.errno == errno.ENOSPC
    assert result.error.endswith(". error writing message: No space left on device")
    assert path.read_bytes() == b"kept\n\n"
    assert not (tmp_path / "mbox.lock").exists()


def test_a_symlink_is_not_followed(tmp_path):
    (tmp_path / "target").write_bytes(b"")
    (tmp_path / "mbox").symlink_to(tmp_path / "target")
    result = mailbox.store(mbox_request(tmp_path / "mbox"))
    assert not result.stored and result.errno == errno.ELOOP
    assert (tmp_path / "target").read_bytes() == b""


class LockHolder:
    """Another process holding a lock on the mbox until told to let go."""

    def __init__(self, path, kind):
        lock = {"fcntl": "fcntl.lockf(f, fcntl.LOCK_EX)", "flock": "fcntl.flock(f, fcntl.LOCK_EX)"}[kind]
        script = (f"import fcntl, sys\nf = open({str(path)!r}, 'a')\n{lock}\nprint('held', flush=True)\n"
                  "sys.stdin.readline()\nf.close()\nprint('released', flush=True)\nsys.stdin.readline()\n")
        self.process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline() == "held\n"

    def release(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "released\n"

    def close(self):
        self.process.kill()
        self.process.wait()


@pytest.mark.parametrize("kind", ["fcntl", "flock"])
def test_a_locked_mbox_is_tried_again_then_deferred(tmp_path, kind):
    path = tmp_path / "mbox"
    holder = LockHolder(path, kind)
    try:
        result = mailbox.store(mbox_request(path, locks=(kind,), lock_attempts=3, lock_delay=0.01))
    finally:
        holder.close()
    assert (result.stored, result.errno) == (False, errno.EAGAIN)
    assert result.error.endswith("unable to lock for exclusive access: Resource temporarily unavailable")
    assert path.read_bytes() == b""


def test_a_lock_let_go_between_attempts_lets_the_delivery_through(tmp_path, monkeypatch):
    path = tmp_path / "mbox"
    holder = LockHolder(path, "fcntl")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 2:
            holder.release()
    monkeypatch.setattr(mailbox.time, "sleep", sleep)
    try:
        result = mailbox.store(mbox_request(path, lock_attempts=5, lock_delay=0.25))
    finally:
        holder.close()
    assert result.stored, result.error
    assert waits == [0.25, 0.25]
    assert path.read_bytes().startswith(b"From MAILER-DAEMON")


def test_a_dot_lock_is_respected_removed_after_and_broken_when_stale(tmp_path):
    path = tmp_path / "mbox"
    lock = tmp_path / "mbox.lock"
    lock.write_bytes(b"")
    result = mailbox.store(mbox_request(path, lock_attempts=2, lock_delay=0.01))
    assert (result.stored, result.errno) == (False, errno.EAGAIN)
    assert lock.exists()
    stale = time.time() - 600
    os.utime(lock, (stale, stale))
    assert mailbox.store(mbox_request(path, lock_attempts=2, lock_delay=0.01, stale_lock_time=500)).stored
    assert not lock.exists()
