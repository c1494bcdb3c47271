"""A small SMTP server whose misbehaviour a test chooses, for the peer-fault tests.

    server = ScriptedSmtpServer(mode="drop_mid_data").start()
    ...                      # the daemon relays to server.nexthop
    server.mode = "accept"   # healthy from the next session on
    server.wait_for_messages(1)

Modes (read at each DATA):
  accept            354, read to the final dot, 250; the message is recorded in `accepted`.
  drop_mid_data     354, read part of the message (DROP_AFTER bytes), close the connection: no reply.
  stall_after_dot   354, read to the final dot, then say nothing until the client gives up
                    (as a destination past smtp_data_done_timeout); nothing is recorded: a message
                    this server never answered 250 for was not delivered.
Everything but DATA is answered 250 (QUIT 221). Threads in the test's own process; loopback only.
`data_started` counts every DATA begun, `dropped` and `stalled` the sessions cut short.
"""

from __future__ import annotations

import socketserver
import threading
import time

from tests.peers import check_loopback, free_port

DROP_AFTER = 200      # bytes of the message read before a drop_mid_data close


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        owner = self.server.owner
        self.request.settimeout(120)
        self._send(b"220 scripted.test ESMTP\r\n")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"QUIT":
                self._send(b"221 2.0.0 Bye\r\n")
                return
            if verb == b"DATA":
                if not self._data(owner):
                    return
            elif verb == b"EHLO":
                self._send(b"250-scripted.test\r\n250 8BITMIME\r\n")
            else:
                self._send(b"250 2.0.0 Ok\r\n")

    def _data(self, owner: "ScriptedSmtpServer") -> bool:
        """One DATA; False when the session is over."""
        mode = owner.mode
        with owner.lock:
            owner.data_started += 1
        self._send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        content = bytearray()
        while True:
            line = self.rfile.readline(1 << 20)
            if not line:
                return False
            if line == b".\r\n":
                break
            content += line
            if mode == "drop_mid_data" and len(content) >= DROP_AFTER:
                with owner.lock:
                    owner.dropped += 1
                self.request.close()
                return False
        if mode == "stall_after_dot":
            with owner.lock:
                owner.stalled += 1
            try:
                while self.request.recv(4096):   # until the client hangs up
                    pass
            except OSError:
                pass
            return False
        with owner.lock:
            owner.accepted.append(bytes(content))
        self._send(b"250 2.0.0 Ok: queued\r\n")
        return True

    def _send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    owner: "ScriptedSmtpServer"


class ScriptedSmtpServer:
    def __init__(self, mode: str = "accept", host: str = "127.0.0.1", port: int = 0):
        self.mode = mode
        self.host = check_loopback(host)
        self.port = port or free_port(host)
        self.lock = threading.Lock()
        self.accepted: list[bytes] = []
        self.data_started = self.dropped = self.stalled = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def nexthop(self) -> str:
        return f"[{self.host}]:{self.port}"

    def start(self) -> "ScriptedSmtpServer":
        self._server = _Server((self.host, self.port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-smtp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for_messages(self, count: int, timeout: float = 60.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                accepted = list(self.accepted)
            if len(accepted) >= count:
                return accepted
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(accepted)} of {count} messages after {timeout} s "
                                     f"(DATA begun {self.data_started}, dropped {self.dropped}, "
                                     f"stalled {self.stalled})")
            time.sleep(0.05)

    def wait_for(self, what: str, count: int = 1, timeout: float = 60.0) -> None:
        """Until `what` ("dropped", "stalled", "data_started") reaches `count`."""
        deadline = time.monotonic() + timeout
        while getattr(self, what) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} = {getattr(self, what)}, not {count}, after {timeout} s")
            time.sleep(0.05)
