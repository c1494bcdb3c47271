"""`mailferry postsuper`: delete, hold, release and requeue queued mail, as Postfix's postsuper.

  postsuper -d ID | -d ALL | -d -     delete (ALL: every message; -: IDs from stdin)
  postsuper -h ...  /  -H ...         put on hold / release from hold
  postsuper -r ...                    requeue: due now, deferred recipients pending again
  postsuper ... [queue...]            only in these queues: hold incoming active deferred
                                      (and maildrop, for -d)
  postsuper -p                        remove temporary files a crashed sendmail left
  postsuper -s, -S                    accepted; there is no file structure to repair

Options may repeat (`-d A -d B`) and are applied in command-line order.
Reports go to stderr in Postfix's words: `ID: removed` for each message
named by ID, then one count per requested operation, e.g. `Deleted: 1
message`, in Postfix's order (Requeued, Deleted, Placed on hold, Released
from hold). Exit status as Postfix's: 0, or 1 on errors.

Not supported yet: -e and -f (forced expiration): the queue has no such state.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mailferry.cli.output import Reporter
from mailferry.cli.queue_listing import (MAILDROP, QueueUnavailable, existing_queue_directory,
                                         load_tool_config, open_existing_queue)
from mailferry.message import ACTIVE, DEFERRED_QUEUE, HOLD, INCOMING

USAGE = ("usage: postsuper [-c config_dir] [-d queue_id (delete)] [-h queue_id (hold)] "
         "[-H queue_id (un-hold)] [-p (purge temporary files)] [-r queue_id (requeue)] "
         "[-s (structure fix)] [-S (redundant structure fix)] [-v (verbose)] [queue...]")
EXIT_FAILURE = 1
ALL = "ALL"  # upper case only, as a safety measure (as in Postfix)
QUEUE_NAMES = {"hold": HOLD, "incoming": INCOMING, "active": ACTIVE, "deferred": DEFERRED_QUEUE,
               "maildrop": MAILDROP}


@dataclass(frozen=True, slots=True)
class Operation:
    flag: str
    store_method: str
    done: str            # after a queue ID
    summary: str         # before the count
    default_queues: tuple[str, ...]

    def changes(self, queue: str) -> bool:
        """Whether the operation would change a message that sits in `queue`."""
        if self.flag == "-h":
            return queue != HOLD
        if self.flag == "-H":
            return queue == HOLD
        return True


OPERATIONS = {
    "-r": Operation("-r", "requeue", "requeued", "Requeued", (HOLD, INCOMING, ACTIVE, DEFERRED_QUEUE)),
    "-d": Operation("-d", "delete", "removed", "Deleted", (HOLD, INCOMING, ACTIVE, DEFERRED_QUEUE)),
    "-h": Operation("-h", "hold", "placed on hold", "Placed on hold", (INCOMING, ACTIVE, DEFERRED_QUEUE)),
    "-H": Operation("-H", "release", "released from hold", "Released from hold", (HOLD,)),
}
SUMMARY_ORDER = ("-r", "-d", "-h", "-H")


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    try:
        pairs, queue_names = getopt.getopt(argv, "c:d:e:f:h:H:pr:sSv")
    except getopt.GetoptError as exc:
        reporter.fatal(f"{exc}\n{USAGE}")
        return EXIT_FAILURE
    requests: list[tuple[str, str]] = []
    purge = False
    for flag, value in pairs:
        if flag == "-c":
            config_dir = value
        elif flag == "-v":
            reporter.verbose += 1
        elif flag in ("-e", "-f"):
            reporter.fatal(f"{flag}: forced expiration is not supported by this version of mailferry")
            return EXIT_FAILURE
        elif flag == "-p":
            purge = True
        elif flag in OPERATIONS:
            requests += [(flag, queue_id) for queue_id in _queue_ids(value)]
    for name in queue_names:
        if name not in QUEUE_NAMES:
            reporter.fatal(f"invalid directory name: {name}")
            return EXIT_FAILURE
    try:
        return _run_requests(config_dir, reporter, requests, [QUEUE_NAMES[n] for n in queue_names], purge)
    except QueueUnavailable as exc:
        reporter.fatal(str(exc))
        return EXIT_FAILURE


def _queue_ids(value: str) -> list[str]:
    if value != "-":
        return [value]
    return [line.strip() for line in sys.stdin if line.strip()]


def _run_requests(config_dir: str, reporter: Reporter, requests: list[tuple[str, str]],
                  queues: list[str], purge: bool) -> int:
    from mailferry.queue import QueueError
    queue_directory = existing_queue_directory(load_tool_config(config_dir))
    if purge:
        from mailferry.local.pickup import remove_abandoned_temporary_files
        remove_abandoned_temporary_files(queue_directory)
    if not requests:
        return 0
    store = open_existing_queue(queue_directory)
    try:
        counts = execute(store, queue_directory, requests, queues, reporter)
    except QueueError as exc:
        reporter.fatal(str(exc))
        return EXIT_FAILURE
    finally:
        if store is not None:
            store.close()
    report_counts(counts, reporter)
    return 0


def execute(store, queue_directory: str, requests: list[tuple[str, str]], queues: list[str],
            reporter: Reporter) -> dict[str, int]:
    """Apply (flag, queue ID or ALL) requests in order; how many messages each flag changed.
    `store` may be None: a queue that was never created holds nothing."""
    counts = dict.fromkeys(dict.fromkeys(flag for flag, _ in requests), 0)
    for flag, queue_ids in _runs(requests):
        action = Action(OPERATIONS[flag], store, queue_directory, queues, reporter)
        counts[flag] += action.apply(queue_ids)
    return counts


def report_counts(counts: dict[str, int], reporter: Reporter) -> None:
    for flag in SUMMARY_ORDER:
        if flag in counts:
            plural = "" if counts[flag] == 1 else "s"
            reporter.info(f"{OPERATIONS[flag].summary}: {counts[flag]} message{plural}")


def _runs(requests: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Consecutive requests of one operation, grouped: one queue transaction per group."""
    runs: list[tuple[str, list[str]]] = []
    for flag, queue_id in requests:
        if runs and runs[-1][0] == flag:
            runs[-1][1].append(queue_id)
        else:
            runs.append((flag, [queue_id]))
    return runs


class Action:
    """One operation on a group of queue IDs (ALL among them), within the chosen queues."""

    def __init__(self, operation: Operation, store, queue_directory: str, queues: list[str],
                 reporter: Reporter):
        self.operation = operation
        self.store = store
        self.queue_directory = queue_directory
        self.explicit_queues = bool(queues)
        self.queues = tuple(queues) or operation.default_queues
        self.reporter = reporter

    def apply(self, queue_ids: Sequence[str]) -> int:
        changed = 0
        named = []
        for queue_id in queue_ids:
            if queue_id == ALL:
                changed += self._apply_all()
            elif not _valid_queue_id(queue_id):
                self.reporter.warning(f"invalid mail queue id: {queue_id}")
            else:
                named.append(queue_id)
        return changed + self._apply_named(named)

    def _apply_all(self) -> int:
        changed = self._delete_all_maildrop() if self._touches_maildrop() else 0
        if self.store is None:
            return changed
        if not self.explicit_queues:
            return changed + self._call_store(None)
        chosen = [m.queue_id for m in self.store.messages()
                  if m.queue in self.queues and self.operation.changes(m.queue)]
        return changed + (self._call_store(chosen) if chosen else 0)

    def _apply_named(self, queue_ids: list[str]) -> int:
        eligible, from_maildrop = [], 0
        for queue_id in dict.fromkeys(queue_ids):
            message = self.store.get(queue_id) if self.store is not None else None
            if message is not None:
                if message.queue in self.queues and self.operation.changes(message.queue):
                    eligible.append(queue_id)
            elif self._touches_maildrop() and self._delete_maildrop_file(queue_id):
                self._report(queue_id)
                from_maildrop += 1
        if not eligible:
            return from_maildrop
        changed = self._call_store(eligible)
        for queue_id in eligible:
            self._report(queue_id)
        return from_maildrop + changed

    def _call_store(self, queue_ids: list[str] | None) -> int:
        return getattr(self.store, self.operation.store_method)(queue_ids)

    def _touches_maildrop(self) -> bool:
        return self.operation.flag == "-d" and MAILDROP in self.queues

    def _delete_maildrop_file(self, name: str) -> bool:
        from mailferry.local.maildrop import maildrop_directory
        path = os.path.join(maildrop_directory(self.queue_directory), name)
        if not os.path.lexists(path):
            return False
        os.unlink(path)
        return True

    def _delete_all_maildrop(self) -> int:
        from mailferry.local.pickup import remove, scan
        paths = scan(self.queue_directory)
        for path in paths:
            remove(path)
        return len(paths)

    def _report(self, queue_id: str) -> None:
        self.reporter.info(f"{queue_id}: {self.operation.done}")


def _valid_queue_id(text: str) -> bool:
    # Postfix's rule: letters and digits only (so never a path).
    return text.isascii() and text.isalnum()
