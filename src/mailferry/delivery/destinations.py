"""Per-destination limits of one delivery transport: concurrency and dead-site memory.

In Postfix these are qmgr's: it opens at most
`<transport>_destination_concurrency_limit` sessions to one next hop, and
after a failed connection it holds back the rest of that destination's mail
for a while instead of trying each message. mailferry's SMTP client keeps
them, through this small interface, because the client is where sessions
are opened and connections fail. They stay in delivery/ rather than qmgr/:
the scheduler imports delivery/ (the job, the transports, outcome), so the
client importing qmgr/ would close a loop between the two packages, and
letting the scheduler own them means the scheduler takes the slot before
it calls the client, which is a change of the scheduler, not a move.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

SUSPEND_SECONDS = 1.0     # how long a destination that refused a connection is left alone


class Destinations:
    """The destinations of one transport (one SMTP/LMTP client)."""

    def __init__(self, concurrency_limit: int, clock: Callable[[], float] = time.monotonic):
        self.concurrency_limit = concurrency_limit
        self._clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._jobs: dict[str, int] = {}     # jobs holding or waiting for each destination's slot
        self._holding: dict[str, int] = {}  # jobs holding one
        self._dead: dict[str, tuple[float, str]] = {}

    # --- concurrency: at most concurrency_limit sessions per next hop at once

    @asynccontextmanager
    async def slot(self, nexthop: str) -> AsyncIterator[None]:
        """Hold one of the next hop's sessions; waits while all are in use (first come, first served)."""
        semaphore = self._slots.get(nexthop)
        if semaphore is None:
            semaphore = self._slots[nexthop] = asyncio.Semaphore(self.concurrency_limit)
        self._jobs[nexthop] = self._jobs.get(nexthop, 0) + 1
        try:
            async with semaphore:
                self._holding[nexthop] = self._holding.get(nexthop, 0) + 1
                try:
                    yield
                finally:
                    self._holding[nexthop] -= 1
        finally:
            self._jobs[nexthop] -= 1
            if not self._jobs[nexthop]:      # no job waits: forget the destination's slot
                del self._jobs[nexthop], self._slots[nexthop], self._holding[nexthop]

    def waiting(self, nexthop: str) -> int:
        """How many jobs for the next hop wait for a slot (all its sessions are in use)."""
        return self._jobs.get(nexthop, 0) - self._holding.get(nexthop, 0)

    def tracked(self) -> int:
        """How many next hops have a job holding or waiting for a slot."""
        return len(self._slots)

    # --- dead destinations: after a failed connect, the rest of the queue waits

    def mark_dead(self, nexthop: str, reason: str) -> None:
        self._dead[nexthop] = (self._clock() + SUSPEND_SECONDS, reason)

    def dead_reason(self, nexthop: str) -> str | None:
        """Why the next hop is suspended, or None when mail may try it."""
        dead = self._dead.get(nexthop)
        if dead is None:
            return None
        until, reason = dead
        if self._clock() >= until:
            del self._dead[nexthop]
            return None
        return reason

    def forget_dead(self) -> None:
        """postqueue -f: try every destination now."""
        self._dead.clear()
