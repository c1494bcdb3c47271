"""sendmail -bs: SMTP on standard input, each message into maildrop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailferry.local.maildrop import read_maildrop
from mailferry.local.smtp_stdin import converse
from tests.unit.local.queue_fixtures import make_instance

SESSION = (b"EHLO me\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.org>\r\n"
           b"RCPT TO:<carol@example.org>\r\nDATA\r\nSubject: bs\r\n\r\nhello\r\n..dot\r\n.\r\n"
           b"MAIL FROM:<>\r\nRCPT TO:<dave@example.org>\r\nDATA\r\nSubject: second\r\n\r\nx\r\n.\r\nQUIT\r\n")


def maildrop_entries(queue_directory: Path):
    return sorted((read_maildrop(str(path)) for path in (queue_directory / "maildrop").iterdir()),
                  key=lambda entry: entry.envelope.arrival_time)


def test_two_messages_in_one_session_become_two_maildrop_files(tmp_path):
    _, queue_directory = make_instance(tmp_path)
    (queue_directory / "maildrop").mkdir()
    chunks = [SESSION[index:index + 7] for index in range(0, len(SESSION), 7)]  # byte-sized reads work too
    written = bytearray()
    dropped = converse(lambda: chunks.pop(0) if chunks else b"", written.extend, "mx.example.test",
                       str(queue_directory), 1000, 10240000)
    assert dropped == 2
    replies = bytes(written).decode().splitlines()
    assert replies[0] == "220 mx.example.test ESMTP mailferry"
    assert [line for line in replies if "queued as" in line] == [
        f"250 2.0.0 Ok: queued as {path.name}" for path in sorted(
            (queue_directory / "maildrop").iterdir(), key=lambda p: read_maildrop(str(p)).envelope.arrival_time)]
    assert replies[-1] == "221 2.0.0 Bye"
    first, second = maildrop_entries(queue_directory)
    assert first.envelope.sender == "alice@example.test"
    assert first.envelope.recipients == ["bob@example.org", "carol@example.org"]
    assert first.content == b"Subject: bs\n\nhello\n.dot\n"  # dot-unstuffed, LF lines as sendmail stores them
    assert second.envelope.sender == "" and second.envelope.recipients == ["dave@example.org"]


def test_the_real_command_speaks_smtp_on_stdio(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    sendmail = Path(sys.executable).parent / "mailferry-sendmail"
    result = subprocess.run([str(sendmail), "-C", str(config_dir), "-bs"], input=SESSION,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b"queued as") == 2
    assert len(maildrop_entries(queue_directory)) == 2
