"""Sample messages for the queue tests, with what it takes to check them whole."""

from __future__ import annotations

import hashlib

from mailferry.message import ClientInfo, NewMessage, Recipient


def sample_message(number: int = 0, recipients: int = 2, size: int = 200, **fields) -> NewMessage:
    """A message whose every field is distinct, so a mix-up would show."""
    content = (f"Subject: sample {number}\r\n\r\n".encode()
               + bytes((number + i) % 256 for i in range(size)))
    client = ClientInfo(f"mx{number}.example.org", f"192.0.2.{number % 250 + 1}", 1000 + number,
                        f"helo{number}.example.org", "ESMTPSA", "TLSv1.3", f"user{number}",
                        uid=number)
    message = NewMessage(
        sender=f"sender{number}@example.org",
        recipients=[Recipient(f"rcpt{number}.{i}@example.com", orcpt=f"rfc822;orig{i}@example.com",
                              notify="SUCCESS,FAILURE" if i % 2 else None)
                    for i in range(recipients)],
        content=content, client=client, origin="smtp", message_id=f"<{number}@example.org>",
        dsn_ret="HDRS", dsn_envid=f"envid{number}", body_type="8BITMIME", smtputf8=bool(number % 2),
        content_filter=f"smtp:[127.0.0.{number % 250 + 1}]:10024" if number % 2 else "")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def self_checking_message(number: int, recipients: int, content: bytes) -> NewMessage:
    """A message that tells how it must look: the content's hash in message_id,
    the recipient count in the sender."""
    return NewMessage(
        sender=f"count{recipients}@example.org",
        recipients=[Recipient(f"r{i}@example.com") for i in range(recipients)],
        content=content, message_id=hashlib.sha256(content).hexdigest(),
        client=ClientInfo(port=number))


def problems_with(store, queue_id: str) -> list[str]:
    """What is wrong with a self-checking message in `store` ([] if it is whole)."""
    message = store.get(queue_id)
    if message is None:
        return [f"{queue_id}: missing"]
    content = store.content(queue_id)
    expected = int(message.sender.removeprefix("count").partition("@")[0])
    problems = []
    if hashlib.sha256(content).hexdigest() != message.message_id:
        problems.append(f"{queue_id}: content hash differs")
    if message.size != len(content):
        problems.append(f"{queue_id}: size {message.size} != {len(content)}")
    addresses = [recipient.address for recipient in message.recipients]
    if addresses != [f"r{i}@example.com" for i in range(expected)]:
        problems.append(f"{queue_id}: recipients {addresses}, expected {expected}")
    return problems
