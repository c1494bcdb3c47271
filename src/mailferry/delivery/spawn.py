"""Running part of a delivery with someone else's rights: what the agents ask of the spawner.

The daemon runs as mail_owner. But a pipe(8) command with `user=`, a
local(8) mailbox, a `.forward` or alias `|command` or `/file`, and a
virtual(8) mailbox must be written with the recipient's rights, as Postfix
does. master/spawner.py keeps root for exactly this and nothing else: it
runs one request as one named non-root account and answers. These are the
requests, the answers and the Protocol the delivery agents take; an agent
never forks or changes its own rights.

The requests carry no code and no file descriptors: who (an account, or
numeric ids from virtual_uid_maps/virtual_gid_maps), what (an argv, or a
mailbox path) and the input. The spawner refuses root and unknown accounts
itself; it does not trust the daemon to have checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MAILDIR = "maildir"
MBOX = "mbox"


@dataclass(frozen=True, slots=True)
class RunAs:
    """Whose rights. Either `user`, an account name the spawner looks up in
    passwd (its uid, its primary gid unless `group` names another, and its
    supplementary groups), or numeric `uid` and `gid` (virtual(8)), used as
    given with no supplementary groups."""

    user: str = ""
    group: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """Run `argv` (no shell: local(8) passes `/bin/sh -c command` itself) with
    `stdin` as its standard input, in `cwd`, with exactly `env` as its
    environment. After `time_limit` seconds the whole process group is killed."""

    run_as: RunAs
    argv: tuple[str, ...]
    stdin: bytes
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "/"
    time_limit: float = 1000.0
    output_limit: int = 4096      # keep the first this many bytes of stdout and stderr together


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_status: int | None       # the command's exit code; None when it died by a signal or never ran
    signal: int | None = None     # the signal that ended it (SIGKILL after a time-out)
    timed_out: bool = False
    output: bytes = b""           # stdout and stderr as written, cut at output_limit
    error: str = ""               # why it never ran: account refused or unknown, exec failed (with errno text)
    temporary: bool = True        # for `error`: may a later try succeed? (an unknown account: no)


@dataclass(frozen=True, slots=True)
class MailboxRequest:
    """Store one message in a mailbox. `path` ending in "/" is a Maildir
    (created if missing, with tmp/ new/ cur/; the message is written into
    tmp/, fsynced, then linked into new/), anything else an mbox file
    (locked per `locks`, appended with a `From ` line made from `sender` and
    `arrival_time`, `>From ` quoting, and a blank line after; fsynced).
    `content` is the message with LF line endings, the agent's own headers
    (Delivered-To:, Return-Path:, X-Original-To:) already in front."""

    run_as: RunAs
    path: str
    content: bytes
    sender: str = ""
    arrival_time: float = 0.0
    size_limit: int = 0           # mailbox_size_limit/virtual_mailbox_limit for an mbox file's size after; 0 = none
    locks: tuple[str, ...] = ("fcntl", "dotlock")   # mailbox_delivery_lock: flock, fcntl, dotlock
    lock_attempts: int = 20       # deliver_lock_attempts: tries before a locked mbox defers
    lock_delay: float = 1.0       # deliver_lock_delay: seconds between tries
    stale_lock_time: float = 500.0   # stale_lock_time: an older dot-lock file is removed
    # A Maildir file name the agent makes from the queue ID and the recipient: a retry of the
    # same delivery (after a crash before the queue recorded it) finds it in new/ and stores
    # nothing twice. "" lets the writer choose a fresh name.
    maildir_name: str = ""


@dataclass(frozen=True, slots=True)
class MailboxResult:
    stored: bool
    file: str = ""                # the file written (the Maildir file's name in new/, or the mbox)
    error: str = ""               # why not, e.g. "cannot update mailbox /var/mail/u: Permission denied"
    errno: int = 0                # the OS error, for the agent to decide defer or bounce
    too_big: bool = False         # the size limit would be exceeded: Postfix bounces this (5.2.2)


class Spawner(Protocol):
    """master.spawner.SpawnerClient in the daemon; the same client in tests."""

    async def run_command(self, request: CommandRequest) -> CommandResult: ...

    async def store_in_mailbox(self, request: MailboxRequest) -> MailboxResult: ...
