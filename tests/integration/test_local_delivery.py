"""local(8) with the real daemon and the real spawner: aliases, |command, :include:, Maildir,
mbox, a full mailbox, and kill -9 while delivering.

Two test accounts, mfuser1 and mfuser2, are made once (useradd) with homes under
/tmp/mailferry-local-homes, and reused by later runs. The daemon runs as mail_owner
(nobody); what lands in a mailbox is written by the spawner as the recipient, which each
test checks with stat.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import smtplib
import subprocess
import time
from email.utils import make_msgid
from pathlib import Path

import pytest

from tests.integration.conftest import world_readable_tempdir

pytestmark = pytest.mark.integration

USERS = ("mfuser1", "mfuser2")
HOMES = Path("/tmp/mailferry-local-homes")
LOCAL_SERVICE = "local unix - n n - - local\n"


@pytest.fixture(scope="session")
def local_accounts() -> dict[str, pwd.struct_passwd]:
    """mfuser1 and mfuser2, made if missing (idempotent: an existing account is reused)."""
    HOMES.mkdir(mode=0o755, exist_ok=True)
    os.chmod(HOMES, 0o755)
    accounts = {}
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            made = subprocess.run(["useradd", "--no-create-home", "--home-dir", str(HOMES / name),
                                   "--shell", "/bin/sh", "--user-group", name], capture_output=True, text=True)
            assert made.returncode == 0 or "already exists" in made.stderr, made.stderr
        account = pwd.getpwnam(name)
        home = Path(account.pw_dir)
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(home, account.pw_uid, account.pw_gid)
        accounts[name] = account
    return accounts


@pytest.fixture
def users(local_accounts):
    """The accounts with empty homes: no Maildir, mbox or .forward left from an earlier test."""
    for account in local_accounts.values():
        home = Path(account.pw_dir)
        for entry in home.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return local_accounts


def local_daemon(daemon_factory, aliases: str, **settings: str):
    """A daemon whose mydestination mail goes to local(8), with `aliases` built by newaliases."""
    tables = world_readable_tempdir("mailferry-aliases-")
    source = tables / "aliases"
    source.write_text(aliases)
    source.chmod(0o644)
    values = {"local_transport": "local:$myhostname", "alias_maps": f"hash:{source}",
              "alias_database": f"hash:{source}", "home_mailbox": "Maildir/"}
    values.update(settings)
    daemon = daemon_factory(extra_services=LOCAL_SERVICE, **values)
    built = daemon.command("newaliases")
    assert built.returncode == 0, built.stderr
    assert (tables / "aliases.db").exists()
    daemon.tables = tables
    return daemon.start()


def send(daemon, recipients: list[str], subject: str = "hello", body: str = "hello\n",
         message_id: str = "") -> str:
    message_id = message_id or make_msgid(domain="client.example")
    content = (f"From: sender@client.example\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
               f"Message-ID: {message_id}\r\n\r\n{body}").replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        refused = client.sendmail("sender@client.example", recipients, content.encode())
    assert refused == {}
    return message_id


def maildir_files(account: pwd.struct_passwd, timeout: float = 30.0, count: int = 1) -> list[Path]:
    new = Path(account.pw_dir) / "Maildir" / "new"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(new.iterdir()) if new.is_dir() else []
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} messages in {new} after {timeout} s")


def test_alias_to_two_users_lands_in_both_maildirs_owned_by_them(daemon_factory, users):
    daemon = local_daemon(daemon_factory, "team: mfuser1, mfuser2@example.test\npostmaster: mfuser1\n")
    message_id = send(daemon, ["team@example.test"], subject="for the team")
    for name in USERS:
        [path] = maildir_files(users[name])
        status = path.stat()
        assert (status.st_uid, status.st_gid) == (users[name].pw_uid, users[name].pw_gid)
        assert (path.parent.parent.stat().st_uid) == users[name].pw_uid
        text = path.read_bytes()
        assert text.startswith(b"Return-Path: <sender@client.example>\nX-Original-To: team@example.test\n"
                               b"Delivered-To: team@example.test\n")
        assert message_id.encode() in text and b"\r\n" not in text
    log = daemon.wait_for_log("status=sent (delivered to maildir)")
    assert re.search(r"mailferry/local\[\d+\]: [0-9A-F]+: to=<team@example.test>, relay=local, .*"
                     r"dsn=2\.0\.0, status=sent \(delivered to maildir\)", log)


def test_command_alias_runs_as_default_privs_with_the_message_on_stdin(daemon_factory, users):
    record = world_readable_tempdir("mailferry-command-")
    record.chmod(0o777)
    script = record / "record.sh"
    script.write_text("#!/bin/sh\nid -u > \"$0.uid\"\nenv > \"$0.env\"\ncat > \"$0.stdin\"\n")
    script.chmod(0o755)
    daemon = local_daemon(daemon_factory, f"recorder: \"|{script}\"\n", recipient_delimiter="+")
    message_id = send(daemon, ["recorder+tag@example.test"])
    daemon.wait_for_log(f"status=sent (delivered to command: {script})")
    assert (record / "record.sh.uid").read_text().strip() == str(pwd.getpwnam("nobody").pw_uid)
    env = dict(line.split("=", 1) for line in (record / "record.sh.env").read_text().splitlines() if "=" in line)
    assert env["RECIPIENT"] == "recorder+tag@example.test" and env["EXTENSION"] == "tag"
    assert env["SENDER"] == "sender@client.example" and env["USER"] == "recorder"
    stdin = (record / "record.sh.stdin").read_bytes()
    assert stdin.startswith(b"Return-Path: <sender@client.example>\n") and message_id.encode() in stdin
    shutil.rmtree(record, ignore_errors=True)


def test_mailbox_command_reaches_the_shell_as_written(daemon_factory, users):
    """Debian's `mailbox_command = procmail -a "$EXTENSION"`: Postfix does not $-expand
    mailbox_command, so the shell sees "$EXTENSION" and expands it from the environment.
    The stand-in for procmail records its argv; with expansion by mailferry it would get ""."""
    record = world_readable_tempdir("mailferry-mbcmd-")
    record.chmod(0o777)
    procmail = record / "procmail"
    procmail.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\ncat > "$0.stdin"\n')
    procmail.chmod(0o755)
    command = f'{procmail} -a "$EXTENSION"'
    daemon = local_daemon(daemon_factory, "", recipient_delimiter="+", mailbox_command=command)
    shown = daemon.command("postconf", "-x", "mailbox_command")
    assert shown.stdout == f"mailbox_command = {command}\n"
    send(daemon, ["mfuser1+lists@example.test"])
    daemon.wait_for_log(f"status=sent (delivered to command: {command})")
    assert (record / "procmail.argv").read_text() == "-a\nlists\n"
    assert (Path(users["mfuser1"].pw_dir) / "Maildir").exists() is False
    shutil.rmtree(record, ignore_errors=True)


def test_include_file_members_are_delivered(daemon_factory, users):
    members = world_readable_tempdir("mailferry-include-") / "staff.list"
    members.write_text("# the staff\nmfuser2\n")
    members.chmod(0o644)
    daemon = local_daemon(daemon_factory, f"staff: :include:{members}\n")
    message_id = send(daemon, ["staff@example.test"])
    [path] = maildir_files(users["mfuser2"])
    assert message_id.encode() in path.read_bytes()
    assert path.stat().st_uid == users["mfuser2"].pw_uid
    log = daemon.wait_for_log("to=<mfuser2@")
    assert re.search(r"to=<staff@example.test>, relay=local, .*status=sent \(forwarded as [0-9A-F]+\)", log)


def test_mbox_delivery_owned_by_the_user_and_a_full_mailbox_bounces(daemon_factory, users):
    daemon = local_daemon(daemon_factory, "box: mfuser1\n", home_mailbox="Mailbox", mailbox_size_limit="4000")
    send(daemon, ["box@example.test"], subject="small")
    mailbox = Path(users["mfuser1"].pw_dir) / "Mailbox"
    daemon.wait_for_log("status=sent (delivered to mailbox)")
    assert mailbox.stat().st_uid == users["mfuser1"].pw_uid
    first = mailbox.read_bytes()
    assert first.startswith(b"From sender@client.example ") and b"Subject: small" in first
    send(daemon, ["mfuser1@example.test"], subject="big", body="x" * 70 + "\n" + ("y" * 70 + "\n") * 60)
    log = daemon.wait_for_log("status=bounced")
    assert re.search(r"to=<mfuser1@example.test>, relay=local, .*dsn=5\.2\.2, status=bounced \(cannot update "
                     rf"mailbox {mailbox} for user mfuser1\. error writing message: File too large\)", log)
    assert mailbox.read_bytes() == first


def test_dot_forward_is_read_and_run_as_the_user(daemon_factory, users):
    account = users["mfuser2"]
    record = world_readable_tempdir("mailferry-forward-")
    record.chmod(0o777)
    forward = Path(account.pw_dir) / ".forward"
    forward.write_text(f'\\mfuser2, "|id -u > {record}/uid"\n')
    os.chown(forward, account.pw_uid, account.pw_gid)
    forward.chmod(0o600)       # readable by its owner only: the spawner reads it as mfuser2
    daemon = local_daemon(daemon_factory, "a: mfuser1\n")
    message_id = send(daemon, ["mfuser2@example.test"])
    [path] = maildir_files(account)
    assert message_id.encode() in path.read_bytes()
    daemon.wait_for_log("to=<mfuser2@example.test>, relay=local")
    deadline = time.monotonic() + 20
    while not (record / "uid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (record / "uid").read_text().strip() == str(account.pw_uid)
    shutil.rmtree(record, ignore_errors=True)


def test_spool_mbox_in_a_root_only_spool_is_made_for_the_user(daemon_factory, users):
    spool = world_readable_tempdir("mailferry-spool-")        # root's, mode 0755, as /var/spool/mail often is
    daemon = local_daemon(daemon_factory, "a: mfuser2\n", home_mailbox="", mail_spool_directory=str(spool))
    message_id = send(daemon, ["mfuser2@example.test"])
    daemon.wait_for_log("status=sent (delivered to mailbox)")
    mailbox = spool / "mfuser2"
    status = mailbox.stat()
    assert (status.st_uid, status.st_mode & 0o777) == (users["mfuser2"].pw_uid, 0o600)
    assert message_id.encode() in mailbox.read_bytes()
    shutil.rmtree(spool, ignore_errors=True)


def test_unknown_local_user_is_refused_at_rcpt_aliases_and_accounts_pass(daemon_factory, users):
    """smtpd's local_recipient_maps (default: passwd, then $alias_maps) sees newaliases' table."""
    from tests.integration.test_rewriting import rcpt_reply
    # Postfix's default, which the integration tests' base main.cf empties
    daemon = local_daemon(daemon_factory, "team: mfuser1\n",
                          local_recipient_maps="proxy:unix:passwd.byname $alias_maps")
    assert rcpt_reply(daemon, "nosuchuser@example.test") == (
        550, "5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown in local recipient table")
    assert rcpt_reply(daemon, "team@example.test")[0] == 250
    assert rcpt_reply(daemon, "mfuser2@example.test")[0] == 250


def test_unknown_local_user_bounces_with_postfix_text(daemon_factory, users):
    # (smtpd's local_recipient_maps check would refuse it at RCPT; here it is off, so local(8) decides.)
    daemon = local_daemon(daemon_factory, "a: mfuser1\n", local_recipient_maps="")
    send(daemon, ["nosuchuser@example.test"])
    log = daemon.wait_for_log("status=bounced")
    assert 'dsn=5.1.1, status=bounced (unknown user: "nosuchuser")' in log


def flush(daemon, timeout: float = 30.0) -> None:
    """postqueue -f, again until the daemon's control socket answers (it opens just after start)."""
    deadline = time.monotonic() + timeout
    while True:
        done = daemon.command("postqueue", "-f")
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.1)


def test_kill9_during_local_delivery_loses_nothing_and_delivers_once(daemon_factory, users):
    """100 messages get their 250 while local mail goes to the retry transport (they wait; a
    master.cf without the `local` service is refused at start since check validates transports);
    then local_transport is local again, the queue flushed, and the daemon killed (-9) a few
    deliveries in. After a restart every message is in the Maildir exactly once and the queue is empty."""
    daemon = local_daemon(daemon_factory, "team: mfuser1\n")
    master_cf = (daemon.config_dir / "master.cf").read_text()
    main_cf = (daemon.config_dir / "main.cf").read_text()
    daemon.stop()
    assert "local_transport = local:$myhostname\n" in main_cf
    daemon.write_config(main_cf.replace("local_transport = local:$myhostname\n",
                                        "local_transport = retry:4.3.0 mail transport unavailable: paused\n"),
                        master_cf)
    daemon.start()
    ids = [make_msgid(domain=f"n{number}.client.example") for number in range(100)]
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        for message_id in ids:
            content = f"From: s@client.example\r\nSubject: n\r\nMessage-ID: {message_id}\r\n\r\nbody\r\n"
            assert client.sendmail("s@client.example", ["team@example.test"], content.encode()) == {}
    daemon.wait_for_log("mail transport unavailable", count=len(ids), timeout=60)
    daemon.stop()
    daemon.write_config(main_cf, master_cf)
    daemon.start()
    flush(daemon)
    maildir_files(users["mfuser1"], timeout=60, count=3)
    daemon.kill9()
    new = Path(users["mfuser1"].pw_dir) / "Maildir" / "new"
    delivered_before = len(list(new.iterdir()))
    daemon.start()
    flush(daemon)
    maildir_files(users["mfuser1"], timeout=120, count=len(ids))
    deadline = time.monotonic() + 60
    while daemon.queue_summary()[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.queue_summary()[0] == 0
    found = [re.search(rb"Message-ID: (<[^>]+>)", path.read_bytes()).group(1).decode()
             for path in sorted(new.iterdir())]
    assert sorted(found) == sorted(ids), f"{delivered_before} delivered before the kill"
    # The kill came while deliveries were under way, or the test proved nothing.
    assert 0 < delivered_before < len(ids)
