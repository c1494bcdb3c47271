from mailferry.auth.anvil import RateCounter


def test_counts_per_client_and_service_within_a_window():
    now = [100.0]
    counter = RateCounter(clock=lambda: now[0])
    assert [counter.count("smtp", "192.0.2.1", 60) for _ in range(3)] == [1, 2, 3]
    assert counter.count("smtp", "192.0.2.2", 60) == 1
    assert counter.count("submission", "192.0.2.1", 60) == 1
    now[0] += 59.9
    assert counter.count("smtp", "192.0.2.1", 60) == 4
    now[0] += 0.2          # the window that began at 100 s is over
    assert counter.count("smtp", "192.0.2.1", 60) == 1


def test_forked_workers_share_the_counts():
    import os
    counter = RateCounter()
    counter.count("smtp", "192.0.2.9", 60)
    pid = os.fork()
    if pid == 0:
        counter.count("smtp", "192.0.2.9", 60)
        os._exit(0)
    os.waitpid(pid, 0)
    assert counter.count("smtp", "192.0.2.9", 60) == 3


def test_a_full_neighbourhood_overcounts_rather_than_forgets():
    counter = RateCounter(slots=4)
    counts = [counter.count("smtp", f"192.0.2.{n}", 60) for n in range(12)]
    assert all(count >= 1 for count in counts) and sum(counts) >= 12
