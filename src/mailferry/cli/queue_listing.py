"""What the queue tools see: the queue (and maildrop), and how `postqueue -p` and -j print it.

The tools (mailq, postqueue, postsuper, sendmail -bp) read and change the
queue database directly, whether or not the daemon runs; they never create
it. A queue directory without queue.db belongs to a mail system that never
started: its queue is empty. Files still in maildrop (submitted while the
daemon was down) are listed too, in the "maildrop" queue, as Postfix does.

Listing layouts, checked against Postfix 3.7's own output (tests/unit/local/golden/):

    -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
    93CB220C1BF     268 Wed Nov 25 02:33:56  MAILER-DAEMON
                           (connect to 127.0.0.1[127.0.0.1]:9: Connection refused)
                                             dave@example.net

    -- 0 Kbytes in 1 Request.

- The queue ID carries `*` (active queue) or `!` (hold queue) and is padded
  together with that mark: `%-11s` in the short layout, `%-17s` in the long one.
- The arrival time is asctime() without the year, in local time.
- The null sender shows as MAILER-DAEMON (in -j too, as Postfix 3.7 does).
- Only recipients still to be delivered are listed. A delay reason is printed
  in parentheses, right-aligned to column 78, before the first recipient it
  applies to and again whenever it changes.
- The trailer counts every message and the total size in whole KiB (rounded
  down); an empty queue prints exactly `Mail queue is empty`.

Postfix picks the long layout when enable_long_queue_ids = yes. mailferry
also picks it when an ID is longer than Postfix's short IDs ever are (12),
so that the columns stay aligned.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mailferry.message import ACTIVE, BOUNCED, DEFERRED_QUEUE, HOLD, INCOMING, SENT, QueuedMessage

MAILDROP = "maildrop"
EMPTY = "Mail queue is empty"
SHORT_HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
LONG_HEADER = "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------"
SHORT_ID_MAX = 12
REASON_WIDTH = 78
_MARKS = {ACTIVE: "*", HOLD: "!"}
# The order in which Postfix's showq walks the queues.
_QUEUE_ORDER = {INCOMING: 0, ACTIVE: 1, DEFERRED_QUEUE: 2, HOLD: 3, MAILDROP: 4}


@dataclass(slots=True)
class ListedMessage:
    queue_id: str
    queue_name: str
    size: int
    arrival_time: float
    sender: str
    recipients: list[tuple[str, str]] = field(default_factory=list)  # (address, delay reason or "")


def from_queued(message: QueuedMessage) -> ListedMessage:
    waiting = [(recipient.address, _one_line(recipient.reason)) for recipient in message.recipients
               if recipient.status not in (SENT, BOUNCED)]
    return ListedMessage(message.queue_id, message.queue, message.size, message.arrival_time,
                         message.sender, waiting)


def _one_line(text: str) -> str:
    return " ".join(text.split()) if text else ""


def in_showq_order(messages: Iterable[ListedMessage]) -> list[ListedMessage]:
    """By queue as showq walks them, oldest first within a queue."""
    return sorted(messages, key=lambda m: (_QUEUE_ORDER.get(m.queue_name, 2), m.arrival_time,
                                           m.queue_id))


def wants_long_layout(messages: Sequence[ListedMessage], long_queue_ids: bool) -> bool:
    return long_queue_ids or any(len(message.queue_id) > SHORT_ID_MAX for message in messages)


def format_listing(messages: Sequence[ListedMessage], long_layout: bool = False,
                   clock=time.localtime) -> str:
    """The whole `postqueue -p` output, newline-terminated."""
    if not messages:
        return EMPTY + "\n"
    lines = [LONG_HEADER if long_layout else SHORT_HEADER]
    for message in messages:
        lines += _entry(message, long_layout, clock)
        lines.append("")
    total = sum(message.size for message in messages)
    plural = "" if len(messages) == 1 else "s"
    lines.append(f"-- {total // 1024} Kbytes in {len(messages)} Request{plural}.")
    return "\n".join(lines) + "\n"


def _entry(message: ListedMessage, long_layout: bool, clock) -> list[str]:
    marked = message.queue_id + _MARKS.get(message.queue_name, "")
    stamp = time.asctime(clock(message.arrival_time))
    sender = message.sender or "MAILER-DAEMON"
    if long_layout:
        first = f"{marked:<17} {message.size:>8} {stamp[:19]} {sender}"
        indent = " " * 47
    else:
        first = f"{marked:<11} {message.size:>7} {stamp[:20]} {sender}"
        indent = " " * 41
    lines = [first]
    previous_reason = ""
    for address, reason in message.recipients:
        if reason and reason != previous_reason:
            lines.append(f"({reason})".rjust(REASON_WIDTH))
        previous_reason = reason
        lines.append(indent + address)
    return lines


def format_json(messages: Sequence[ListedMessage]) -> str:
    """`postqueue -j`: one JSON object per line, Postfix 3.1+ members; "" for no messages."""
    return "".join(json.dumps(_json_object(message), ensure_ascii=False) + "\n"
                   for message in messages)


def _json_object(message: ListedMessage) -> dict:
    recipients = []
    for address, reason in message.recipients:
        item = {"address": address}
        if reason:
            item["delay_reason"] = reason
        recipients.append(item)
    return {
        "queue_name": message.queue_name,
        "queue_id": message.queue_id,
        "arrival_time": int(message.arrival_time),
        "message_size": message.size,
        "forced_expire": False,  # mailferry has no forced expiration (postsuper -e/-f) yet
        "sender": message.sender or "MAILER-DAEMON",
        "recipients": recipients,
    }


# ---- reaching the queue

class QueueUnavailable(Exception):
    """The tools cannot reach the queue; the text says why, in Postfix's words where it has some."""


def load_tool_config(config_dir: str):
    """The configuration; unlike the daemon's checks, only an unreadable main.cf stops a tool."""
    from mailferry.config.config import load, main_cf_path
    path = main_cf_path(config_dir)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise QueueUnavailable(f"open {path}: {exc.strerror}") from None
    return load(config_dir)


def existing_queue_directory(config) -> str:
    directory = config.get("queue_directory")
    if not os.path.isdir(directory):
        raise QueueUnavailable(f"chdir {directory}: No such file or directory")
    return directory


def open_existing_queue(queue_directory: str):
    """The queue's SqliteQueueStore, or None when the database was never created."""
    from mailferry.queue import QUEUE_DATABASE, QueueError, SqliteQueueStore
    path = os.path.join(queue_directory, QUEUE_DATABASE)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise QueueUnavailable(f"{path}: {exc.strerror}") from None
    # As root, keep the files mail_owner's: a -wal file left root's would lock the daemon out.
    owner = (status.st_uid, status.st_gid) if os.geteuid() == 0 else (None, None)
    try:
        return SqliteQueueStore(path, *owner)
    except QueueError as exc:
        if not os.access(path, os.R_OK | os.W_OK):
            raise QueueUnavailable(f"{path}: permission denied: only root and mail_owner "
                                   "may read the queue") from None
        raise QueueUnavailable(str(exc)) from None


def collect(queue_directory: str, store) -> list[ListedMessage]:
    """Every queued message and every maildrop file, in showq's order."""
    listed = [from_queued(message) for message in store.messages()] if store is not None else []
    return in_showq_order(listed + maildrop_messages(queue_directory))


def maildrop_messages(queue_directory: str) -> list[ListedMessage]:
    """Maildrop files we may read; unreadable or damaged ones are pickup's to report."""
    from mailferry.local.maildrop import MaildropError, read_maildrop
    from mailferry.local.pickup import scan
    listed = []
    try:
        paths = scan(queue_directory)
    except PermissionError:
        return listed  # an ordinary user may drop files but not list them
    for path in paths:
        try:
            entry = read_maildrop(path)
        except (MaildropError, OSError):
            continue
        listed.append(_from_maildrop(entry))
    return listed


def _from_maildrop(entry) -> ListedMessage:
    from mailferry.local.recipient_headers import extract_recipients
    envelope = entry.envelope
    recipients = list(envelope.recipients)
    if envelope.extract_recipients:
        recipients += extract_recipients(entry.content)
    sender = envelope.sender if envelope.sender is not None else _login_or_uid(entry.owner_uid)
    return ListedMessage(os.path.basename(entry.path), MAILDROP, entry.file_size,
                         envelope.arrival_time, sender, [(address, "") for address in recipients])


def _login_or_uid(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# ---- the listing commands (mailq, postqueue -p and -j, sendmail -bp)

def print_queue(config_dir: str, reporter, as_json: bool, failure_exit: int) -> int:
    """Print the listing to stdout; `failure_exit` (which differs per command, as in Postfix)
    when the queue cannot be read."""
    from mailferry.queue import QueueError
    try:
        config = load_tool_config(config_dir)
        queue_directory = existing_queue_directory(config)
        messages = _read_queue(queue_directory)
    except (QueueUnavailable, QueueError) as exc:
        reporter.fatal(str(exc))
        return failure_exit
    if as_json:
        text = format_json(messages)
    else:
        text = format_listing(messages, wants_long_layout(messages, _long_queue_ids(config)))
    _write_stdout(text)
    return 0


def _read_queue(queue_directory: str) -> list[ListedMessage]:
    """Straight from the database when we may read it; else ask the running daemon
    (its showq), as any user's mailq must work."""
    try:
        store = open_existing_queue(queue_directory)
    except QueueUnavailable:
        from mailferry import control
        from mailferry.queue.showq import decode_messages
        answer = control.request(queue_directory, "showq")
        if answer is None:
            raise
        listed = [from_queued(message) for message in decode_messages(answer)]
        return in_showq_order(listed + maildrop_messages(queue_directory))
    try:
        return collect(queue_directory, store)
    finally:
        if store is not None:
            store.close()


def _long_queue_ids(config) -> bool:
    from mailferry.config.config import ConfigValueError
    try:
        return config.boolean("enable_long_queue_ids")
    except ConfigValueError:
        return False


def _write_stdout(text: str) -> None:
    import sys
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `mailq | head`: the reader has all it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
