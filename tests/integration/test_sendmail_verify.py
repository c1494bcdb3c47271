"""`sendmail -bv ADDRESS...` through the REAL daemon: the sender receives one "Mail Delivery Status
Report" saying for each recipient where it would go (the virtual alias expansion, the transport
and next hop, an error route as undeliverable); nothing is delivered to the recipients.
The report is relayed to smtp-sink like any notice: from the null sender, to the sender."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import peer_tempdir

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

SENDMAIL = Path(sys.executable).parent / "mailferry-sendmail"
SENDER = "alice@report.example"


@pytest.fixture
def tables():
    directory = peer_tempdir("mailferry-bv-")
    (directory / "virtual").write_text("sales@example.com buyer@remote.example, desk@remote.example\n")
    (directory / "transport").write_text("bad.example error:5.1.2 no mail for this domain\n"
                                         "lmtp.example lmtp:[127.0.0.1]:24\n")
    for name in ("virtual", "transport"):
        subprocess.run([sys.executable, "-m", "mailferry", "postmap", f"hash:{directory / name}"], check=True)
    yield directory


def test_bv_mails_the_sender_a_route_report_and_delivers_nothing(daemon_factory, smtp_sink, tables):
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            virtual_alias_domains="example.com", virtual_alias_maps=f"hash:{tables}/virtual",
                            transport_maps=f"hash:{tables}/transport").start()
    result = subprocess.run([str(SENDMAIL), "-C", str(daemon.config_dir), "-f", SENDER, "-bv",
                             "sales@example.com", "friend@remote.example", "x@bad.example", "y@lmtp.example"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"Mail Delivery Status Report will be mailed to <{SENDER}>." in result.stderr
    [report] = smtp_sink.wait_for_messages(1, timeout=30)
    assert (report.sender, report.recipients) == ("", [SENDER])
    assert report.email["Subject"] == "Mail Delivery Status Report"
    assert report.email.get_content_type() == "multipart/report"
    text, status = [part for part in report.email.iter_parts()]
    body = text.get_content()
    nexthop = re.escape(smtp_sink.nexthop)
    assert "Enclosed is the mail delivery report that you requested." in body
    assert re.search(rf"^<buyer@remote\.example> \(expanded from <sales@example\.com>\): deliverable via "
                     rf"transport smtp, next hop {nexthop} \(not contacted\)$", body, re.M), body
    assert re.search(r"^<desk@remote\.example> \(expanded from <sales@example\.com>\): deliverable", body, re.M)
    assert re.search(rf"^<friend@remote\.example>: deliverable via transport smtp, next hop {nexthop}", body, re.M)
    assert re.search(r"^<x@bad\.example>: no mail for this domain$", body, re.M), body
    assert re.search(r"^<y@lmtp\.example>: deliverable via transport lmtp, next hop \[127\.0\.0\.1\]:24", body, re.M)
    delivery_status = status.as_string()
    assert "Final-Recipient: rfc822; buyer@remote.example" in delivery_status
    assert "Original-Recipient: rfc822;sales@example.com" in delivery_status
    assert "Final-Recipient: rfc822; x@bad.example\nOriginal-Recipient: rfc822;x@bad.example\n" \
           "Action: undeliverable\nStatus: 5.1.2\n" in delivery_status
    assert delivery_status.count("Action: deliverable") == 4 and "Action: undeliverable" in delivery_status
    # Only the report went anywhere: its queue entry is removed and no recipient saw a thing.
    log = daemon.wait_for_log(": removed")
    assert len(re.findall(r"status=sent", log)) == 1 and f"to=<{SENDER}>" in log
    for address in ("buyer@remote.example", "friend@remote.example", "x@bad.example", "y@lmtp.example"):
        assert f"to=<{address}>" not in log
    assert [message.recipients for message in smtp_sink.messages()] == [[SENDER]]
