"""The control socket: a command line tool wakes the running daemon.

The daemon side (ControlServer) runs in an asyncio loop on its own thread,
as it does in the daemon; the tool side (notify) is plain blocking code.
"""

import asyncio
import os
import shutil
import socket
import stat
import tempfile
import threading

import pytest

from mailferry.control import COMMANDS, control_socket_path, notify
from mailferry.maillog import MemoryLog
from mailferry.master.control_server import ControlServer


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="control-test-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(5)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def queue_directory():
    # A short path: a unix socket's path is limited to about 100 bytes.
    directory = tempfile.mkdtemp(prefix="mf-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Calls:
    def __init__(self):
        self.names: list[str] = []
        self.threads: list[str] = []
        self.called = threading.Event()

    def handler(self, name):
        def handle():
            self.names.append(name)
            self.threads.append(threading.current_thread().name)
            self.called.set()
        return handle


@pytest.fixture
def server(queue_directory):
    """A running ControlServer with a `pickup` handler only."""
    loop = LoopThread()
    calls = Calls()
    control = ControlServer(queue_directory, {"pickup": calls.handler("pickup")}, MemoryLog())
    loop.run(control.start())
    yield control, calls
    loop.run(control.stop())
    loop.close()


def test_the_socket_is_queue_directory_public_control(queue_directory):
    assert control_socket_path(queue_directory) == os.path.join(queue_directory, "public", "control")


def test_notify_reaches_the_running_daemon(server, queue_directory):
    _, calls = server
    assert notify(queue_directory, "pickup") is True
    assert calls.called.wait(5)
    assert calls.names == ["pickup"]
    assert calls.threads == ["control-test-loop"]  # run in the daemon's loop, not the caller's thread


def test_each_notify_calls_the_handler_once(server, queue_directory):
    _, calls = server
    assert notify(queue_directory, "pickup") and notify(queue_directory, "pickup")
    assert calls.names == ["pickup", "pickup"]


def test_notify_without_a_daemon_is_false(queue_directory):
    assert notify(queue_directory, "pickup") is False


def test_notify_to_a_socket_left_by_a_dead_daemon_is_false(queue_directory):
    path = control_socket_path(queue_directory)
    os.makedirs(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_over:
        left_over.bind(path)
    assert os.path.exists(path)
    assert notify(queue_directory, "pickup", timeout=1) is False


def test_notify_refuses_an_unknown_command_before_connecting(server, queue_directory):
    _, calls = server
    with pytest.raises(ValueError, match="bogus"):
        notify(queue_directory, "bogus")
    assert calls.names == []


def test_the_server_refuses_an_unknown_command(server, queue_directory):
    _, calls = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(control_socket_path(queue_directory))
        client.sendall(b"bogus\n")
        reply = client.recv(64)
    assert reply.startswith(b"error")
    assert calls.names == []


def test_a_known_command_without_a_handler_is_refused(server, queue_directory):
    _, calls = server
    assert "flush" in COMMANDS
    assert notify(queue_directory, "flush") is False
    assert calls.names == []


def test_any_local_user_may_write_to_the_socket(server, queue_directory):
    mode = stat.S_IMODE(os.stat(control_socket_path(queue_directory)).st_mode)
    assert mode == 0o666


def test_start_replaces_a_socket_left_by_a_dead_daemon_and_stop_removes_it(queue_directory):
    path = control_socket_path(queue_directory)
    os.makedirs(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_over:
        left_over.bind(path)
    loop = LoopThread()
    calls = Calls()
    control = ControlServer(queue_directory, {"pickup": calls.handler("pickup")}, MemoryLog())
    try:
        loop.run(control.start())
        assert notify(queue_directory, "pickup") is True
        loop.run(control.stop())
        assert not os.path.exists(path)
        assert notify(queue_directory, "pickup") is False
    finally:
        loop.close()
