"""Waking the running daemon from the command line tools.

The daemon listens on a unix stream socket, `queue_directory/public/control`.
A tool connects, writes one command line (`pickup` after sendmail dropped a
message, `flush` for postqueue -f) and reads one line back (`ok` or an
error text). The tools never depend on the answer: with the daemon down, the
message waits in maildrop or in the queue, and the daemon finds it when it
starts.

`showq` answers with the queue itself, one JSON object per message, then
closes: the queue database is mail_owner's alone, so this is how any user's
mailq reads it, as Postfix's showq service serves postqueue -p.
"""

from __future__ import annotations

import os
import socket

COMMANDS = ("pickup", "flush", "showq")


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


def request(queue_directory: str, command: str, timeout: float = 30.0) -> bytes | None:
    """Send `command` and read the whole answer; None when no daemon answered."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    chunks = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(control_socket_path(queue_directory))
            client.sendall(command.encode("ascii") + b"\n")
            while chunk := client.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks)
