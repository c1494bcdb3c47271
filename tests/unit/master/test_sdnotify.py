"""sd_notify's datagram protocol (master/sdnotify.py), against a socket the test owns."""

import os
import socket

from mailferry.master.sdnotify import Notifier


def _receiver(path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(5)
    return receiver


def test_nothing_is_sent_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_the_variable_is_taken_out_of_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    notifier = Notifier.from_environment()
    assert notifier.enabled and "NOTIFY_SOCKET" not in os.environ   # no child can speak for us


def test_ready_reloading_stopping_datagrams(tmp_path):
    path = tmp_path / "notify"
    with _receiver(path) as receiver:
        notifier = Notifier(str(path))
        notifier.ready("accepting mail")
        assert receiver.recv(4096).decode().split("\n") == ["READY=1", "STATUS=accepting mail",
                                                             f"MAINPID={os.getpid()}"]
        notifier.reloading()
        reloading = receiver.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert int(reloading[1].partition("=")[2]) > 0
        notifier.stopping()
        assert receiver.recv(4096).decode().startswith("STOPPING=1\n")


def test_abstract_socket_name(tmp_path):
    name = f"mailferry-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        assert Notifier("@" + name).status("hello")
        assert receiver.recv(4096) == b"STATUS=hello"


def test_a_vanished_manager_is_not_an_error(tmp_path):
    assert Notifier(str(tmp_path / "nobody-listens")).ready("x") is False


def test_logs_go_to_syslog_when_stderr_is_the_journal(monkeypatch):
    from mailferry.master.server import _stderr_is_the_journal
    status = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    assert _stderr_is_the_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino + 1}")   # stderr redirected elsewhere
    assert not _stderr_is_the_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not _stderr_is_the_journal()
