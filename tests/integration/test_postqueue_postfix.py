"""The queue listing against a real, private Postfix 3.7 (integration).

A private Postfix instance (its own config and queue directory under a temp
directory, no inet listeners) is given a queue with every feature of the
listing: deferred mail with one reason, with several reasons, with a reason
longer than the line, the null sender, a 6-digit size, a held message (`!`)
and an active one (`*`, held in delivery by a server that never answers).
Then:

1. our formatter, fed Postfix's own `postqueue -j`, must print exactly
   Postfix's `postqueue -p`, in both the short and the long-ID layout;
2. `mailferry postqueue -p` over a mailferry queue holding the same messages
   must print the same entries, header and trailer.

Needs root and Debian's postfix package; if Postfix cannot start, the test
FAILS, as the project's peers do. Run as a script to re-record the golden
files that the unit tests use:

    .venv/bin/python -m tests.integration.test_postqueue_postfix tests/unit/local/golden
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailferry.cli.queue_listing import format_listing
from mailferry.message import ACTIVE, DEFERRED_QUEUE, HOLD
from tests.peers.postfix import MASTER_CF_BASE
from tests.unit.local.queue_fixtures import add_message, entries, listed_from_json, make_instance, open_store

LONG_REASON = ("Service temporarily unavailable because the remote side keeps saying that it is too "
               "busy to accept any more mail right now, try later")
# The peers' master.cf (tests/peers/postfix.py), plus local(8) for this queue's recipients.
MASTER_CF = MASTER_CF_BASE.format(qmgr="") + "local     unix  -       n       n       -       -       local\n"


class SilentServer:
    """Accepts SMTP connections and never says a word: Postfix's message stays active."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class PrivatePostfix:
    def __init__(self, root: Path, silent_port: int, refused_port: int) -> None:
        self.root = root
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.maillog = root / "maillog"
        self.silent_port = silent_port
        self.refused_port = refused_port

    def start(self) -> None:
        missing = [tool for tool in ("postfix", "postqueue", "postsuper", "sendmail") if not shutil.which(tool)]
        assert not missing, f"Postfix is not installed ({', '.join(missing)}): run scripts/setup --test"
        assert os.geteuid() == 0, "a private Postfix instance needs root"
        for directory in (self.etc, self.spool, self.root / "data"):
            directory.mkdir(parents=True)
        shutil.chown(self.root / "data", "postfix")
        (self.etc / "master.cf").write_text(MASTER_CF)
        self.write_main_cf(long_queue_ids=False)
        self.run("postfix", "-c", self.etc, "start")
        self.wait_for(lambda: (self.spool / "public" / "pickup").exists(), "Postfix's pickup socket")

    def write_main_cf(self, long_queue_ids: bool) -> None:
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.root / 'data'}
myhostname = pfref.example.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [127.0.0.1]:{self.refused_port}
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
smtp_connect_timeout = 2s
enable_long_queue_ids = {'yes' if long_queue_ids else 'no'}
transport_maps = inline:{{ {{slow.example=smtp:[127.0.0.1]:{self.silent_port}}}, \
{{retry.example=retry:4.7.1 {LONG_REASON}}}, {{other.example=retry:4.2.2 Mailbox full}} }}
""")

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, timeout=60)

    def submit(self, sender: str, recipients: list[str], body: bytes = b"hello\n") -> None:
        self.run("sendmail", "-C", self.etc, "-f", sender, *recipients,
                 stdin=b"Subject: listing test\n\n" + body)

    def postqueue(self, flag: str) -> str:
        return self.run("postqueue", "-c", self.etc, flag, env={"TZ": "UTC"}).decode()

    def postsuper(self, *args: str) -> None:
        self.run("postsuper", "-c", self.etc, *args)

    def queue(self) -> list[dict]:
        return [json.loads(line) for line in self.postqueue("-j").splitlines()]

    def run(self, *command, stdin: bytes | None = None, env: dict | None = None) -> bytes:
        completed = subprocess.run([str(part) for part in command], input=stdin, capture_output=True,
                                   env={**os.environ, **(env or {})}, timeout=60)
        assert completed.returncode == 0, (
            f"{command[0]} failed ({completed.returncode}): {completed.stderr.decode()}\n"
            f"maillog:\n{self._maillog_tail()}")
        return completed.stdout

    def wait_for(self, condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"Postfix: no {what} after {timeout}s\n{self._maillog_tail()}"
            time.sleep(0.2)

    def _maillog_tail(self) -> str:
        try:
            return "\n".join(self.maillog.read_text().splitlines()[-15:])
        except OSError:
            return "(no maillog)"


def settled(queue: list[dict], expected_count: int) -> bool:
    """Every message is in; every recipient not held up by the silent server has a delay reason,
    and the newest message for the silent server is active."""
    if len(queue) != expected_count or any(m["queue_name"] in ("incoming", "maildrop") for m in queue):
        return False
    slow = [message for message in queue if message["recipients"][0]["address"].endswith("@slow.example")]
    return (max(slow, key=lambda message: message["arrival_time"])["queue_name"] == "active" and
            all("delay_reason" in recipient for message in queue if message not in slow
                for recipient in message["recipients"]))


def build_reference_queue(postfix: PrivatePostfix) -> None:
    postfix.submit("alice@example.org", ["bob@example.net", "carol@example.net"])
    postfix.submit("", ["dave@example.net"])
    postfix.submit("averyveryverylongsenderaddress.with.many.parts@subdomain.example.org",
                   ["eve@example.net"], b"y" * 76 + b"\n" + (b"z" * 76 + b"\n") * 3000)
    postfix.submit("bob@example.org", ["a@retry.example", "b@other.example", "c@retry.example",
                                       "d@example.net"])
    postfix.submit("bob@example.org",
                   ["very.long.recipient.address.that.goes.beyond.the.usual.column.width@retry.example"])
    postfix.submit("carol@example.org", ["x@slow.example"])
    postfix.wait_for(lambda: settled(postfix.queue(), 6), "settled queue of 6 messages")
    alice = next(m for m in postfix.queue() if m["sender"] == "alice@example.org")
    postfix.postsuper("-h", alice["queue_id"])


def snapshot(postfix: PrivatePostfix) -> tuple[str, str]:
    """Postfix's -j and -p of the same queue state (retried if the queue moved in between)."""
    for _ in range(20):
        before, listing, after = postfix.postqueue("-j"), postfix.postqueue("-p"), postfix.postqueue("-j")
        if before == after and '"incoming"' not in before:
            return before, listing
        time.sleep(0.3)
    raise AssertionError("Postfix's queue kept changing while it was listed")


_QUEUES = {"active": ACTIVE, "deferred": DEFERRED_QUEUE, "hold": HOLD}


def mailferry_listing(postfix_json: str, tmp_path: Path, extra_main_cf: str = "") -> str:
    """`mailferry postqueue -p` over a mailferry queue holding Postfix's messages."""
    config_dir, queue_directory = make_instance(tmp_path, extra_main_cf)
    store = open_store("sqlite", queue_directory)
    for item in map(json.loads, postfix_json.splitlines()):
        sender = "" if item["sender"] == "MAILER-DAEMON" else item["sender"]
        reasons = {r["address"]: r["delay_reason"] for r in item["recipients"] if "delay_reason" in r}
        add_message(store, sender, [r["address"] for r in item["recipients"]], _QUEUES[item["queue_name"]],
                    reasons, size=item["message_size"], arrival_time=item["arrival_time"],
                    queue_id=item["queue_id"])
    store.close()
    completed = subprocess.run([sys.executable, "-m", "mailferry", "-c", str(config_dir), "postqueue", "-p"],
                               capture_output=True, text=True, env={**os.environ, "TZ": "UTC"}, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def record(directory: Path | None) -> dict[str, tuple[str, str]]:
    """Run the whole scenario; {"short": (-j, -p), "long": (-j, -p)}, also written to `directory`."""
    import tempfile
    # Not pytest's tmp_path: Postfix's daemons run as postfix and must reach the queue directory.
    root = Path(tempfile.mkdtemp(prefix="mailferry-pfref-", dir="/tmp"))
    os.chmod(root, 0o755)
    silent = SilentServer()
    postfix = PrivatePostfix(root / "instance", silent.port, closed_port())
    try:
        postfix.start()
        build_reference_queue(postfix)
        short = snapshot(postfix)
        # A restart, not a reload: a reload leaves the message stuck in delivery in "incoming".
        postfix.stop()
        postfix.write_main_cf(long_queue_ids=True)
        postfix.run("postfix", "-c", postfix.etc, "start")
        postfix.submit("dan@example.org", ["y@other.example"])
        postfix.submit("erin@example.org", ["z@slow.example"])
        postfix.wait_for(lambda: settled(postfix.queue(), 8), "settled queue of 8 messages")
        long = snapshot(postfix)
    finally:
        postfix.stop()
        silent.close()
        shutil.rmtree(root, ignore_errors=True)
    results = {"short": short, "long": long}
    if directory is not None:
        for layout, (as_json, listing) in results.items():
            (directory / f"postfix-{layout}.json").write_text(as_json)
            (directory / f"postfix-{layout}.txt").write_text(listing)
    return results


@pytest.mark.integration
def test_listing_matches_a_real_postfix(tmp_path):
    results = record(None)
    for layout, (as_json, listing) in results.items():
        long_layout = layout == "long"
        assert "*" in listing and "!" in listing and "MAILER-DAEMON" in listing
        assert format_listing(listed_from_json(as_json), long_layout, clock=time.gmtime) == listing
        extra = "enable_long_queue_ids = yes\n" if long_layout else ""
        ours = mailferry_listing(as_json, tmp_path / f"mailferry-{layout}", extra)
        assert entries(ours) == entries(listing)


if __name__ == "__main__":
    recorded = record(Path(sys.argv[1]))
    for name, (_, text) in recorded.items():
        print(f"== {name}\n{text}")
