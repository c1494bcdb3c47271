"""Shared by the local-submission and queue-tool tests: a config directory with its own
queue directory, the two real queue backends, and messages in given states."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mailferry.cli.queue_listing import ListedMessage
from mailferry.message import (ACTIVE, DEFERRED, DEFERRED_QUEUE, HOLD, SENT, ClientInfo, NewMessage,
                               Recipient)
from mailferry.queue import QUEUE_DATABASE, RamQueueStore, SqliteQueueStore

BACKENDS = ("ram", "sqlite")


def make_instance(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    """(config_dir, queue_directory) with a main.cf naming that queue directory."""
    config_dir = tmp_path / "etc"
    queue_directory = tmp_path / "spool"
    config_dir.mkdir(parents=True)
    queue_directory.mkdir(parents=True)
    (config_dir / "main.cf").write_text(
        f"queue_directory = {queue_directory}\nmyhostname = mf.example.test\n{extra}")
    return config_dir, queue_directory


def open_store(backend: str, queue_directory: Path):
    if backend == "ram":
        return RamQueueStore()
    return SqliteQueueStore(os.path.join(queue_directory, QUEUE_DATABASE))


def add_message(store, sender: str = "alice@example.org", recipients=("bob@example.net",),
                queue: str = DEFERRED_QUEUE, reasons: dict[str, str] | None = None,
                sent: tuple[str, ...] = (), size: int = 300, arrival_time: float = 1_795_574_036.0,
                queue_id: str = "") -> str:
    """Insert one message and put it in `queue`, with deferral reasons per recipient."""
    content = b"Subject: test\r\n\r\n" + b"x" * max(0, size - 19) + b"\r\n"
    message = NewMessage(sender=sender, recipients=[Recipient(address) for address in recipients],
                         content=content, client=ClientInfo(protocol="local", uid=0),
                         origin="local", arrival_time=arrival_time)
    message.queue_id = queue_id
    [assigned] = store.insert_many([message])
    queued = store.get(assigned)
    queued.queue = ACTIVE if queue == HOLD else queue
    for recipient in queued.recipients:
        if recipient.address in sent:
            recipient.status = SENT
        elif reasons and recipient.address in reasons:
            recipient.status, recipient.reason, recipient.dsn = DEFERRED, reasons[recipient.address], "4.4.1"
    store.update(queued)
    if queue == HOLD:
        store.hold([assigned])
    return assigned


def listed_from_json(text: str) -> list[ListedMessage]:
    return [ListedMessage(item["queue_id"], item["queue_name"], item["message_size"], item["arrival_time"],
                          item["sender"],
                          [(r["address"], r.get("delay_reason", "")) for r in item["recipients"]])
            for item in map(json.loads, text.splitlines())]


def entries(listing: str) -> tuple[str, list[str], str]:
    """(header, sorted entries, trailer) of a postqueue -p text: entries are blank-line separated."""
    header, _, rest = listing.partition("\n")
    body, _, trailer = rest.rstrip("\n").rpartition("\n\n")
    return header, sorted(body.split("\n\n")), trailer
