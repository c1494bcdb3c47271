"""queue_minfree: refuse MAIL FROM while the queue's file system is nearly full (Postfix's
smtpd_check_queue).

Postfix's rule (smtpd_check.c), in blocks of the file system holding the queue: refuse with
`452 4.3.1 Insufficient system storage` when the free blocks are at most queue_minfree, or when
message_size_limit is at least the free blocks / 1.5 (postconf(5): "By default, the Postfix SMTP
server rejects MAIL FROM commands when the amount of free space is less than
1.5*$message_size_limit"). With message_size_limit = 0 (no limit) only queue_minfree counts.
One statvfs(2) per MAIL FROM, as Postfix does; a queue that fills up anyway between MAIL FROM and
the end of DATA still answers 452 4.3.1, from the queue (queue/store.py QueueFull).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SPACE_MULTIPLIER = 1.5   # Postfix's smtpd_space_multf


@dataclass(frozen=True, slots=True)
class QueueSpace:
    directory: str
    minfree: int                 # queue_minfree, bytes
    message_size_limit: int      # bytes; 0: no limit

    def shortage(self) -> str | None:
        """Why there is not enough room for one more message (a warning's text), or None."""
        try:
            stats = os.statvfs(self.directory)
        except OSError:
            return None          # no queue to measure: the queue itself will say what is wrong
        block = stats.f_frsize or stats.f_bsize or 1
        free = stats.f_bavail
        if self.minfree // block >= free or self.message_size_limit // block >= free / SPACE_MULTIPLIER:
            return (f"not enough free space in mail queue: {free * block} bytes < "
                    f"{SPACE_MULTIPLIER:g}*message size limit")
        return None
