"""Waking the running daemon from the command line tools.

The daemon listens on a unix stream socket, `queue_directory/public/control`.
A tool connects, writes one command line (`pickup` after sendmail dropped a
message, `flush` for postqueue -f) and reads one line back (`ok` or an
error text). The tools never depend on the answer: with the daemon down, the
message waits in maildrop or in the queue, and the daemon finds it when it
starts.
"""

from __future__ import annotations

import os
import socket

COMMANDS = ("pickup", "flush")


def control_socket_path(queue_directory: str) -> str:
    return os.path.join(queue_directory, "public", "control")


def notify(queue_directory: str, command: str, timeout: float = 2.0) -> bool:
    """Tell the daemon `command`; False when no daemon answered (which is fine)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(control_socket_path(queue_directory))
            client.sendall(command.encode("ascii") + b"\n")
            return client.recv(64).startswith(b"ok")
    except OSError:
        return False
