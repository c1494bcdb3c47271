"""A small policy server (Postfix's SMTPD_POLICY_README protocol) on loopback, for tests.

    server = PolicyServer(lambda request: "REJECT no" if request["sender"] == "bad@x" else "DUNNO").start()
    ... check_policy_service inet:127.0.0.1:{server.port} ...
    server.requests      # every request it got, as dicts, in order

Each connection is served by its own thread and may carry many requests, as
Postfix's and mailferry's clients reuse connections.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable


class PolicyServer:
    def __init__(self, decide: Callable[[dict[str, str]], str], host: str = "127.0.0.1"):
        self.decide = decide
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    request: dict[str, str] = {}
                    while True:
                        line = self.rfile.readline()
                        if not line:
                            return
                        text = line.decode("utf-8", "replace").rstrip("\r\n")
                        if not text:
                            break
                        name, _, value = text.partition("=")
                        request[name] = value
                    with outer.lock:
                        outer.requests.append(request)
                    self.wfile.write(f"action={outer.decide(request)}\n\n".encode())
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, 0), Handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"inet:{self.host}:{self.port}"

    def start(self) -> "PolicyServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
