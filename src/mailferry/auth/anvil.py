"""Anvil-style per-client rate counters (Postfix's anvil(8)), for smtpd_client_auth_rate_limit.

Each (service, client address) counts events in a window of anvil_rate_time_unit that starts
with its first event; a new window starts from zero. Postfix's anvil is a daemon of its own
that every smtpd process asks; here the smtpd workers are forked processes (master/workers.py)
and share one table in an anonymous shared memory map made when this module is imported, which
the daemon does before it forks. So a client cannot spread a burst over the workers.

The table has SLOTS slots; a key probes PROBES of them. When all of those hold other clients'
live windows, the key shares the first one: counts can only come out too high, never too low.
CLOCK_MONOTONIC is the same for every process, so windows agree across workers.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
import time
from collections.abc import Callable

SLOTS = 16384
PROBES = 8
_SLOT = struct.Struct("=Qdq")        # key hash (0 = free), window start, events in the window


class RateCounter:
    def __init__(self, clock: Callable[[], float] = time.monotonic, slots: int = SLOTS):
        self.clock = clock
        self.slots = slots
        self._table = mmap.mmap(-1, slots * _SLOT.size, flags=mmap.MAP_SHARED)
        self._lock = multiprocessing.Lock()

    def count(self, service: str, address: str, unit: float) -> int:
        """Count one event; the number of events in the current window, this one included."""
        key = _key(service, address)
        now = self.clock()
        with self._lock:
            offset = self._slot_for(key, now, unit)
            held, start, events = _SLOT.unpack_from(self._table, offset)
            if held != key or now - start >= unit:
                start, events = now, 0
            events += 1
            _SLOT.pack_into(self._table, offset, key, start, events)
        return events

    def _slot_for(self, key: int, now: float, unit: float) -> int:
        first = key % self.slots
        reusable = None
        for probe in range(PROBES):
            offset = ((first + probe) % self.slots) * _SLOT.size
            held, start, _ = _SLOT.unpack_from(self._table, offset)
            if held == key:
                return offset
            if reusable is None and (held == 0 or now - start >= unit):
                reusable = offset
        return reusable if reusable is not None else first * _SLOT.size


def _key(service: str, address: str) -> int:
    digest = hashlib.blake2b(f"{service}\0{address}".encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


# AUTH commands, for every smtpd service of the daemon and every worker process.
AUTH_COMMANDS = RateCounter()
