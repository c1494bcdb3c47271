"""Postfix-style queue IDs: twelve uppercase hex digits, e.g. `6C8A2F41B3D7`.

The scheme. An ID is a 48-bit number written as 12 hex digits:

    microseconds since the epoch, with the low 4 bits replaced by a
    process tag (pid mod 16, or the daemon's own numbering of its
    processes: use_process_tag), taken mod 2**48.

Each process hands out a strictly increasing sequence, stepping by 16 (one
tick of the clock at that granularity) and never going back, even if the
clock does: the next ID is max(the clock, the last ID + 16). So, within
one process, IDs are unique at any rate (above 62,500 IDs a second the
sequence simply runs ahead of the clock), and they sort in issue order.

Across restarts, a new process starts from the clock, which is past
everything the previous process issued unless that one ran ahead of the
clock or the clock was stepped back. Two processes writing at once (the
daemon and a queue tool) differ in their tag unless their pids agree mod 16,
and then they would also have to ask within the same 16 microseconds. The
number wraps after 2**48 microseconds, about 8.9 years.

None of that is relied on for safety: the store refuses a duplicate ID (it
is the primary key); it retries with fresh IDs where it chose them, and
refuses the batch (4xx) where smtpd did, as that ID is already logged.

Like Postfix's short IDs, these are for people and logs: fixed width, hex,
uppercase, so `grep 6C8A2F41B3D7 /var/log/mail.log` finds one message.
"""

from __future__ import annotations

import os
import re
import threading
import time

QUEUE_ID_LENGTH = 12
_TAG_BITS = 4
_STEP = 1 << _TAG_BITS
_WRAP = 1 << (4 * QUEUE_ID_LENGTH)
# Postfix's short IDs are 10 to 12 hex digits; ours are always 12, but the
# tools accept the shorter ones an operator may paste from a Postfix log.
_QUEUE_ID = re.compile(r"[0-9A-F]{10,12}")


class QueueIdGenerator:
    """Strictly increasing IDs for one process (see the module docstring)."""

    def __init__(self, pid: int | None = None, clock=time.time_ns) -> None:
        self._tag = (os.getpid() if pid is None else pid) % _STEP
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def next_ids(self, count: int) -> list[str]:
        """`count` fresh IDs, in increasing order; one clock read per call."""
        now = (self._clock() // 1000) & ~(_STEP - 1) | self._tag
        with self._lock:
            first = max(now, self._last + _STEP)
            self._last = first + _STEP * (count - 1)
        return ["%012X" % ((first + _STEP * index) % _WRAP) for index in range(count)]

    def skip_past(self, queue_id: str) -> None:
        """Never issue `queue_id` or anything before it again (after a collision)."""
        value = int(queue_id, 16)
        with self._lock:
            if value % _WRAP >= self._last % _WRAP:
                self._last += value % _WRAP - self._last % _WRAP


_process_generator = QueueIdGenerator()


def _retag_after_fork() -> None:
    # A forked child must not share its parent's tag and sequence.
    global _process_generator
    _process_generator = QueueIdGenerator()


os.register_at_fork(after_in_child=_retag_after_fork)


def use_process_tag(tag: int) -> None:
    """Give this process a chosen tag (0-15): the daemon's processes take distinct
    ones, so their IDs can never collide however fast they are issued."""
    global _process_generator
    _process_generator = QueueIdGenerator(pid=tag)


def new_queue_ids(count: int) -> list[str]:
    """`count` IDs unique within this process."""
    return _process_generator.next_ids(count)


def new_queue_id() -> str:
    return _process_generator.next_ids(1)[0]


def skip_past_queue_id(queue_id: str) -> None:
    """Issue only IDs after `queue_id` from now on: another process used it."""
    _process_generator.skip_past(queue_id)


def is_queue_id(text: str) -> bool:
    """Whether `text` looks like a queue ID (for postsuper/postqueue arguments)."""
    return _QUEUE_ID.fullmatch(text) is not None
