import pytest

from mailferry.queue import RamQueueStore, SqliteQueueStore


@pytest.fixture(params=["sqlite", "ram"])
def store(request, tmp_path):
    """Each backend in turn: they must behave the same."""
    if request.param == "sqlite":
        opened = SqliteQueueStore(tmp_path / "queue.db")
    else:
        opened = RamQueueStore()
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path):
    opened = SqliteQueueStore(tmp_path / "queue.db")
    yield opened
    opened.close()
