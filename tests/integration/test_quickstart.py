"""The README's first command: mailferry on examples/quickstart, started in the background,
delivers a first message into a Maildir under the quickstart directory."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ROOT, free_port, wait_for_port, world_readable_tempdir

pytestmark = pytest.mark.integration


def test_quickstart_starts_delivers_to_a_maildir_and_stops():
    directory = world_readable_tempdir("mailferry-quickstart-")
    config_dir = directory / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", config_dir,
                    ignore=shutil.ignore_patterns("queue", "mailferry.log", "mail"))
    port = free_port()
    master_cf = (config_dir / "master.cf").read_text().replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    (config_dir / "master.cf").write_text(master_cf)
    if os.geteuid() == 0:
        # As root the daemon runs as mail_owner; the quickstart keeps its default (mailferry),
        # which scripts/setup creates.
        assert shutil.which("getent") and subprocess.run(["getent", "passwd", "mailferry"]).returncode == 0, \
            "the mailferry account is missing: run scripts/setup"
    command = [sys.executable, "-m", "mailferry", "-c", str(config_dir)]
    try:
        started = subprocess.run(command + ["start"], capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        wait_for_port("127.0.0.1", port)
        assert subprocess.run(command + ["status"], capture_output=True).returncode == 0
        with smtplib.SMTP("127.0.0.1", port) as client:
            # As the README says: to a local address, here postmaster (aliased to root, root to nobody).
            assert client.sendmail("me@example.test", ["postmaster@mail.example.test"],
                                   b"Subject: quickstart\r\n\r\nhello from the quickstart\r\n") == {}
            # A name that is neither a user nor an alias is refused at once.
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("me@example.test", ["no-such-user-here@mail.example.test"], b"\r\nx\r\n")
            code, text = refused.value.recipients["no-such-user-here@mail.example.test"]
            assert code == 550 and b"User unknown in local recipient table" in text
        log_file = config_dir / "mailferry.log"
        deadline = time.monotonic() + 30
        while ": removed" not in (log_file.read_text() if log_file.exists() else ""):
            assert time.monotonic() < deadline, _log_tail(config_dir)
            time.sleep(0.05)
        new = config_dir / "mail" / "nobody" / "new"
        [stored] = list(new.iterdir())
        text = stored.read_bytes()
        assert b"hello from the quickstart" in text and b"\r\n" not in text
        assert b"Delivered-To: postmaster@mail.example.test" in text   # the first local address, as Postfix writes it
        assert b"Return-Path: <me@example.test>" in text
        log = log_file.read_text()
        assert re.search(r"mailferry/local\[\d+\]: \w+: to=<postmaster@mail.example.test>, relay=local, .*"
                         r"status=sent \(delivered to maildir\)", log), log
        listing = subprocess.run(command + ["mailq"], capture_output=True, text=True).stdout
        assert "Mail queue is empty" in listing
    finally:
        stopped = subprocess.run(command + ["stop"], capture_output=True, text=True, timeout=90)
        shutil.rmtree(directory, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr


def _log_tail(config_dir) -> str:
    log = config_dir / "mailferry.log"
    return "nothing was delivered; the log ends:\n" + (log.read_text()[-3000:] if log.exists() else "(no log)")
