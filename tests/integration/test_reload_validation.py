"""A reload with a bad value is refused while mail keeps flowing (issue 15, docs/validation.md).

The real daemon relays to smtp-sink; then main.cf gets values `check` calls errors. `mailferry
reload` exits non-zero with the file, line and allowed values, and does not signal the daemon;
a SIGHUP sent anyway (as `kill -HUP` or systemd would) is refused by the daemon, which logs why.
Mail sent afterwards still reaches the sink the running configuration points to.
Then a good configuration at compatibility_level = 2 reloads, with Postfix's log lines about
the backwards-compatible defaults it brings back.
"""

from __future__ import annotations

import os
import signal
import smtplib

import pytest

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


def send(daemon, subject: str) -> None:
    message = f"From: <alice@example.test>\r\nTo: <friend@elsewhere.example>\r\nSubject: {subject}\r\n\r\nHi.\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail("alice@example.test", ["friend@elsewhere.example"], message) == {}


def test_a_bad_value_is_refused_by_reload_and_mail_keeps_flowing(daemon_factory, smtp_sink):
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp").start()
    send(daemon, "before")
    smtp_sink.wait_for_messages(1, timeout=20)
    pid = int((daemon.queue_directory / "pid" / "master.pid").read_text().split()[0])

    main_cf = daemon.config_dir / "main.cf"
    good = main_cf.read_text()
    line = good.count("\n") + 1
    main_cf.write_text(good + "smtp_tls_security_level = bogus\nrelayhost = [smtp.gmail.com:587\n")

    refused = daemon.command("reload")
    assert refused.returncode != 0
    assert (f"{main_cf}, line {line}: parameter smtp_tls_security_level: unknown value bogus; allowed: none, "
            "may, encrypt") in refused.stderr
    assert f"{main_cf}, line {line + 1}: parameter relayhost: " in refused.stderr
    assert "did you mean [smtp.gmail.com]:587?" in refused.stderr
    assert "reload refused" in refused.stderr and "the running configuration stays" in refused.stderr

    # The daemon refuses the same configuration when signalled directly, and logs the reason.
    os.kill(pid, signal.SIGHUP)
    daemon.wait_for_log("reload refused, the running configuration stays")
    log = daemon.wait_for_log(f"reload refused: mailferry/master: error: {main_cf}, line {line}: "
                              "parameter smtp_tls_security_level: unknown value bogus")
    assert "reload -- version" not in log

    send(daemon, "after")
    subjects = [message.email["Subject"] for message in smtp_sink.wait_for_messages(2, timeout=20)]
    assert subjects == ["before", "after"]
    assert daemon.command("status").returncode == 0
    assert int((daemon.queue_directory / "pid" / "master.pid").read_text().split()[0]) == pid
    assert daemon.process.poll() is None

    # Fixed, the reload goes through; an old compatibility_level brings back Postfix's old
    # defaults, and the daemon says which, in Postfix's words.
    main_cf.write_text(good + "compatibility_level = 2\n")
    assert daemon.command("reload").returncode == 0
    daemon.wait_for_log("reload -- version")
    daemon.wait_for_log("]: mailferry is using backwards-compatible default settings")
    daemon.wait_for_log("]: using backwards-compatible default setting "
                          "smtpd_relay_before_recipient_restrictions=no")
    send(daemon, "level 2")
    assert [m.email["Subject"] for m in smtp_sink.wait_for_messages(3, timeout=20)][-1] == "level 2"
