"""cleanup_service_name through the real daemon, as docker-mailserver's master.cf uses it: the
submission service hands its mail to `sender-cleanup`, a master.cf cleanup service whose
-o header_checks (pcre) strips Received: and X-Mailer:, while mail on port 25 goes through the
default cleanup and keeps them. A name that no master.cf cleanup service has is an error at
the -o's line: `check` says so and the daemon does not start (cleanup/services.py,
docs/content-checks.md)."""

from __future__ import annotations

import re
import shutil
import smtplib
import time

import pytest

from tests.integration.conftest import (base_main_cf, free_port, relay_to_sink, smtpd_master_cf,
                                        world_readable_tempdir)
from tests.peers.mailferry import MailferryDaemon

pytestmark = pytest.mark.integration

# Lines of docker-mailserver's sender_header_filter.pcre.
SENDER_HEADER_FILTER = """\
/^\\s*Received: from.*127.0.0.1/     IGNORE
/^\\s*Received:.*with ESMTPSA/       IGNORE
/^\\s*X-Mailer:/                     IGNORE
/^\\s*X-Originating-IP:/             IGNORE
"""


def _master_cf(port: int, submission: int, cleanup_name: str, directory, port_25_cleanup: str = "") -> str:
    """One process (maxproc 1): a reload is done once the master logs it, no worker lags behind."""
    text = smtpd_master_cf(
        port,
        f"127.0.0.1:{submission} inet n - n - 1 smtpd\n"
        "  -o syslog_name=mailferry/submission\n"
        f"  -o cleanup_service_name={cleanup_name}\n",
        "sender-cleanup unix n - n - 0 cleanup\n"
        "  -o syslog_name=mailferry/sender-cleanup\n"
        f"  -o header_checks=pcre:{directory}/sender_header_filter.pcre\n"
        "cleanup unix n - n - 0 cleanup\n")
    first = f"127.0.0.1:{port} inet n - n - - smtpd\n"
    assert text.startswith(first)
    option = f"  -o cleanup_service_name={port_25_cleanup}\n" if port_25_cleanup else ""
    return f"127.0.0.1:{port} inet n - n - 1 smtpd\n{option}" + text[len(first):]


@pytest.fixture(scope="module")
def setup():
    with relay_to_sink("cleanupsvc") as relay:
        directory = relay.directory
        (directory / "sender_header_filter.pcre").write_text(SENDER_HEADER_FILTER)
        port, submission = free_port(), free_port()
        daemon = relay.start(base_main_cf(directory, relayhost=relay.sink.nexthop, default_transport="smtp"),
                             _master_cf(port, submission, "sender-cleanup", directory), port)
        daemon.submission_port = submission
        daemon.directory_path = directory
        yield daemon, relay.sink


def message(sender: str) -> str:
    return (f"Received: from laptop.example.test (unknown [10.9.8.7]) by relay.example.test; "
            f"Sun, 6 Dec 2026 08:00:00 +0000\r\n"
            f"X-Mailer: Example Mail 1.0\r\nFrom: <{sender}>\r\nTo: <rcpt@dest.test>\r\n"
            f"Subject: per-service cleanup\r\nMessage-ID: <{sender}>\r\n\r\nHello.\r\n")


def _headers(sink, sender: str) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [m for m in sink.messages() if m.sender == sender]
        if found:
            head = found[0].message.split(b"\n\n", 1)[0].decode()
            return re.sub(r"\n[ \t]", " ", head).split("\n")
        time.sleep(0.1)
    raise AssertionError(f"nothing from <{sender}> reached the sink in 30 s")


def _send(sink, port: int, sender: str) -> tuple[list[str], list[str]]:
    """The headers of the message as the sink got it, and its Received: headers."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        assert client.sendmail(sender, ["rcpt@dest.test"], message(sender)) == {}
    headers = _headers(sink, sender)
    return headers, [line for line in headers if line.lower().startswith("received:")]


def test_submitted_mail_goes_through_the_named_cleanup_service(setup):
    daemon, sink = setup
    sender = "submitted@sender.test"
    headers, received = _send(sink, daemon.submission_port, sender)
    # Our Received: (from 127.0.0.1) matches a rule and is gone; the client's (from 10.9.8.7) stays.
    assert any("10.9.8.7" in line for line in received), headers
    assert not any("127.0.0.1" in line and "mx.example.test" in line for line in received), headers
    assert not any(line.startswith("X-Mailer") for line in headers), headers
    assert "Subject: per-service cleanup" in headers
    # That service logged the message, under its syslog_name, as Postfix's does (IGNORE is silent).
    log = daemon.wait_for_log(f"message-id=<{sender}>")
    assert re.search(rf"mailferry/sender-cleanup/cleanup\[\d+\]: \w+: message-id=<{sender}>", log), log


def test_mail_on_port_25_keeps_its_headers(setup):
    daemon, sink = setup
    headers, received = _send(sink, daemon.port, "inbound@sender.test")
    assert any("127.0.0.1" in line and "mx.example.test" in line for line in received), headers
    assert any("10.9.8.7" in line for line in received), headers
    assert "X-Mailer: Example Mail 1.0" in headers


def test_a_reload_hands_port_25_mail_to_the_service_master_cf_now_names(setup):
    daemon, sink = setup
    main_cf = (daemon.config_dir / "main.cf").read_text()
    before = (daemon.config_dir / "master.cf").read_text()
    after = _master_cf(daemon.port, daemon.submission_port, "sender-cleanup", daemon.directory_path,
                       port_25_cleanup="sender-cleanup")
    try:
        daemon.write_config(main_cf, after)
        reloaded = daemon.command("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        daemon.wait_for_log("reload -- version")
        headers, _ = _send(sink, daemon.port, "reloaded@sender.test")
        assert not any(line.startswith("X-Mailer") for line in headers), headers
    finally:
        daemon.write_config(main_cf, before)
        daemon.command("reload")
        daemon.wait_for_log("reload -- version", count=2)


def test_a_name_no_cleanup_service_has_is_a_check_error_and_the_daemon_does_not_start():
    directory = world_readable_tempdir("mailferry-cleanupsvc-bad-")
    try:
        (directory / "sender_header_filter.pcre").write_text(SENDER_HEADER_FILTER)
        port, submission = free_port(), free_port()
        daemon = MailferryDaemon(directory, base_main_cf(directory),
                                 _master_cf(port, submission, "sender-cleanpu", directory), port)
        checked = daemon.command("check")
        assert checked.returncode != 0
        master_cf = daemon.config_dir / "master.cf"
        line = 1 + master_cf.read_text().splitlines().index("  -o cleanup_service_name=sender-cleanpu")
        assert re.search(rf"error: {re.escape(str(master_cf))}, line {line}: cleanup_service_name = "
                         rf"sender-cleanpu: master\.cf defines no `sender-cleanpu unix \.\.\. cleanup` service",
                         checked.stderr), checked.stderr
        started = daemon.command("start-fg", timeout=60)
        assert started.returncode != 0
        assert "cleanup_service_name = sender-cleanpu" in started.stderr + daemon.log(), started.stderr
        with pytest.raises(OSError):
            smtplib.SMTP("127.0.0.1", submission, timeout=5).quit()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
