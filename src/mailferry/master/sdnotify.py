"""systemd's readiness protocol (sd_notify(3)), for a unit with `Type=notify`.

systemd gives the service a datagram socket in NOTIFY_SOCKET (a path, or an abstract
name written with a leading "@"); the service sends newline-separated VAR=VALUE
datagrams to it: READY=1 once it serves, RELOADING=1 (with MONOTONIC_USEC) and READY=1
around a reload, STOPPING=1 when it begins to stop, STATUS=... free text for
`systemctl status`. With NOTIFY_SOCKET unset nothing is sent. The variable is taken out
of the environment at start, so that no child (smtpd workers, the spawner, pipe
commands) can speak for the daemon, as sd_notify's unset_environment does.

A failure to send is ignored: the mail system must not stop because the service
manager went away.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None):
        self.address = address or None

    @classmethod
    def from_environment(cls) -> "Notifier":
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]      # Linux abstract namespace
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
                sender.sendto("\n".join(assignments).encode(), target)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) tell this reload from an older one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                         "STATUS=reloading the configuration")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: open sessions get 421, the queue stays intact")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")
