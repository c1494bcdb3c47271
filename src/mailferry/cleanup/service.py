"""The one way into the queue, for smtpd and pickup alike.

`enqueue` finishes the message (cleanup.clean), hands it to the group
committer and returns only once the message is durable. It logs Postfix's
`message-id=` and `from=<...>, size=..., nrcpt=... (queue active)` lines.
A QueueError (disk full, write error) propagates: smtpd turns it into a 4xx
and pickup leaves the maildrop file for the next pass.
"""

from __future__ import annotations

from collections.abc import Callable

from mailferry.cleanup.cleanup import CleanupSettings, clean
from mailferry.message import NewMessage


class CleanupService:
    def __init__(self, settings: CleanupSettings, committer, log,
                 is_local_client: Callable[[str], bool], on_queued: Callable[[], None]):
        self.settings = settings
        self.committer = committer
        self.log = log
        self.is_local_client = is_local_client
        self.on_queued = on_queued

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "") -> str:
        add_headers = message.origin == "local" or self.is_local_client(message.client.address)
        clean(message, queue_id, self.settings, add_headers, full_name)
        message.queue_id = queue_id
        self.log.line("cleanup", f"{queue_id}: message-id={message.message_id or '<>'}")
        queued = await self.committer.submit(message)
        self.log.line("qmgr", f"{queued}: from=<{message.sender}>, size={len(message.content)}, "
                              f"nrcpt={len(message.recipients)} (queue active)")
        self.on_queued()
        return queued
