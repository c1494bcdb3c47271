"""`mailferry import-postfix` (issue 16, Done when 3): a Postfix configuration with hash, regexp
and ldap tables and a submission service in master.cf, imported, started as the REAL daemon, and
relaying to smtp-sink; the ldap table is the seed's ldap-aliases.cf against the real slapd pair.

The Postfix directory is built the way Postfix leaves it: its hash tables built by Postfix's own
postmap (Berkeley DB), one of them with its source deleted, the STARTTLS key root-only. Nothing
in it may change: every file's SHA-256, mode and mtime are compared before the import and after
the daemon has run. What the test adds to the imported main.cf is only what every private daemon
here needs (its own queue, log, loopback, mail_owner): the rest runs as imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import seed_file
from tests.integration.auth_peers import PASSWORD
from tests.integration.conftest import DAEMON_USER
from tests.integration.test_submission_auth import dovecot_auth  # noqa: F401  (the module's Dovecot)
from tests.peers import free_port, peer_tempdir
from tests.peers.mailferry import MailferryDaemon, main_cf_text, private_settings
from tests.peers.slapd import SEED_ROUTING_ADDRESS

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

MAILFERRY = [sys.executable, "-m", "mailferry"]


def snapshot(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `directory`: (SHA-256, mode, mtime in ns)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        status = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(directory))] = (digest, status.st_mode, status.st_mtime_ns)
    return found


def postmap(postfix_dir: Path, name: str) -> None:
    """Postfix's own postmap, as the Postfix administrator ran it (a Berkeley DB index)."""
    subprocess.run(["postmap", "-c", str(postfix_dir), f"hash:{postfix_dir / name}"], check=True, timeout=60)


@pytest.fixture
def postfix_setup(slapd_pair_restored, smtp_sink, dovecot_auth, submission_certificate):
    """(the Postfix directory, the aliases file outside it, smtpd port, submission port)."""
    first, second = slapd_pair_restored
    top = peer_tempdir("mailferry-import-")
    postfix_dir = top / "postfix"
    postfix_dir.mkdir(mode=0o755)
    aliases = top / "aliases"                      # as /etc/aliases: outside the Postfix directory
    aliases.write_text("postmaster: root\nroot: ops@remote.example\n")
    port, submission_port = free_port(), free_port()
    cert, key = submission_certificate
    shutil.copy(cert, postfix_dir / "smtpd.pem")
    shutil.copy(key, postfix_dir / "smtpd.key")
    (postfix_dir / "smtpd.key").chmod(0o600)
    (postfix_dir / "ldap-aliases.cf").write_text(
        seed_file("ldap-aliases.cf").replace("ldap://ldap1.internal/ ldap://ldap2.internal/",
                                             f"{first.url} {second.url}"))
    (postfix_dir / "virtual").write_text("sales@example.com buyer@remote.example\n")
    (postfix_dir / "header_checks").write_text("/^Subject: .*forbidden/ REJECT no forbidden words here\n")
    (postfix_dir / "sender_access").write_text("blocked@spam.example REJECT\n")
    (postfix_dir / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        "myhostname = mx.example.test\n"
        "mydomain = example.test\n"
        "mydestination = $myhostname, localhost\n"
        "mynetworks = 127.0.0.1/32\n"
        f"relayhost = {smtp_sink.nexthop}\n"
        f"alias_maps = hash:{aliases}\n"
        f"alias_database = hash:{aliases}\n"
        "virtual_alias_domains = example.com\n"
        f"virtual_alias_maps = hash:{postfix_dir}/virtual, ldap:{postfix_dir}/ldap-aliases.cf\n"
        "header_checks = regexp:$config_directory/header_checks\n"
        f"smtpd_sender_restrictions = check_sender_access hash:{postfix_dir}/sender_access\n"
        f"smtpd_tls_cert_file = {postfix_dir}/smtpd.pem\n"
        f"smtpd_tls_key_file = {postfix_dir}/smtpd.key\n"
        "smtpd_tls_security_level = may\n"
        "smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache\n"
        "smtpd_sasl_type = dovecot\n"
        f"smtpd_sasl_path = {dovecot_auth.sasl_path}\n"
        "address_verify_negative_cache = no\n"
        "queue_directory = /var/spool/postfix\n"
        "data_directory = /var/lib/postfix\n")
    (postfix_dir / "master.cf").write_text(
        f"127.0.0.1:{port} inet n - y - - smtpd\n"
        f"127.0.0.1:{submission_port} inet n - y - - smtpd\n"
        "  -o syslog_name=postfix/submission\n"
        "  -o smtpd_tls_security_level=encrypt\n"
        "  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_tls_auth_only=yes\n"
        "  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject\n"
        "pickup unix n - y 60 1 pickup\n"
        "cleanup unix n - y - 0 cleanup\n"
        "smtp unix - - y - - smtp\n"
        "relay unix - - y - - smtp\n"
        "error unix - - y - - error\n"
        "postlog unix-dgram n - n - 1 postlogd\n"
        "tlsproxy unix - - y - 0 tlsproxy\n")
    for name in ("virtual", "sender_access"):
        postmap(postfix_dir, name)
    yield postfix_dir, aliases, port, submission_port
    shutil.rmtree(top, ignore_errors=True)


def test_an_imported_postfix_configuration_starts_relays_and_reports(postfix_setup, smtp_sink, peer_ca):
    postfix_dir, aliases, port, submission_port = postfix_setup
    before = snapshot(postfix_dir)
    aliases_before = snapshot(aliases.parent)["aliases"]
    directory = peer_tempdir("mailferry-imported-")
    config_dir = directory / "etc"
    daemon = None
    try:
        result = subprocess.run([*MAILFERRY, "-c", str(config_dir), "import-postfix", str(postfix_dir)],
                                capture_output=True, text=True, timeout=120)
        report = result.stdout + result.stderr
        assert result.returncode == 0, report
        main_cf = (config_dir / "main.cf").read_text()
        master_cf = (config_dir / "master.cf").read_text()
        # Paths into the Postfix directory now point here; the copies keep owner and mode.
        assert str(postfix_dir) not in main_cf + master_cf
        assert f"virtual_alias_maps = hash:{config_dir}/virtual, ldap:{config_dir}/ldap-aliases.cf" in main_cf
        assert f"alias_maps = hash:{config_dir}/aliases\n" in main_cf    # the source outside, copied here
        assert "\n#queue_directory = /var/spool/postfix\n" in main_cf and "\n#data_directory" in main_cf
        assert (config_dir / "smtpd.key").stat().st_mode & 0o777 == 0o600
        for name in ("virtual.db", "sender_access.db", "aliases.db"):
            assert f"built {config_dir / name}" in report, name
        # The report: what works, what is accepted without effect, what is not yet supported, with file:line.
        assert re.search(rf"works: \d+\n(  .*\n)*  {re.escape(str(config_dir))}/main\.cf, line 10: "
                         r"virtual_alias_maps\n", report), report
        assert re.search(r"accepted without effect: \d+\n(  .*\n)*  .*main\.cf, line \d+: "
                         r"smtpd_tls_session_cache_database\n", report), report
        assert re.search(r"not yet supported .*: \d+\n(  .*\n)*  .*main\.cf, line 19: "
                         r"address_verify_negative_cache\n", report), report
        assert re.search(r"does not run: \d+\n(  .*\n)*  .*master\.cf, line \d+: service tlsproxy", report), report

        # It starts as imported, plus what every private test daemon needs.
        settings = private_settings(directory, DAEMON_USER)
        daemon = MailferryDaemon(directory, main_cf + main_cf_text(settings), master_cf, port).start()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.sendmail("alice@example.test", ["sample.user@example.com", "sales@example.com"],
                                   b"Subject: hello\r\n\r\nthrough ldap and hash\r\n") == {}
            code, _ = client.docmd("RSET")
            with pytest.raises(smtplib.SMTPDataError) as refused:          # the regexp header_checks
                client.sendmail("alice@example.test", ["sales@example.com"],
                                b"Subject: a forbidden word\r\n\r\nno\r\n")
            assert refused.value.smtp_code == 550 and b"no forbidden words here" in refused.value.smtp_error
            with pytest.raises(smtplib.SMTPRecipientsRefused):               # the hash access table
                client.sendmail("blocked@spam.example", ["sales@example.com"], b"Subject: x\r\n\r\nx\r\n")
        # The submission service: STARTTLS with the copied key, AUTH against Dovecot, then relay.
        with smtplib.SMTP("127.0.0.1", submission_port, timeout=30) as client:
            client.ehlo("client.test")
            assert "auth" not in client.esmtp_features                      # smtpd_tls_auth_only
            client.starttls(context=peer_ca.client_context())
            client.ehlo("client.test")
            client.login("user1", PASSWORD)
            assert client.sendmail("user1@example.test", ["friend@remote.example"],
                                   b"Subject: submitted\r\n\r\nover submission\r\n") == {}
        messages = smtp_sink.wait_for_messages(2, timeout=30)
        recipients = sorted(address for message in messages for address in message.recipients)
        assert recipients == sorted(["buyer@remote.example", SEED_ROUTING_ADDRESS, "friend@remote.example"])
        daemon.wait_for_log("status=sent", count=3)
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    # Nothing in the Postfix directory (nor the aliases source outside it) changed.
    assert snapshot(postfix_dir) == before
    assert snapshot(aliases.parent)["aliases"] == aliases_before
    assert not (aliases.parent / "aliases.db").exists()


def test_it_refuses_to_overwrite_a_mailferry_configuration_without_force(tmp_path):
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text("myhostname = mx.example.test\n")
    (postfix_dir / "master.cf").write_text("pickup unix n - y 60 1 pickup\n")
    config_dir = tmp_path / "mailferry"
    config_dir.mkdir()
    (config_dir / "main.cf").write_text("myhostname = mine.example.test\n")
    command = [*MAILFERRY, "-c", str(config_dir), "import-postfix", str(postfix_dir)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (config_dir / "main.cf").read_text() == "myhostname = mine.example.test\n"
    forced = subprocess.run([*command, "--force"], capture_output=True, text=True, timeout=60)
    assert forced.returncode in (0, 1), forced.stderr
    assert (config_dir / "main.cf").read_text() == "myhostname = mx.example.test\n"


def test_a_table_with_only_postfixs_index_is_named(tmp_path):
    """Postfix's Berkeley DB cannot be read: the table without its source is named, with what to do,
    and `check` then says the configuration is not ready (exit 1)."""
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "main.cf").write_text(f"relocated_maps = hash:{postfix_dir}/relocated\n")
    (postfix_dir / "master.cf").write_text("pickup unix n - y 60 1 pickup\n")
    (postfix_dir / "relocated").write_text("old@example.com new@remote.example\n")
    postmap(postfix_dir, "relocated")
    (postfix_dir / "relocated").unlink()          # only Postfix's Berkeley DB is left
    result = subprocess.run([*MAILFERRY, "-c", str(tmp_path / "mailferry"), "import-postfix", str(postfix_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (f"hash:{postfix_dir}/relocated: no source file, only Postfix's index {postfix_dir}/relocated.db: "
            "Postfix's Berkeley DB files cannot be read") in result.stderr
