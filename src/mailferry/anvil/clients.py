"""Per-client connection counts and event rates, shared by every smtpd process (Postfix's anvil(8)).

Postfix's anvil is a daemon of its own that every smtpd process asks. Here the smtpd workers are
forked processes (master/workers.py) and share one table in a memory-backed file (memfd) that the
master makes before it forks, so a client cannot spread its sessions or a burst over the workers.

What a client's entry holds, as in anvil.c: for one (service, client address), the sessions open
now, and the events in the current window of anvil_rate_time_unit: connections, MAIL, RCPT, new TLS
sessions, AUTH. The window starts with an event and ends `unit` seconds later; the next event after
that starts a new one from zero, for every kind at once.

Open sessions are counted per process, one column each, so that when a worker dies (kill -9, a
crash) the master zeroes that worker's column (`forget_process`) and the count falls by exactly
the sessions that died with it: a disconnect that never ran cannot leave a client locked out.

The table has `slots` entries; a key probes PROBES of them. When all of those hold other clients'
live entries, the key shares the first one: counts can only come out too high, never too low.
CLOCK_MONOTONIC is the same for every process, so windows agree across workers.

The lock is a POSIX record lock on the memfd (fcntl): the kernel drops it when its holder dies,
so a worker killed inside `record` cannot wedge the others (a semaphore would stay taken).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

SLOTS = 16384
PROBES = 8

# What anvil counts per window, in the order of _RATES' fields.
CONNECT, MAIL, RCPT, NEWTLS, AUTH = range(5)
EVENTS = ("connection", "message", "recipient", "newtls", "auth")   # anvil's names in its statistics

_ENTRY = struct.Struct("=Qd5i")     # key hash (0 = free), window start, events per kind in the window
_COUNT = struct.Struct("=i")        # sessions open, one per process
# The peaks since the last report, for anvil_status_update_time: a value, its wall-clock time and
# the client's ident, for each rate of EVENTS and for the session count; then the cache size.
_IDENT_BYTES = 120
_PEAK = struct.Struct(f"=id{_IDENT_BYTES}s")
_PEAKS = len(EVENTS) + 1
_SESSIONS_PEAK = len(EVENTS)


@dataclass(frozen=True, slots=True)
class Peak:
    value: int
    ident: str          # service:address, as Postfix's anvil names a client
    when: float         # time.time()


@dataclass(frozen=True, slots=True)
class Connection:
    """What `connect` answers: the sessions now open (this one included), the connection rate,
    and the handle `disconnect` takes."""
    count: int
    rate: int
    offset: int


class ClientTable:
    def __init__(self, processes: int = 1, slots: int = SLOTS, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.processes = max(1, processes)
        self.slots = slots
        self.clock = clock
        self.wall_clock = wall_clock
        self.process_index = 0
        self._entry_size = _ENTRY.size + _COUNT.size * self.processes
        self._peaks_offset = slots * self._entry_size
        size = self._peaks_offset + _PEAK.size * _PEAKS
        self._fd = os.memfd_create("mailferry-anvil")
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)

    def use_process_index(self, index: int) -> None:
        """This process's column (0: the master; worker n: n). Called once after the fork."""
        if not 0 <= index < self.processes:
            raise ValueError(f"process index {index} outside 0..{self.processes - 1}")
        self.process_index = index

    # --- events
    def connect(self, service: str, address: str, unit: float) -> Connection:
        """A new session: counted open (until `disconnect`) and in the connection rate."""
        ident = _ident(service, address)
        with self._locked():
            offset, rates = self._entry(ident, unit)
            rates[CONNECT] += 1
            _ENTRY.pack_into(self._map, offset, _key(ident), rates[-1], *rates[:-1])
            column = self._column(offset, self.process_index)
            open_here = _COUNT.unpack_from(self._map, column)[0] + 1
            _COUNT.pack_into(self._map, column, open_here)
            count = self._open_sessions(offset)
            self._raise_peak(CONNECT, rates[CONNECT], ident)
            self._raise_peak(_SESSIONS_PEAK, count, ident)
        return Connection(count, rates[CONNECT], offset)

    def disconnect(self, connection: Connection) -> None:
        with self._locked():
            column = self._column(connection.offset, self.process_index)
            open_here = _COUNT.unpack_from(self._map, column)[0]
            if open_here > 0:
                _COUNT.pack_into(self._map, column, open_here - 1)

    def record(self, kind: int, service: str, address: str, unit: float) -> int:
        """One event of `kind` (MAIL, RCPT, NEWTLS, AUTH): the events of that kind in the window."""
        ident = _ident(service, address)
        with self._locked():
            offset, rates = self._entry(ident, unit)
            rates[kind] += 1
            _ENTRY.pack_into(self._map, offset, _key(ident), rates[-1], *rates[:-1])
            self._raise_peak(kind, rates[kind], ident)
        return rates[kind]

    def rate(self, kind: int, service: str, address: str, unit: float) -> int:
        """The events of `kind` in the window, without counting one (anvil's newtls_stat)."""
        key = _key(_ident(service, address))
        now = self.clock()
        with self._locked():
            for probe in range(PROBES):
                offset = self._offset((key + probe) % self.slots)
                held, start, *rates = _ENTRY.unpack_from(self._map, offset)
                if held == key:
                    return 0 if now - start > unit else rates[kind]
        return 0

    def forget_process(self, index: int) -> None:
        """A worker died: the sessions it had are gone, and so are their counts."""
        with self._locked():
            for slot in range(self.slots):
                _COUNT.pack_into(self._map, self._column(self._offset(slot), index), 0)

    # --- statistics (anvil_status_update_time)
    def take_peaks(self, unit: float) -> tuple[dict[str, Peak], int]:
        """The peaks since the last call, by EVENTS name and "count", and the entries in use now;
        the peaks start again from zero, as anvil's do after each report."""
        now = self.clock()
        peaks = {}
        with self._locked():
            for index in range(_PEAKS):
                offset = self._peaks_offset + index * _PEAK.size
                value, when, ident = _PEAK.unpack_from(self._map, offset)
                if value > 0:
                    name = "count" if index == _SESSIONS_PEAK else EVENTS[index]
                    peaks[name] = Peak(value, ident.rstrip(b"\0").decode("utf-8", "replace"), when)
                    _PEAK.pack_into(self._map, offset, 0, 0.0, b"")
            in_use = sum(1 for slot in range(self.slots) if self._live(self._offset(slot), now, unit))
        return peaks, in_use

    # --- the table
    def _entry(self, ident: str, unit: float) -> tuple[int, list]:
        """The entry of `ident` (claimed if new), and its rates with the window start last."""
        key = _key(ident)
        now = self.clock()
        first = key % self.slots
        reusable = None
        for probe in range(PROBES):
            offset = self._offset((first + probe) % self.slots)
            held = _ENTRY.unpack_from(self._map, offset)[0]
            if held == key:
                break
            if reusable is None and not self._live(offset, now, unit):
                reusable = offset
        else:
            offset = reusable if reusable is not None else self._offset(first)
        held, start, *rates = _ENTRY.unpack_from(self._map, offset)
        if held != key and reusable == offset:
            start, rates = now, [0] * len(EVENTS)     # a new client (or a shared slot keeps counting)
        elif now - start > unit:
            start, rates = now, [0] * len(EVENTS)     # anvil: a new window, every rate from zero
        return offset, [*rates, start]

    def _live(self, offset: int, now: float, unit: float) -> bool:
        held, start, *_ = _ENTRY.unpack_from(self._map, offset)
        return held != 0 and (now - start <= unit or self._open_sessions(offset) > 0)

    def _open_sessions(self, offset: int) -> int:
        return sum(_COUNT.unpack_from(self._map, self._column(offset, index))[0]
                   for index in range(self.processes))

    def _raise_peak(self, index: int, value: int, ident: str) -> None:
        offset = self._peaks_offset + index * _PEAK.size
        if value > _PEAK.unpack_from(self._map, offset)[0]:
            _PEAK.pack_into(self._map, offset, value, self.wall_clock(),
                            ident.encode("utf-8", "replace")[:_IDENT_BYTES])

    def _offset(self, slot: int) -> int:
        return slot * self._entry_size

    def _column(self, offset: int, index: int) -> int:
        return offset + _ENTRY.size + index * _COUNT.size

    def _locked(self):
        return _RecordLock(self._fd)


class _RecordLock:
    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


def _ident(service: str, address: str) -> str:
    """Postfix's ANVIL_IDENT: `service:address`."""
    return f"{service}:{address}"


def _key(ident: str) -> int:
    digest = hashlib.blake2b(ident.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


# The one table of the daemon. `share(processes)` replaces it in the master before the workers
# are forked; until then (unit tests, `sendmail -bs`) a table of one process serves.
_table: ClientTable | None = None


def share(processes: int) -> ClientTable:
    global _table
    _table = ClientTable(processes)
    return _table


def table() -> ClientTable:
    global _table
    if _table is None:
        _table = ClientTable()
    return _table
