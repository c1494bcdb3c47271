"""Hostile peers and raw-socket tools for tests/reliability/test_hostile_*.py.

- RawSession: an SMTP client that sends exactly the bytes it is given and reads replies, for input
  no well-behaved library would send (NUL, invalid UTF-8, bare LF, a 10 MB line).
- serving_pid() / vm_rss_kib(): which of the daemon's processes holds a client's connection (the
  smtpd worker) and its resident memory, from /proc.
- HostileServer: a tiny TCP server on loopback that answers with whatever a scenario says, for
  what no real peer can be made to send: malformed SMTP replies, garbage where an LDAP response
  belongs, a broken Dovecot auth protocol. Each connection runs `scenario(connection)` in a thread.

Everything listens on and connects to loopback only.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from tests.peers import check_loopback, free_port
from tests.peers.processes import children_map

OUTSIDE = ("127.0.0.2", 0)     # an address outside mynetworks = 127.0.0.1/32, still on loopback
_FINAL_LINE = re.compile(rb"^[0-9]{3}(?: |\r?\n|$)")


class RawSession:
    """A plain SMTP session on a socket: send bytes, read whole replies."""

    def __init__(self, port: int, source: tuple[str, int] = OUTSIDE, host: str = "127.0.0.1",
                 timeout: float = 30.0):
        check_loopback(host)
        self.sock = socket.create_connection((host, port), source_address=source, timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines); b"" once the server has closed."""
        lines = []
        while True:
            line = self.reader.readline(1 << 20)
            if not line:
                return b"".join(lines)
            lines.append(line)
            if _FINAL_LINE.match(line):
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def rest(self) -> bytes:
        """Everything until the server closes."""
        return self.reader.read()

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()

    def __enter__(self) -> "RawSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tcp_inode(local: tuple[str, int], remote: tuple[str, int]) -> str | None:
    """The inode of the IPv4 TCP socket whose ends are `local` and `remote` (/proc/net/tcp)."""
    def encode(address: tuple[str, int]) -> str:
        packed = socket.inet_aton(address[0])[::-1].hex().upper()
        return f"{packed}:{address[1]:04X}"
    wanted = (encode(local), encode(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return fields[9]
    return None


def serving_pid(daemon_pid: int, client: socket.socket) -> int:
    """The daemon process (master or an smtpd worker) holding the server end of `client`."""
    inode = _tcp_inode(client.getpeername(), client.getsockname())
    assert inode, "the server end of the connection is not in /proc/net/tcp"
    target = f"socket:[{inode}]"
    family = [daemon_pid, *_descendants(daemon_pid)]
    for pid in family:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if fd.readlink().as_posix() == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    raise AssertionError(f"no process of the daemon ({family}) holds {target}")


def _descendants(pid: int) -> list[int]:
    tree = children_map()
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def daemon_pids(daemon_pid: int) -> set[int]:
    """The daemon and its own long-lived processes (workers, spawner), without the commands it
    runs for a moment (pipe, local delivery): a crashed worker shows as a missing pid."""
    def is_ours(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/exe").resolve() == Path(f"/proc/{daemon_pid}/exe").resolve()
        except OSError:
            return False
    return {daemon_pid, *filter(is_ours, _descendants(daemon_pid))}


class HostileServer:
    """A TCP server on 127.0.0.1 that runs `scenario(connection)` for every connection it
    accepts (in a thread of its own); `connections` counts them."""

    def __init__(self, scenario: Callable[[socket.socket], None], host: str = "127.0.0.1"):
        check_loopback(host)
        self.scenario = scenario
        self.host = host
        self.port = free_port(host)
        self.connections = 0
        self.errors: list[BaseException] = []
        self._listener = socket.create_server((host, self.port), backlog=50)
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def nexthop(self) -> str:
        return f"[{self.host}]:{self.port}"

    def start(self) -> "HostileServer":
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(30)
        try:
            with connection:
                self.scenario(connection)
        except OSError:
            pass    # the client hung up: fine, it is the client under test
        except BaseException as error:   # noqa: BLE001 - reported by the test
            self.errors.append(error)

    def wait_for_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connections < count:
            assert time.monotonic() < deadline, f"{self.connections} of {count} connections came"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(5)


def read_line(connection: socket.socket, limit: int = 1 << 16) -> bytes:
    """One line from a peer (without the line end), b"" at end of file."""
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < limit:
        byte = connection.recv(1)
        if not byte:
            break
        data += byte
    return bytes(data).rstrip(b"\r\n")
