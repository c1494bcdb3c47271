"""pflogsumm, the administrator's daily report, must read mailferry's log."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess

import pytest

pytestmark = pytest.mark.integration


def grand_total(report: str, label: str) -> int:
    match = re.search(rf"^\s*(\d+)\s+{label}(?: \(\d+%\))?\s*$", report, re.M)
    assert match, f"no {label!r} line in pflogsumm's Grand Totals:\n{report}"
    return int(match.group(1))


def test_pflogsumm_counts_received_delivered_and_rejected(daemon_factory):
    daemon = daemon_factory(smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
                            mynetworks="127.0.0.2/32",
                            virtual_alias_maps="inline:{ sales@example.test=user@example.test }").start()
    with smtplib.SMTP("127.0.0.1", daemon.port) as client:
        for number, recipient in enumerate(("sales@example.test", "user@example.test", "user@example.test")):
            client.sendmail(f"sender{number}@example.test", [recipient], b"Subject: x\r\n\r\nbody\r\n")
        client.mail("spammer@outside.example")
        assert client.rcpt("victim@elsewhere.example")[0] == 554
    daemon.wait_for_log(": removed", count=3)
    daemon.stop()
    # the rewritten one is logged as Postfix logs it, and still counted once as delivered
    assert re.search(r"to=<user@example\.test>, orig_to=<sales@example\.test>, relay=none, .*status=sent",
                     daemon.log_path.read_text())
    tool = shutil.which("pflogsumm")
    assert tool, "pflogsumm is required: run scripts/setup --test"
    report = subprocess.run([tool, "--syslog-name=mailferry", str(daemon.log_path)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert grand_total(report, "received") == 3
    assert grand_total(report, "delivered") == 3
    assert grand_total(report, "rejected") == 1
