"""The child of the crash test: insert self-checking messages until killed.

    python -m tests.unit.queue.crash_writer DATABASE SEED

Prints "ready", then after each insert_many returns the batch's queue IDs on
one line: a line fully printed is a batch the store said was durable.
"""

from __future__ import annotations

import os
import random
import sys

from mailferry.queue import SqliteQueueStore
from mailferry.queue.sqlite import CONTENT_FILE_MIN_BYTES

from .samples import self_checking_message


def main() -> None:
    database, seed = sys.argv[1], int(sys.argv[2])
    chance = random.Random(seed)
    store = SqliteQueueStore(database)
    print("ready", flush=True)
    number = 0
    while True:
        batch = []
        for _ in range(chance.randint(1, 30)):
            number += 1
            # Some large enough to spill over many pages, so kills land mid-write.
            # And some over the threshold, in a file of their own written before the row.
            size = chance.choice([100, 1000, 4000, 16000, CONTENT_FILE_MIN_BYTES + 1000])
            message = self_checking_message(number, chance.randint(1, 6), os.urandom(size))
            batch.append(store.stage_content(message) if store.stages(message) else message)
        ids = store.insert_many(batch)
        sys.stdout.write(" ".join(ids) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
