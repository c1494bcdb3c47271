"""Anvil-style per-client rate counters (Postfix's anvil(8)), for smtpd_client_auth_rate_limit.

Each (service, client address) counts events in a window of anvil_rate_time_unit that starts
with its first event; a new window starts from zero. Postfix's anvil is a daemon of its own;
here the counters live in the one daemon process, shared by every session of a service and
kept across a reload (they are per service name, not per configuration).
"""

from __future__ import annotations

import time
from collections.abc import Callable

_MAX_CLIENTS = 100_000    # forget the oldest windows past this many clients


class RateCounter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}

    def count(self, service: str, address: str, unit: float) -> int:
        """Count one event; the number of events in the current window, this one included."""
        now = self.clock()
        key = (service, address)
        start, events = self._windows.get(key, (now, 0))
        if now - start >= unit:
            start, events = now, 0
        self._windows[key] = (start, events + 1)
        if len(self._windows) > _MAX_CLIENTS:
            self._forget_expired(now, unit)
        return events + 1

    def _forget_expired(self, now: float, unit: float) -> None:
        for key, (start, _) in list(self._windows.items()):
            if now - start >= unit:
                del self._windows[key]
        while len(self._windows) > _MAX_CLIENTS:
            del self._windows[next(iter(self._windows))]


# AUTH commands, for every smtpd service of the daemon.
AUTH_COMMANDS = RateCounter()
