"""queue_minfree and the 1.5 x message_size_limit rule (Postfix's smtpd_check_queue), in blocks."""

import os
from types import SimpleNamespace

import pytest

from mailferry.smtpd import queue_space
from mailferry.smtpd.queue_space import QueueSpace

BLOCK = 4096


def with_free_blocks(monkeypatch, free: int) -> None:
    monkeypatch.setattr(queue_space.os, "statvfs",
                        lambda path: SimpleNamespace(f_frsize=BLOCK, f_bsize=BLOCK, f_bavail=free))


@pytest.mark.parametrize("free, minfree, limit, refused", [
    (1000, 0, 0, False),                    # no limits at all
    (0, 0, 0, True),                        # nothing free: even "no limit" refuses (0 >= 0)
    (1000, 999 * BLOCK, 0, False),          # minfree below the free blocks
    (1000, 1000 * BLOCK, 0, True),          # minfree == free blocks: refused (>=)
    (1500, 0, 999 * BLOCK, False),          # 999 < 1500 / 1.5
    (1500, 0, 1000 * BLOCK, True),          # 1000 >= 1500 / 1.5
    (1500, 0, 1000 * BLOCK - 1, False),     # whole blocks, as Postfix counts them
])
def test_postfix_rule(monkeypatch, free, minfree, limit, refused):
    with_free_blocks(monkeypatch, free)
    shortage = QueueSpace("/queue", minfree, limit).shortage()
    assert (shortage is not None) == refused
    if refused:
        assert shortage == f"not enough free space in mail queue: {free * BLOCK} bytes < 1.5*message size limit"


def test_a_queue_directory_that_cannot_be_measured_is_left_to_the_queue(tmp_path):
    assert QueueSpace(str(tmp_path / "missing"), 10 ** 12, 0).shortage() is None


def test_the_real_file_system_of_a_directory_is_measured(tmp_path):
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    assert free > 0
    assert QueueSpace(str(tmp_path), 0, 0).shortage() is None
    assert QueueSpace(str(tmp_path), free + (1 << 30), 0).shortage() is not None
