import os

from mailferry.anvil.clients import AUTH, MAIL, NEWTLS, RCPT, ClientTable


def clock_at(start: float):
    now = [start]
    return now, (lambda: now[0])


def test_counts_per_client_and_service_within_a_window():
    now, clock = clock_at(100.0)
    table = ClientTable(clock=clock)
    assert [table.record(AUTH, "smtp", "192.0.2.1", 60) for _ in range(3)] == [1, 2, 3]
    assert table.record(AUTH, "smtp", "192.0.2.2", 60) == 1
    assert table.record(AUTH, "submission", "192.0.2.1", 60) == 1
    now[0] += 60.0          # anvil: the window lasts while start + unit >= now
    assert table.record(AUTH, "smtp", "192.0.2.1", 60) == 4
    now[0] += 0.1
    assert table.record(AUTH, "smtp", "192.0.2.1", 60) == 1


def test_one_window_for_every_kind_of_event_as_in_anvil():
    now, clock = clock_at(0.0)
    table = ClientTable(clock=clock)
    table.record(MAIL, "smtp", "192.0.2.1", 60)
    now[0] = 50
    assert table.record(RCPT, "smtp", "192.0.2.1", 60) == 1
    assert table.connect("smtp", "192.0.2.1", 60).rate == 1
    now[0] = 61            # the window began with the MAIL at 0
    assert table.record(MAIL, "smtp", "192.0.2.1", 60) == 1
    assert table.rate(RCPT, "smtp", "192.0.2.1", 60) == 0


def test_sessions_are_counted_until_they_disconnect():
    now, clock = clock_at(0.0)
    table = ClientTable(clock=clock)
    first = table.connect("smtp", "192.0.2.1", 60)
    second = table.connect("smtp", "192.0.2.1", 60)
    assert (first.count, second.count, second.rate) == (1, 2, 2)
    table.disconnect(first)
    now[0] = 1000          # long after the rate window: the open session still counts
    third = table.connect("smtp", "192.0.2.1", 60)
    assert (third.count, third.rate) == (2, 1)
    table.disconnect(second)
    table.disconnect(third)
    table.disconnect(third)   # never below zero
    assert table.connect("smtp", "192.0.2.1", 60).count == 1


def test_new_tls_rate_can_be_read_without_counting():
    table = ClientTable()
    assert table.rate(NEWTLS, "smtp", "192.0.2.1", 60) == 0
    table.record(NEWTLS, "smtp", "192.0.2.1", 60)
    assert table.rate(NEWTLS, "smtp", "192.0.2.1", 60) == 1
    assert table.rate(NEWTLS, "smtp", "192.0.2.1", 60) == 1


def forked(table: ClientTable, index: int, work) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            table.use_process_index(index)
            work()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def test_forked_workers_share_counts_and_rates():
    table = ClientTable(processes=2)
    table.record(AUTH, "smtp", "192.0.2.9", 60)
    table.connect("smtp", "192.0.2.9", 60)
    assert forked(table, 1, lambda: (table.record(AUTH, "smtp", "192.0.2.9", 60),
                                     table.connect("smtp", "192.0.2.9", 60))) == 0
    assert table.record(AUTH, "smtp", "192.0.2.9", 60) == 3
    assert table.connect("smtp", "192.0.2.9", 60).count == 3


def test_a_dead_workers_sessions_are_forgotten_and_no_one_elses():
    table = ClientTable(processes=3)
    table.connect("smtp", "192.0.2.9", 60)          # the master's own session

    def die_with_sessions_open():
        for _ in range(5):
            table.connect("smtp", "192.0.2.9", 60)
        os.kill(os.getpid(), 9)

    forked(table, 2, die_with_sessions_open)
    assert table.connect("smtp", "192.0.2.9", 60).count == 7
    table.forget_process(2)
    assert table.connect("smtp", "192.0.2.9", 60).count == 3    # the master's two and this one


def test_a_worker_killed_holding_the_lock_does_not_wedge_the_others():
    import fcntl
    table = ClientTable(processes=2)

    def take_the_lock_and_die():
        fcntl.lockf(table._fd, fcntl.LOCK_EX)
        os.kill(os.getpid(), 9)

    forked(table, 1, take_the_lock_and_die)
    assert table.connect("smtp", "192.0.2.9", 60).count == 1


def test_a_full_neighbourhood_overcounts_rather_than_forgets():
    table = ClientTable(slots=4)
    counts = [table.record(MAIL, "smtp", f"192.0.2.{n}", 60) for n in range(12)]
    assert all(count >= 1 for count in counts) and sum(counts) >= 12
    sessions = [table.connect("smtp", f"192.0.2.{n}", 60).count for n in range(12)]
    assert sum(sessions) >= 12


def test_peaks_are_reported_once_then_start_again():
    now, clock = clock_at(0.0)
    table = ClientTable(clock=clock, wall_clock=lambda: 1_000_000.0)
    for _ in range(3):
        table.connect("smtp", "192.0.2.1", 60)
    table.connect("smtp", "192.0.2.2", 60)
    table.record(MAIL, "smtp", "192.0.2.2", 60)
    peaks, in_use = table.take_peaks(60)
    assert {name: (peak.value, peak.ident) for name, peak in peaks.items()} == {
        "connection": (3, "smtp:192.0.2.1"), "count": (3, "smtp:192.0.2.1"), "message": (1, "smtp:192.0.2.2")}
    assert peaks["count"].when == 1_000_000.0 and in_use == 2
    assert table.take_peaks(60)[0] == {}


def test_statistics_lines_are_anvils():
    import time
    from mailferry.anvil.status import statistics_lines
    when = time.mktime((2026, 12, 6, 4, 50, 0, 0, 0, -1))
    table = ClientTable(wall_clock=lambda: when)
    for _ in range(3):
        table.connect("smtp", "192.0.2.1", 60)
    table.record(RCPT, "submission", "192.0.2.3", 60)
    lines = statistics_lines(table, 60)
    assert lines[:3] == ["statistics: max connection rate 3/60s for (smtp:192.0.2.1) at Dec  6 04:50:00",
                         "statistics: max connection count 3 for (smtp:192.0.2.1) at Dec  6 04:50:00",
                         "statistics: max recipient rate 1/60s for (submission:192.0.2.3) at Dec  6 04:50:00"]
    assert lines[3].startswith("statistics: max cache size 2 at ")
    again = statistics_lines(table, 60)       # the peaks start again from zero
    assert len(again) == 1 and again[0].startswith("statistics: max cache size 2 at ")
