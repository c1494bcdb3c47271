"""queue_directory/pid/master.pid, as Postfix keeps it: a pid file whose
process is gone is stale and means "not running"."""

import os
import subprocess
import sys

import pytest

from mailferry.master.pidfile import pid_path, remove_pid, running_pid, write_pid


@pytest.fixture
def queue_directory(tmp_path):
    return str(tmp_path)


def write_raw(queue_directory, text):
    path = pid_path(queue_directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def other_live_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield child.pid
    child.kill()
    child.wait()


def test_the_pid_file_lives_under_queue_directory_pid(queue_directory):
    assert pid_path(queue_directory) == os.path.join(queue_directory, "pid", "master.pid")


def test_no_pid_file_means_not_running(queue_directory):
    assert running_pid(queue_directory) is None


def test_write_pid_records_this_process_and_it_is_found_running(queue_directory):
    write_pid(queue_directory)
    with open(pid_path(queue_directory), encoding="ascii") as handle:
        text = handle.read()
    assert text.endswith("\n") and int(text.strip()) == os.getpid()
    assert running_pid(queue_directory) == os.getpid()


def test_a_running_process_is_found(queue_directory, other_live_process):
    write_raw(queue_directory, f"{other_live_process:>10}\n")
    assert running_pid(queue_directory) == other_live_process


def test_a_stale_pid_file_is_ignored(queue_directory):
    write_raw(queue_directory, f"{dead_pid()}\n")
    assert running_pid(queue_directory) is None


def test_a_live_process_we_may_not_signal_still_counts_as_running(queue_directory):
    # pid 1 always exists; an unprivileged caller gets EPERM from kill(1, 0), which still means "alive".
    write_raw(queue_directory, "1\n")
    assert running_pid(queue_directory) == 1


@pytest.mark.parametrize("text", ["", "\n", "garbage\n", "0\n", "-5\n"])
def test_an_unusable_pid_file_means_not_running(queue_directory, text):
    write_raw(queue_directory, text)
    assert running_pid(queue_directory) is None


def test_remove_pid_removes_our_own_file(queue_directory):
    write_pid(queue_directory)
    remove_pid(queue_directory)
    assert not os.path.exists(pid_path(queue_directory))


def test_remove_pid_removes_a_stale_file(queue_directory):
    write_raw(queue_directory, f"{dead_pid()}\n")
    remove_pid(queue_directory)
    assert not os.path.exists(pid_path(queue_directory))


def test_remove_pid_leaves_another_running_daemons_file(queue_directory, other_live_process):
    write_raw(queue_directory, f"{other_live_process}\n")
    remove_pid(queue_directory)
    assert running_pid(queue_directory) == other_live_process


def test_remove_pid_without_a_file_is_quiet(queue_directory):
    remove_pid(queue_directory)
    assert not os.path.exists(pid_path(queue_directory))
