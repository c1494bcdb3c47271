"""The wire form of the queue listing that the daemon serves over its control
socket: one JSON object per message, per line. Only what a listing shows."""

from __future__ import annotations

import json

from mailferry.message import BOUNCED, SENT, ClientInfo, QueuedMessage, Recipient


def encode_messages(messages: list[QueuedMessage]) -> bytes:
    lines = []
    for message in messages:
        lines.append(json.dumps({
            "queue_id": message.queue_id, "queue": message.queue, "size": message.size,
            "arrival_time": message.arrival_time, "sender": message.sender,
            "recipients": [[r.address, r.status, r.reason] for r in message.recipients
                           if r.status not in (SENT, BOUNCED)],
        }))
    return ("\n".join(lines) + "\n" if lines else "").encode("utf-8", "surrogateescape")


def decode_messages(data: bytes) -> list[QueuedMessage]:
    messages = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        item = json.loads(line)
        messages.append(QueuedMessage(
            queue_id=item["queue_id"], queue=item["queue"], sender=item["sender"], size=item["size"],
            arrival_time=item["arrival_time"], client=ClientInfo(),
            recipients=[Recipient(address, status=status, reason=reason)
                        for address, status, reason in item["recipients"]]))
    return messages
