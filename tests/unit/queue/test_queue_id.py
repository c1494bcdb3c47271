import os
import subprocess
import sys
import threading

from mailferry.queue.queue_id import QueueIdGenerator, is_queue_id, new_queue_id, new_queue_ids


def test_ids_look_like_postfix_short_ids():
    queue_id = new_queue_id()
    assert len(queue_id) == 12
    assert queue_id == queue_id.upper()
    int(queue_id, 16)
    assert is_queue_id(queue_id)


def test_ids_are_unique_and_increasing_at_any_rate():
    ids = [new_queue_id() for _ in range(50_000)] + new_queue_ids(50_000)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_a_stopped_clock_does_not_repeat_ids():
    generator = QueueIdGenerator(pid=3, clock=lambda: 1_700_000_000_000_000_000)
    ids = generator.next_ids(5) + generator.next_ids(5)
    assert len(set(ids)) == 10
    assert ids == sorted(ids)


def test_a_clock_stepped_back_does_not_repeat_ids():
    now = [1_700_000_000_000_000_000]
    generator = QueueIdGenerator(pid=3, clock=lambda: now[0])
    before = generator.next_ids(100)
    now[0] -= 10**9
    after = generator.next_ids(100)
    assert not set(before) & set(after)
    assert max(before) < min(after)


def test_process_tag_is_in_the_low_bits():
    clock = lambda: 1_700_000_000_000_000_000  # noqa: E731
    first = QueueIdGenerator(pid=1, clock=clock).next_ids(1000)
    second = QueueIdGenerator(pid=2, clock=clock).next_ids(1000)
    assert not set(first) & set(second)
    assert {int(queue_id, 16) % 16 for queue_id in first} == {1}


def test_skip_past_moves_the_sequence_beyond_a_taken_id():
    generator = QueueIdGenerator(pid=0, clock=lambda: 1_700_000_000_000_000_000)
    taken = generator.next_ids(1)[0]
    ahead = "%012X" % (int(taken, 16) + 16 * 1000)
    generator.skip_past(ahead)
    assert generator.next_ids(1)[0] > ahead


def test_unique_across_threads():
    found: list[str] = []

    def take():
        found.extend(new_queue_ids(1)[0] for _ in range(5000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 20000


def test_unique_across_restarts():
    program = "from mailferry.queue.queue_id import new_queue_ids; print(*new_queue_ids(2000))"
    runs = [subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(3)]
    every = [queue_id for run in runs for queue_id in run]
    assert len(set(every)) == len(every)
    assert max(runs[0]) < min(runs[1]) and max(runs[1]) < min(runs[2])


def test_forked_child_gets_its_own_sequence():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, " ".join(new_queue_ids(100)).encode())
        os._exit(0)
    os.close(write)
    mine = new_queue_ids(100)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        theirs = pipe.read().split()
    assert len(theirs) == 100
    assert {int(queue_id, 16) % 16 for queue_id in theirs} == {pid % 16}
    assert {int(queue_id, 16) % 16 for queue_id in mine} == {os.getpid() % 16}


def test_is_queue_id():
    assert is_queue_id("3F2A1B4C5D")
    assert is_queue_id("6110B9EA281F")
    for wrong in ["", "ALL", "3f2a1b4c5d", "3F2A1B4C5", "3F2A1B4C5D6E7", "3F2A1B4C5G",
                  " 3F2A1B4C5D"]:
        assert not is_queue_id(wrong), wrong
