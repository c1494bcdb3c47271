"""The maildrop file: one locally submitted message, waiting for pickup.

sendmail runs as the submitting user and must work while the daemon is
down, so it talks to nobody: it writes one file into
`queue_directory/maildrop` and at most pokes the daemon afterwards. The
file is written under a temporary name, fsynced, renamed to its final name
and the directory fsynced, so a file under a final name is always
complete; pickup ignores the temporary names (they start with a dot).

Layout, version 1:

    mailferry-maildrop 1\\n
    {"sender": "alice", "recipients": ["bob@example.org"], ...}\\n
    <the message: exactly the bytes sendmail read, LF or CRLF>

The second line is one JSON object:

    sender              str, "" for the null sender <>, or null: the
                        login name of the submitting uid (pickup looks it up)
    recipients          [str], from the command line
    extract_recipients  bool, sendmail -t: pickup adds To/Cc/Bcc (or the
                        Resent- ones) and removes Bcc
    full_name           str or null, sendmail -F, $NAME or the GECOS name
    uid                 int, who ran sendmail (informational: pickup trusts
                        the file's owner, which a user cannot forge)
    arrival_time        float, seconds since the epoch
    content_length      int, bytes after the JSON line: detects truncation
    dsn_notify, dsn_ret, dsn_envid, body_type: sendmail -N, -R, -V, -B, or null

A reader meets a newer version as UnsupportedMaildropVersion (leave the
file alone: a newer mailferry will read it) and anything else that is
wrong as CorruptMaildropFile (pickup moves it aside, never deletes it).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import time
from dataclasses import asdict, dataclass

MAGIC = b"mailferry-maildrop "
VERSION = 1
TEMPORARY_PREFIX = "."
DIRECTORY_MODE = 0o1733  # any user may drop a file; nobody but the owner may list
FILE_MODE = 0o644        # the daemon reads it as mail_owner; other users cannot list the names


class MaildropError(Exception):
    """A maildrop file that pickup cannot turn into a message."""


class CorruptMaildropFile(MaildropError):
    """Damaged or not ours: move it aside and tell the operator."""


class UnsupportedMaildropVersion(MaildropError):
    """Written by a newer mailferry: leave it for that version."""


@dataclass(slots=True)
class MaildropEnvelope:
    sender: str | None
    recipients: list[str]
    uid: int
    arrival_time: float
    extract_recipients: bool = False
    full_name: str | None = None
    dsn_notify: str | None = None
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    body_type: str | None = None


@dataclass(slots=True)
class MaildropEntry:
    path: str
    envelope: MaildropEnvelope
    content: bytes
    owner_uid: int          # the file's owner: who really submitted it
    file_size: int = 0


def maildrop_directory(queue_directory: str) -> str:
    return os.path.join(queue_directory, "maildrop")


def ensure_maildrop_directory(queue_directory: str) -> str:
    """The maildrop directory, made (mode 1733) when missing; the queue directory must exist."""
    directory = maildrop_directory(queue_directory)
    try:
        os.mkdir(directory, DIRECTORY_MODE)
    except FileExistsError:
        return directory
    os.chmod(directory, DIRECTORY_MODE)  # mkdir's mode passed through the umask
    return directory


# ---- writing

def write_maildrop(queue_directory: str, envelope: MaildropEnvelope, message: bytes) -> str:
    """Drop `message` into maildrop; return the final path. Raises OSError: nothing was dropped."""
    directory = maildrop_directory(queue_directory)
    temporary = os.path.join(directory, f"{TEMPORARY_PREFIX}tmp.{secrets.token_hex(8)}")
    try:
        inode = _write_synced(temporary, encode(envelope, message))
        final = _free_final_name(directory, inode)
        os.rename(temporary, final)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    _fsync_directory(directory)
    return final


def final_name(inode: int, now: float) -> str:
    """As Postfix names queue files: 5 hex digits of microseconds, then the inode number in hex.

    No other live file has this inode, so the name is free unless a long-gone file
    with the same inode number was left there within the same microsecond of a
    second; _free_final_name checks even that. The name looks like a queue ID,
    so postqueue -p and postsuper -d ... maildrop can show and name it.
    """
    return f"{int(now * 1_000_000) % 0x100000:05X}{inode:X}"


def _free_final_name(directory: str, inode: int) -> str:
    while True:
        final = os.path.join(directory, final_name(inode, time.time()))
        if not os.path.lexists(final):
            return final
        time.sleep(0.000_01)


def encode(envelope: MaildropEnvelope, message: bytes) -> bytes:
    fields = asdict(envelope)
    fields["content_length"] = len(message)
    # ensure_ascii keeps the line one line and carries undecodable argv bytes (surrogates) intact.
    line = json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return b"%s%d\n%s\n%s" % (MAGIC, VERSION, line, message)


def _write_synced(path: str, data: bytes) -> int:
    """Write `data` to a new file at `path`, on disk when this returns; its inode number."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)  # whatever the submitter's umask, the daemon must read it
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
        return os.fstat(descriptor).st_ino
    finally:
        os.close(descriptor)


def _fsync_directory(directory: str) -> None:
    # An ordinary user cannot open the 1733 directory for reading, so cannot fsync it.
    # The file's data is already on disk; only the rename could be lost in a crash.
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- reading

def read_maildrop(path: str) -> MaildropEntry:
    """The entry at `path`; CorruptMaildropFile or UnsupportedMaildropVersion when it cannot be used."""
    try:
        # O_NOFOLLOW and O_NONBLOCK: a user may drop a symlink or a FIFO where a file belongs.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, a socket
            raise CorruptMaildropFile(f"{path}: not a regular file") from None
        raise
    try:
        status = os.fstat(descriptor)
        _check_file_type(path, status)
        data = _read_all(descriptor)
    finally:
        os.close(descriptor)
    envelope, content = decode(data, path)
    return MaildropEntry(path, envelope, content, status.st_uid, len(data))


def _check_file_type(path: str, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise CorruptMaildropFile(f"{path}: not a regular file")
    if status.st_nlink != 1:
        # A hard link could make us mail out a file its submitter cannot read.
        raise CorruptMaildropFile(f"{path}: has {status.st_nlink} hard links, expected 1")


def _read_all(descriptor: int) -> bytes:
    chunks = []
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def decode(data: bytes, path: str = "maildrop file") -> tuple[MaildropEnvelope, bytes]:
    version_line, _, rest = data.partition(b"\n")
    if not version_line.startswith(MAGIC):
        raise CorruptMaildropFile(f"{path}: not a mailferry maildrop file")
    version = version_line[len(MAGIC):]
    if not version.isdigit():
        raise CorruptMaildropFile(f"{path}: bad version line {version_line[:40]!r}")
    if int(version) != VERSION:
        raise UnsupportedMaildropVersion(f"{path}: maildrop file version {int(version)}; "
                                         f"this mailferry reads version {VERSION}")
    json_line, newline, content = rest.partition(b"\n")
    if not newline:
        raise CorruptMaildropFile(f"{path}: truncated envelope")
    try:
        fields = json.loads(json_line)
    except ValueError as exc:
        raise CorruptMaildropFile(f"{path}: bad envelope: {exc}") from None
    envelope = _envelope_from(fields, path)
    expected = fields.get("content_length")
    if not isinstance(expected, int) or expected != len(content):
        raise CorruptMaildropFile(f"{path}: message is {len(content)} bytes, "
                                  f"the envelope says {expected}")
    return envelope, content


_OPTIONAL_TEXT = ("sender", "full_name", "dsn_notify", "dsn_ret", "dsn_envid", "body_type")


def _envelope_from(fields: object, path: str) -> MaildropEnvelope:
    if not isinstance(fields, dict):
        raise CorruptMaildropFile(f"{path}: bad envelope: not an object")
    recipients = fields.get("recipients")
    if not isinstance(recipients, list) or not all(isinstance(item, str) for item in recipients):
        raise CorruptMaildropFile(f"{path}: bad envelope: recipients must be a list of strings")
    for name in _OPTIONAL_TEXT:
        if not isinstance(fields.get(name), (str, type(None))):
            raise CorruptMaildropFile(f"{path}: bad envelope: {name} must be a string or null")
    uid, arrival, extract = fields.get("uid"), fields.get("arrival_time"), fields.get("extract_recipients")
    if not isinstance(uid, int) or isinstance(uid, bool):
        raise CorruptMaildropFile(f"{path}: bad envelope: uid must be an integer")
    if not isinstance(arrival, (int, float)) or isinstance(arrival, bool):
        raise CorruptMaildropFile(f"{path}: bad envelope: arrival_time must be a number")
    if not isinstance(extract, bool):
        raise CorruptMaildropFile(f"{path}: bad envelope: extract_recipients must be true or false")
    return MaildropEnvelope(
        sender=fields.get("sender"), recipients=list(recipients), uid=uid, arrival_time=float(arrival),
        extract_recipients=extract, full_name=fields.get("full_name"),
        dsn_notify=fields.get("dsn_notify"), dsn_ret=fields.get("dsn_ret"),
        dsn_envid=fields.get("dsn_envid"), body_type=fields.get("body_type"))
