"""The test milter (tests/peers/pymilter_peer.py, pymilter on libmilter) as a peer process.

    milter = TestMilter(peer_tempdir("milter-")).start()
    ...  # smtpd_milters = milter.socket  (inet:127.0.0.1:PORT)
    [seen] = milter.wait_for_records(1)      # what it saw: macros per stage, envelope, headers, body
    milter.stop()

It runs with the system Python (/usr/bin/python3), where Debian's python3-milter lives.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.peers import PeerError, free_port, stop_process, wait_for_port

SCRIPT = Path(__file__).with_name("pymilter_peer.py")
SYSTEM_PYTHON = "/usr/bin/python3"


class TestMilter:
    __test__ = False   # not a pytest class

    def __init__(self, directory: Path, unix: bool = False):
        """`unix`: listen on a unix-domain socket in `directory` rather than a loopback port."""
        self.directory = directory
        self.records = directory / "records"
        self.port = 0
        self.unix_path = directory / "milter.sock" if unix else None
        self.process: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        """The milter's address as main.cf writes it."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> "TestMilter":
        self.records.mkdir(parents=True, exist_ok=True)
        log = self.directory / "milter.log"
        if self.unix_path is not None:
            listen = f"unix:{self.unix_path}"
        else:
            self.port = free_port()
            listen = f"inet:{self.port}@127.0.0.1"
        with open(log, "wb") as out:
            self.process = subprocess.Popen([SYSTEM_PYTHON, str(SCRIPT), listen, str(self.records)], stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        if self.unix_path is None:
            wait_for_port("127.0.0.1", self.port, process=self.process, log=log, what="test milter (pymilter)")
        else:
            self._wait_for_socket(log)
        return self

    def _wait_for_socket(self, log: Path) -> None:
        """Wait for the unix socket, and open it to the daemon's unprivileged smtpd workers."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"test milter (pymilter) exited with {self.process.returncode}: "
                                f"{log.read_text()[-2000:]}")
            if self.unix_path.exists():
                self.unix_path.chmod(0o666)
                return
            time.sleep(0.05)
        raise PeerError(f"test milter (pymilter) made no socket {self.unix_path} in 20 s")

    def stop(self) -> None:
        stop_process(self.process, timeout=5)
        self.process = None

    def records_seen(self) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted(self.records.glob("*.json"))]

    def clear(self) -> None:
        for path in self.records.glob("*.json"):
            path.unlink()

    def wait_for_records(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records_seen()
            if len(records) >= count:
                return records
            time.sleep(0.05)
        raise PeerError(f"the test milter recorded {len(self.records_seen())} messages, not {count}, "
                        f"in {timeout:.0f} s")
