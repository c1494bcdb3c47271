"""The README's first command: mailferry on examples/quickstart, started in the background."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import ROOT, free_port, wait_for_port, world_readable_tempdir

pytestmark = pytest.mark.integration


def test_quickstart_starts_accepts_mail_and_stops():
    directory = world_readable_tempdir("mailferry-quickstart-")
    config_dir = directory / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", config_dir,
                    ignore=shutil.ignore_patterns("queue", "mailferry.log"))
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
            assert client.sendmail("me@example.test", ["postmaster@mail.example.test"],
                                   b"Subject: quickstart\r\n\r\nhello\r\n") == {}
        log = config_dir / "mailferry.log"
        deadline = time.monotonic() + 20
        while "(queue active)" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "nothing was queued"
            time.sleep(0.05)
        listing = subprocess.run(command + ["mailq"], capture_output=True, text=True).stdout
        assert "postmaster@mail.example.test" in listing
    finally:
        stopped = subprocess.run(command + ["stop"], capture_output=True, text=True, timeout=90)
        shutil.rmtree(directory, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
