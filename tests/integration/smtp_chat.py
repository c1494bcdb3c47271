"""A raw SMTP client for tests that need to see every byte and every close: one socket, a source
address of the test's choice (127.0.0.2, 127.0.0.3, ... are distinct untrusted clients on loopback),
and whole replies read as they arrive."""

from __future__ import annotations

import socket
import ssl
import time


class Chat:
    def __init__(self, port: int, source: str, timeout: float = 20.0):
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), source_address=(source, 0), timeout=timeout)
        self._buffer = b""

    def reply(self) -> str:
        """One whole reply (all its lines), or "" when the server closed the connection first."""
        lines = []
        while True:
            while b"\r\n" not in self._buffer:
                data = self.sock.recv(4096)
                if not data:
                    return "\r\n".join(lines)
                self._buffer += data
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\r\n".join(lines)

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def closed_by_server(self, timeout: float = 20.0) -> bool:
        """True once the server has closed the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True
        except (TimeoutError, socket.timeout):
            return False

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname="mx.example.test")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_until(condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
