"""Shared by every test under tests/reliability/.

Every test here is also an integration test (it starts real processes). The `reliability` marker
selects (or deselects) the suite: `.venv/bin/python -m pytest -m reliability`.

Randomness is seeded: `rng` prints its seed, and MAILFERRY_RELIABILITY_SEED=N replays a run.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: the reliability suite (tests/reliability)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.integration)


def reliability_seed() -> int:
    """MAILFERRY_RELIABILITY_SEED if set (to replay a failure), else a fresh one."""
    value = os.environ.get("MAILFERRY_RELIABILITY_SEED")
    return int(value) if value else time.time_ns() % 1_000_000_007


@pytest.fixture
def rng(request) -> random.Random:
    """A random.Random whose seed is printed (shown with the test's output when it fails)."""
    seed = reliability_seed()
    print(f"{request.node.nodeid}: MAILFERRY_RELIABILITY_SEED={seed}")
    return random.Random(seed)
