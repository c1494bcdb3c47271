"""Writing one message into a Maildir or an mbox file, as the mailbox's owner.

These writers run in a child of the privileged spawner (master/spawner.py)
after it has become the recipient: every file they create is the user's,
and a path the user may not write fails here as it would for the user.
Nothing in this module changes identity or trusts the path to be safe for
root.

Maildir (local(8)'s and virtual(8)'s `Maildir/`): the message is written
into tmp/ under a name no other delivery can choose, fsynced, linked into
new/ under a name that carries its device and inode, and the directory is
fsynced; a reader sees either nothing or the whole message, and once the
queue is told "delivered" a crash cannot take it back.

mbox: locked as `mailbox_delivery_lock` says (fcntl, flock, dotlock),
retried `deliver_lock_attempts` times `deliver_lock_delay` apart, then a
temporary error; a `From ` line, `>From ` quoting and a blank line after;
fsynced. A write that fails half way is cut back to the old size, as
Postfix does, so the mailbox is never left with half a message.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import pwd
import socket
import stat
import time

from mailferry.delivery.spawn import MailboxRequest, MailboxResult

MAILER_DAEMON = "MAILER-DAEMON"
_unique = itertools.count()


def store(request: MailboxRequest) -> MailboxResult:
    """Store `request.content` in the Maildir or mbox `request.path`."""
    if request.path.endswith("/"):
        return store_in_maildir(request)
    return store_in_mbox(request)


# ---- Maildir

def store_in_maildir(request: MailboxRequest) -> MailboxResult:
    directory = request.path.rstrip("/") or "/"
    if request.size_limit and len(request.content) > request.size_limit:
        return MailboxResult(False, error=f"cannot update maildir {request.path} for user {_whoami()}. "
                                          f"error writing message: {os.strerror(errno.EFBIG)}",
                             errno=errno.EFBIG, too_big=True)
    try:
        for sub in ("", "tmp", "new", "cur"):
            _make_directory(os.path.join(directory, sub))
    except OSError as exc:
        return _error(exc, f"create maildir {request.path}")
    now = time.time()
    seconds, micros = int(now), int((now % 1) * 1_000_000)
    host = _maildir_host()
    tmp_path = os.path.join(directory, "tmp", f"{seconds}.M{micros}P{os.getpid()}Q{next(_unique)}.{host}")
    try:
        info = _write_new_file(tmp_path, request.content)
    except OSError as exc:
        return _error(exc, f"create maildir file {tmp_path}")
    name = request.maildir_name or f"{seconds}.V{info.st_dev:x}I{info.st_ino:x}M{micros}.{host}"
    new_path = os.path.join(directory, "new", name)
    try:
        os.link(tmp_path, new_path)
        _fsync_directory(os.path.join(directory, "new"))
    except FileExistsError as exc:
        if not request.maildir_name:
            _unlink_quietly(tmp_path)
            return _error(exc, f"link to {new_path}")
        # The same delivery, tried again after a crash before the queue recorded it: already there.
        _fsync_directory(os.path.join(directory, "new"))
    except OSError as exc:
        _unlink_quietly(tmp_path)
        return _error(exc, f"link to {new_path}")
    _unlink_quietly(tmp_path)
    return MailboxResult(True, file=name)


def _make_directory(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return
    _fsync_directory(os.path.dirname(path.rstrip("/")) or "/")


def _write_new_file(path: str, content: bytes) -> os.stat_result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, content)
        os.fsync(fd)
        return os.fstat(fd)
    except BaseException:
        _unlink_quietly(path)
        raise
    finally:
        os.close(fd)


def _maildir_host() -> str:
    """The host part of a Maildir name, with "/" and ":" escaped as the Maildir spec says."""
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


# ---- mbox

def store_in_mbox(request: MailboxRequest) -> MailboxResult:
    what = f"cannot update mailbox {request.path} for user {_whoami()}."
    entry = mbox_entry(request.content, request.sender, request.arrival_time)
    try:
        fd = os.open(request.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return _error(exc, f"{what} cannot open file")
    dotlock = None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return MailboxResult(False, error=f"{what} file is not a regular file", errno=errno.EISDIR)
        try:
            dotlock = _lock(fd, request)
        except OSError as exc:
            return _error(exc, f"{what} unable to lock for exclusive access")
        return _append(fd, entry, request, what)
    finally:
        if dotlock:
            _unlink_quietly(dotlock)
        os.close(fd)        # releases the fcntl and flock locks


def mbox_entry(content: bytes, sender: str, arrival_time: float) -> bytes:
    """The bytes appended: `From ` line, quoted body, one blank line after."""
    stamp = time.asctime(time.localtime(arrival_time or time.time()))
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    quoted = [b">" + line if line.startswith(b"From ") else line for line in lines]
    head = f"From {sender or MAILER_DAEMON}  {stamp}\n".encode("utf-8", "surrogateescape")
    return head + b"".join(line + b"\n" for line in quoted) + b"\n"


def _append(fd: int, entry: bytes, request: MailboxRequest, what: str) -> MailboxResult:
    old_size = os.lseek(fd, 0, os.SEEK_END)
    if request.size_limit and old_size + len(entry) > request.size_limit:
        return MailboxResult(False, file=request.path, errno=errno.EFBIG, too_big=True,
                             error=f"{what} error writing message: {os.strerror(errno.EFBIG)}")
    try:
        _write_all(fd, entry)
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, old_size)
        except OSError:
            pass
        return _error(exc, f"{what} error writing message")
    return MailboxResult(True, file=request.path)


def _lock(fd: int, request: MailboxRequest) -> str | None:
    """Take every lock `request.locks` names; returns the dot-lock file to remove, if one was made."""
    dotlock = None
    for attempt in range(max(1, request.lock_attempts)):
        try:
            if "fcntl" in request.locks:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if "flock" in request.locks:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if "dotlock" in request.locks and dotlock is None:
                dotlock = _dotlock(request.path, request.stale_lock_time)
            return dotlock
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EEXIST, errno.EWOULDBLOCK):
                raise
            _unlock(fd, request.locks)
            if dotlock:
                _unlink_quietly(dotlock)
                dotlock = None
            if attempt + 1 >= request.lock_attempts:
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)) from None
            time.sleep(request.lock_delay)
    return dotlock


def _unlock(fd: int, locks: tuple[str, ...]) -> None:
    if "fcntl" in locks:
        fcntl.lockf(fd, fcntl.LOCK_UN)
    if "flock" in locks:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _dotlock(path: str, stale_after: float) -> str | None:
    """`path.lock`, made exclusively; one older than `stale_after` seconds is removed first.
    Where the user may not create it (a spool directory without the sticky, group-writable
    setup), the kernel locks alone protect the mailbox, and None says there is no file to remove."""
    lock_path = path + ".lock"
    try:
        age = time.time() - os.stat(lock_path, follow_symlinks=False).st_mtime
        if age > stale_after:
            _unlink_quietly(lock_path)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise
    os.close(fd)
    return lock_path


# ---- shared

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _whoami() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _error(exc: OSError, what: str) -> MailboxResult:
    return MailboxResult(False, error=f"{what}: {exc.strerror or exc}", errno=exc.errno or errno.EIO)
