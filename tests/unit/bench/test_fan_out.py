"""bench/relay's fan-out check (check_recipients in bench/_relaying.py): a run counts only when
the sink's dumps hold one transaction a message, each with exactly the N recipients smtp-source
-r N sent. The sink here is a stand-in holding parsed dumps; the check reads nothing else."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))
try:
    from _relaying import check_recipients   # noqa: E402  (bench/ is not a package)
finally:
    sys.path.remove(str(BENCH))

ADDRESSES = ["rcpt@example.net", "2rcpt@example.net", "3rcpt@example.net"]
EXPECTED = Counter({address: 2 for address in ADDRESSES})   # 2 messages x 3 recipients


class Dumps:
    def __init__(self, *transactions: list[str]):
        self.transactions = transactions

    def messages(self):
        return [SimpleNamespace(recipients=list(t)) for t in self.transactions]


def test_one_transaction_a_message_with_every_recipient_passes():
    assert check_recipients(EXPECTED, 3)(Dumps(ADDRESSES, ADDRESSES[::-1])) == []


def test_a_message_split_over_two_transactions_fails():
    problems = check_recipients(EXPECTED, 3)(Dumps(ADDRESSES, ADDRESSES[:2], ADDRESSES[2:]))
    assert any("3 dump files for 2 messages" in p for p in problems)
    assert any("other than 3 recipient(s)" in p for p in problems)


def test_a_missing_or_duplicated_recipient_fails():
    problems = check_recipients(EXPECTED, 3)(Dumps(ADDRESSES, [ADDRESSES[0], ADDRESSES[0], ADDRESSES[1]]))
    assert problems == ["recipients at the sink differ from the addresses sent: 1 unexpected "
                        "(e.g. ['rcpt@example.net']), 1 missing (e.g. ['3rcpt@example.net'])"]
