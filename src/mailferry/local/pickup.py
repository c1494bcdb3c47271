"""pickup: maildrop files become NewMessages, as Postfix's pickup(8) feeds cleanup.

These are plain synchronous functions; the daemon's pickup service
(local/pickup_service.py) runs them off its event loop (a worker thread) on
a `pickup` control command and on pickup's timer:

    for path in scan(queue_directory):
        try:
            submission = pick_up(path)
        except UnsupportedMaildropVersion:   # a newer mailferry wrote it: leave it
            log a warning; continue
        except MaildropError as problem:     # damaged, or not a mail file
            moved = quarantine(queue_directory, path)
            log a warning naming `moved` and `problem`; continue
        log `log_text(submission)` under a new queue ID
        cleanup.enqueue(submission.message, queue_id, submission.full_name)
                                             # durable once this returns
        remove(path)                         # only after the commit

A crash between the commit and `remove` queues the message twice on restart:
duplicated, never lost. Postfix deletes ill-formatted maildrop files; we
move them to `queue_directory/corrupt/` instead. Not `maildrop/corrupt/`:
any local user may create names in the world-writable maildrop directory,
so a directory there could be theirs, or a symlink to anywhere.

What pickup trusts: the file's owner is the submitting uid (the uid in the
envelope is only what sendmail claimed). Everything else in the file is
the submitter's own choice, as with Postfix: sender, recipients, content.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from dataclasses import dataclass

from mailferry.local.maildrop import (TEMPORARY_PREFIX, CorruptMaildropFile, MaildropEntry,
                                      maildrop_directory, read_maildrop)
from mailferry.local.recipient_headers import extract_recipients, remove_hidden_recipients
from mailferry.message import ClientInfo, NewMessage, Recipient

CORRUPT_DIRECTORY = "corrupt"
ABANDONED_TEMPORARY_AGE = 24 * 3600  # sendmail died mid-write this long ago


@dataclass(slots=True)
class LocalSubmission:
    path: str              # the maildrop file: remove() it once the queue has committed
    message: NewMessage    # client.uid says who submitted it
    full_name: str         # for the From: header cleanup adds when the message has none


def scan(queue_directory: str) -> list[str]:
    """Finished maildrop files, oldest first (temporary names skipped)."""
    found = []
    try:
        entries = list(os.scandir(maildrop_directory(queue_directory)))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(TEMPORARY_PREFIX):
            continue
        try:
            found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, entry.path))
        except FileNotFoundError:
            continue  # picked up meanwhile
    return [path for _, _, path in sorted(found)]


def pick_up(path: str) -> LocalSubmission:
    """Read and convert one maildrop file; MaildropError when it cannot be used."""
    entry = read_maildrop(path)
    return LocalSubmission(path, to_new_message(entry), entry.envelope.full_name or "")


def to_new_message(entry: MaildropEntry) -> NewMessage:
    envelope = entry.envelope
    uid = entry.owner_uid
    content = to_crlf(entry.content)
    addresses = list(envelope.recipients)
    if envelope.extract_recipients:
        addresses += extract_recipients(content)
        content = remove_hidden_recipients(content)
    if not addresses:
        raise CorruptMaildropFile(f"{entry.path}: no recipients")
    sender = envelope.sender if envelope.sender is not None else login_name(uid, entry.path)
    return NewMessage(
        sender=sender,
        recipients=[Recipient(address, notify=envelope.dsn_notify) for address in addresses],
        content=content,
        client=ClientInfo(name="localhost", address="127.0.0.1", protocol="local", uid=uid),
        origin="local",
        dsn_ret=envelope.dsn_ret,
        dsn_envid=envelope.dsn_envid,
        body_type=envelope.body_type,
        arrival_time=envelope.arrival_time,
    )


_BARE_LF = re.compile(rb"(?<!\r)\n")


def to_crlf(content: bytes) -> bytes:
    """LF → CRLF (CRLF kept), and a last line without an end gets one, as a queue file has lines."""
    content = _BARE_LF.sub(b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def login_name(uid: int, path: str = "") -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise CorruptMaildropFile(f"{path}: no sender given and no login name for uid {uid}") from None


def log_text(submission: LocalSubmission) -> str:
    """What Postfix's pickup logs after the queue ID: `uid=0 from=<root>`."""
    return f"uid={submission.message.client.uid} from=<{submission.message.sender}>"


def remove(path: str) -> None:
    """Forget a maildrop file whose message the queue has committed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def quarantine(queue_directory: str, path: str) -> str:
    """Move an unusable maildrop file to queue_directory/corrupt/; return its new path."""
    directory = os.path.join(queue_directory, CORRUPT_DIRECTORY)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target = os.path.join(directory, os.path.basename(path))
    suffix = 0
    while os.path.lexists(target):
        suffix += 1
        target = os.path.join(directory, f"{os.path.basename(path)}.{suffix}")
    os.rename(path, target)
    return target


def remove_abandoned_temporary_files(queue_directory: str, now: float | None = None,
                                     max_age: float = ABANDONED_TEMPORARY_AGE) -> list[str]:
    """Delete temporary files a crashed sendmail left (they were never accepted); return them."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(maildrop_directory(queue_directory)))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMPORARY_PREFIX):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                os.unlink(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:
            continue
    return removed
