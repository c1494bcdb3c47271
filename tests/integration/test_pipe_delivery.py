"""pipe(8) end to end: the seed's Cyrus `deliver` service, run by the real daemon through its spawner.

A stand-in for Cyrus `deliver` sits at a lib64 path, as on the seed's x86_64
machine, under the seed's argv (`-e -r ${sender} -m ${extension} ${user}`),
as user=daemon (mail_owner is nobody here). Each run records its argv, uid,
environment, pid and standard input in a directory of its own; a mode file
says what it does next: exit 0, 75 or 67 with a message, or hang.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import time
from pathlib import Path

import pytest

from tests.integration.conftest import world_readable_tempdir
from tests.peers import PeerError

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

PIPE_USER = "daemon"      # an unprivileged account that is neither root nor mail_owner (nobody)
ARGV_TAIL = "-e -r ${sender} -m ${extension} ${user}"

DELIVER = """#!/bin/sh
# A stand-in for Cyrus deliver: record this run, then do what MODE says.
run=$(mktemp -d "{records}/run.XXXXXX")
printf '%s\\0' "$0" "$@" > "$run/argv"
id -u > "$run/uid"
env > "$run/env"
echo $$ > "$run/pid"
cat > "$run/stdin.part" && mv "$run/stdin.part" "$run/stdin"
for last in "$@"; do :; done
case $(cat "{mode}") in
  75) echo "deliver: Mailbox is locked: user.$last"; exit 75 ;;
  67) echo "deliver: Mailbox does not exist: user.$last"; exit 67 ;;
  hang) touch "$run/hanging"; exec sleep 600 ;;
esac
exit 0
"""


class CyrusStandIn:
    """TMP/usr/lib64/cyrus-imapd/deliver and the runs it recorded."""

    def __init__(self, root: Path):
        self.root = root
        self.program = root / "usr" / "lib64" / "cyrus-imapd" / "deliver"
        self.records = root / "records"
        self.mode_file = root / "mode"
        self.program.parent.mkdir(parents=True)
        for directory in (root / "usr", root / "usr" / "lib64", self.program.parent):
            directory.chmod(0o755)
        self.program.write_text(DELIVER.replace("{records}", str(self.records)).replace("{mode}", str(self.mode_file)))
        self.program.chmod(0o755)
        self.records.mkdir()
        account = pwd.getpwnam(PIPE_USER)
        os.chown(self.records, account.pw_uid, account.pw_gid)
        self.set_mode("0")

    def set_mode(self, mode: str) -> None:
        self.mode_file.write_text(mode + "\n")
        self.mode_file.chmod(0o644)

    def runs(self) -> list[Path]:
        """Finished recordings (stdin read to the end), oldest first."""
        done = [run for run in self.records.iterdir() if (run / "stdin").exists()]
        return sorted(done, key=lambda run: run.stat().st_mtime_ns)

    def wait_for_runs(self, count: int, timeout: float = 30.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs()
            if len(runs) >= count:
                return runs
            time.sleep(0.05)
        raise AssertionError(f"{len(self.runs())} runs of {self.program}, wanted {count}")

    @staticmethod
    def argv(run: Path) -> list[str]:
        return (run / "argv").read_bytes().decode().split("\0")[:-1]


@pytest.fixture
def cyrus():
    root = world_readable_tempdir("mailferry-cyrus-")
    yield CyrusStandIn(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cyrus_daemon(daemon_factory, smtp_sink, cyrus):
    """The seed's cyrus service; mail for cyrus.example goes to it, mail for sender.example
    (bounces to alice) to the sink."""
    def make(**extra: str):
        service = (f"cyrus unix - n n - - pipe\n"
                   f"  flags=R user={PIPE_USER} argv={cyrus.program} {ARGV_TAIL}\n")
        transports = f"inline:{{ cyrus.example=cyrus:, sender.example=smtp:{smtp_sink.nexthop} }}"
        return daemon_factory(extra_services=service, transport_maps=transports, recipient_delimiter="+",
                              **extra).start()
    return make


def send(daemon, recipients: list[str], subject: str = "for cyrus", body: str = "Hello.\r\n.leading dot\r\n",
         sender: str = "alice@sender.example") -> bytes:
    message = (f"From: <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n\r\n{body}").encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail(sender, recipients, message) == {}
    return message


def test_exit_0_delivers_with_the_seeds_argv_as_the_service_user(cyrus_daemon, cyrus):
    daemon = cyrus_daemon()
    send(daemon, ["john.smith+inbox@cyrus.example"])
    [run] = cyrus.wait_for_runs(1)
    assert cyrus.argv(run) == [str(cyrus.program), "-e", "-r", "alice@sender.example", "-m", "inbox", "john.smith"]
    uid = int((run / "uid").read_text())
    assert uid == pwd.getpwnam(PIPE_USER).pw_uid and uid != 0
    stdin = (run / "stdin").read_bytes()
    assert stdin.startswith(b"Return-Path: <alice@sender.example>\n")   # flags=R
    assert b"\r" not in stdin                                          # eol= is LF by default
    assert b"\nSubject: for cyrus\n" in stdin and stdin.endswith(b"\n\nHello.\n.leading dot\n")
    environment = dict(line.split("=", 1) for line in (run / "env").read_text().splitlines() if "=" in line)
    assert environment["PATH"] == "/usr/bin:/bin"
    assert environment["MAIL_CONFIG"] == str(daemon.config_dir)
    assert "HOME" not in environment and "MAILFERRY_NAMESERVERS" not in environment
    log = daemon.wait_for_log("status=sent")
    assert ("to=<john.smith+inbox@cyrus.example>, relay=cyrus, " in log
            and "dsn=2.0.0, status=sent (delivered via cyrus service)" in log), log
    daemon.wait_for_log(": removed")


def test_two_recipients_run_the_command_once_each(cyrus_daemon, cyrus):
    daemon = cyrus_daemon()
    send(daemon, ["one@cyrus.example", "two+box@cyrus.example"])
    runs = cyrus.wait_for_runs(2)
    assert sorted(cyrus.argv(run)[-3:] for run in runs) == [["-m", "", "one"], ["-m", "box", "two"]]
    daemon.wait_for_log("status=sent (delivered via cyrus service)", count=2)


def test_exit_75_defers_and_a_flush_delivers(cyrus_daemon, cyrus):
    cyrus.set_mode("75")
    daemon = cyrus_daemon(minimal_backoff_time="1h", maximal_backoff_time="2h")
    send(daemon, ["john.smith@cyrus.example"])
    log = daemon.wait_for_log("status=deferred")
    assert ("dsn=4.3.0, status=deferred (temporary failure. Command output: "
            "deliver: Mailbox is locked: user.john.smith)") in log, log
    assert "john.smith@cyrus.example" in daemon.mailq()
    cyrus.set_mode("0")
    result = daemon.command("postqueue", "-f")
    assert result.returncode == 0, result.stderr
    daemon.wait_for_log("status=sent (delivered via cyrus service)")
    daemon.wait_for_log(": removed")
    assert len(cyrus.runs()) == 2
    assert "status=bounced" not in daemon.log()


def test_exit_67_bounces_with_the_commands_output(cyrus_daemon, cyrus, smtp_sink):
    cyrus.set_mode("67")
    daemon = cyrus_daemon()
    send(daemon, ["nosuch@cyrus.example"], subject="will bounce")
    log = daemon.wait_for_log("status=bounced")
    assert ("to=<nosuch@cyrus.example>, relay=cyrus, " in log and "dsn=5.1.1, status=bounced (user unknown. "
            "Command output: deliver: Mailbox does not exist: user.nosuch)" in log), log
    [notice] = smtp_sink.wait_for_messages(1, timeout=30)
    assert notice.sender == "" and notice.recipients == ["alice@sender.example"]
    text = notice.message.decode().replace("\n ", " ")      # long lines come folded
    assert "Final-Recipient: rfc822; nosuch@cyrus.example\nAction: failed\nStatus: 5.1.1\n" in text
    assert ("Diagnostic-Code: X-Postfix; user unknown. Command output: deliver: Mailbox does not exist: "
            "user.nosuch\n") in text
    assert "Subject: will bounce" in text


def test_a_command_that_hangs_is_killed_at_its_time_limit_and_deferred(cyrus_daemon, cyrus):
    cyrus.set_mode("hang")
    daemon = cyrus_daemon(cyrus_time_limit="2s", minimal_backoff_time="1h", maximal_backoff_time="2h")
    send(daemon, ["john.smith@cyrus.example"])
    [run] = cyrus.wait_for_runs(1)
    log = daemon.wait_for_log("status=deferred", timeout=60)
    assert (run / "hanging").exists()
    assert f'dsn=4.3.0, status=deferred (Command time limit exceeded: "{cyrus.program}")' in log, log
    pid = int((run / "pid").read_text())
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"the hanging command (pid {pid}) is still running"
        time.sleep(0.05)
    assert "john.smith@cyrus.example" in daemon.mailq()
    assert "status=bounced" not in daemon.log()


def _state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        pass
    return ""


def test_the_mail_owner_as_user_stops_the_daemon_naming_the_line(daemon_factory, cyrus):
    service = f"cyrus unix - n n - - pipe\n  flags=R user=nobody argv={cyrus.program} {ARGV_TAIL}\n"
    daemon = daemon_factory(extra_services=service)
    with pytest.raises(PeerError):
        daemon.start(timeout=20)
    said = (daemon.directory / "stderr.log").read_text()
    assert (f"{daemon.config_dir}/master.cf, line 8: service cyrus: user=nobody: the account is the mail "
            "system owner (mail_owner = nobody)") in said, said


def test_mailbox_transport_cyrus_delivers_local_mail(daemon_factory, cyrus):
    """The seed's routing: mydestination's mail goes to local(8), which hands mailboxes to
    mailbox_transport = cyrus. (local_recipient_maps is emptied: the test's users are not
    system accounts, and whether they exist is Cyrus's to say.)"""
    services = (f"local unix - n n - - local\n"
                f"cyrus unix - n n - - pipe\n"
                f"  flags=R user={PIPE_USER} argv={cyrus.program} {ARGV_TAIL}\n")
    daemon = daemon_factory(extra_services=services, local_transport="local", mailbox_transport="cyrus",
                            local_recipient_maps="", recipient_delimiter="+").start()
    send(daemon, ["john.smith+work@example.test"])
    [run] = cyrus.wait_for_runs(1)
    assert cyrus.argv(run)[3:] == ["alice@sender.example", "-m", "work", "john.smith"]
    daemon.wait_for_log("status=sent (delivered via cyrus service)")
