"""virtual(8) end to end: the real daemon delivers hosted mailboxes through the spawner.

Two hosted domains, as a Postfix site sets them up (virtual(8), VIRTUAL_README):
- virtual_mailbox_domains = a.test b.test, virtual_mailbox_maps a hash: table
  built with `mailferry postmap`, virtual_mailbox_base a directory of the test's;
- virtual_uid_maps = hash:uids static:65534: b.test's users have their own
  numeric ids in the table (no passwd entry needed, as in Postfix), a.test's
  fall through to static:65534 (nobody); virtual_gid_maps likewise.
The messages land in Maildirs (and one mbox), in files owned by the mapped
uid and gid; unknown virtual and local users are refused at RCPT.
"""

from __future__ import annotations

import os
import shutil
import smtplib
from pathlib import Path

import pytest

from tests.integration.conftest import world_readable_tempdir
from tests.integration.test_rewriting import rcpt_reply

pytestmark = pytest.mark.integration

B_UID, B_GID = 5001, 5002          # numbers no account has: virtual(8) needs none
NOBODY = 65534
FAST_RETRY = {"minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"}


@pytest.fixture
def hosted(daemon_factory):
    """A daemon hosting a.test and b.test, and the mailbox base it delivers under."""
    tables = world_readable_tempdir("mailferry-vtables-")
    base = world_readable_tempdir("mailferry-vmail-")
    # Each domain's directory belongs to its mailboxes' owner: the spawner creates the Maildirs as that owner.
    for domain, uid, gid in (("a.test", NOBODY, NOBODY), ("b.test", B_UID, B_GID)):
        (base / domain).mkdir(mode=0o700)
        os.chown(base / domain, uid, gid)
    (tables / "vmailbox").write_text("alice@a.test  a.test/alice/\nbob@b.test  b.test/bob/\n"
                                     "carol@b.test  b.test/carol/\ndave@b.test  b.test/dave\n")
    # Full addresses: the tables are searched key by key, so static: would answer `user@b.test`
    # before an `@b.test` line of the hash table was tried (Postfix's maps_find order).
    users = ("bob@b.test", "carol@b.test", "dave@b.test")
    (tables / "uids").write_text("".join(f"{user}  {B_UID}\n" for user in users))
    (tables / "gids").write_text("".join(f"{user}  {B_GID}\n" for user in users))
    daemon = daemon_factory(
        extra_services="virtual unix - n n - - virtual\n",
        virtual_mailbox_domains="a.test b.test",
        virtual_mailbox_maps=f"hash:{tables}/vmailbox",
        virtual_uid_maps=f"hash:{tables}/uids static:{NOBODY}",
        virtual_gid_maps=f"hash:{tables}/gids static:{NOBODY}",
        virtual_mailbox_base=str(base),
        local_recipient_maps=f"proxy:unix:passwd.byname texthash:{tables}/aliases",
        message_size_limit="4000", virtual_mailbox_limit="5000",
        **FAST_RETRY)
    (tables / "aliases").write_text("webmaster  root\n")
    for table in ("vmailbox", "uids", "gids"):
        built = daemon.command("postmap", f"hash:{tables}/{table}")
        assert built.returncode == 0, built.stderr
    daemon.start()
    yield daemon, base
    for path in (tables, base):
        shutil.rmtree(path, ignore_errors=True)


def send(daemon, recipients: list[str], body: str = "Hello from the test.\n", subject: str = "virtual") -> None:
    message = f"From: <sender@example.org>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        refused = client.sendmail("sender@example.org", recipients, message)
    assert refused == {}


def maildir_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []


def test_two_hosted_domains_deliver_to_maildirs_owned_by_the_mapped_ids(hosted):
    daemon, base = hosted
    send(daemon, ["alice@a.test", "bob@b.test", "Carol@B.test"], subject="hosted")
    log = daemon.wait_for_log("status=sent (delivered to maildir)", count=3)
    assert "relay=virtual" in log
    owners = {"a.test/alice": (NOBODY, NOBODY), "b.test/bob": (B_UID, B_GID), "b.test/carol": (B_UID, B_GID)}
    for mailbox, (uid, gid) in owners.items():
        files = maildir_files(base / mailbox)
        assert len(files) == 1, (mailbox, files)
        status = os.stat(files[0])
        assert (status.st_uid, status.st_gid) == (uid, gid), mailbox
        assert (status.st_mode & 0o777) == 0o600
        maildir = os.stat(base / mailbox)
        assert (maildir.st_uid, maildir.st_gid) == (uid, gid), mailbox
        content = files[0].read_bytes()
        assert content.startswith(b"Return-Path: <sender@example.org>\nX-Original-To: ")
        assert b"\r\n" not in content                     # LF line ends in a mailbox
        assert b"Subject: hosted\n" in content and content.endswith(b"Hello from the test.\n")
    assert b"Delivered-To: Carol@B.test\n" in maildir_files(base / "b.test/carol")[0].read_bytes()
    assert maildir_files(base / "a.test/alice")[0].read_bytes().count(b"Delivered-To: alice@a.test\n") == 1


def test_an_mbox_mailbox_and_virtual_mailbox_limit_bounce_5_2_2(hosted):
    daemon, base = hosted
    send(daemon, ["dave@b.test"], body="x" * 3000 + "\n", subject="first")
    daemon.wait_for_log("status=sent (delivered to mailbox)")
    mbox = base / "b.test/dave"
    assert (os.stat(mbox).st_uid, os.stat(mbox).st_gid) == (B_UID, B_GID)
    assert mbox.read_bytes().startswith(b"From sender@example.org ")
    send(daemon, ["dave@b.test"], body="y" * 3000 + "\n", subject="second")
    log = daemon.wait_for_log("status=bounced (delivery failed to mailbox")
    assert "to=<dave@b.test>, relay=virtual" in log and "dsn=5.2.2" in log
    assert b"Subject: second" not in mbox.read_bytes()


def test_an_unknown_virtual_user_is_refused_at_rcpt(hosted):
    daemon, _ = hosted
    assert rcpt_reply(daemon, "ghost@a.test") == (
        550, "5.1.1 <ghost@a.test>: Recipient address rejected: User unknown in virtual mailbox table")
    daemon.wait_for_log("NOQUEUE: reject: RCPT from")


def test_an_unknown_local_user_is_refused_at_rcpt_known_ones_pass(hosted):
    daemon, _ = hosted
    assert rcpt_reply(daemon, "nosuchuser@example.test") == (
        550, "5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown in local recipient table")
    assert rcpt_reply(daemon, "root@example.test")[0] == 250          # an account
    assert rcpt_reply(daemon, "webmaster@example.test")[0] == 250     # an alias
    assert rcpt_reply(daemon, "postmaster@example.test")[0] == 250    # always


def test_unknown_local_recipient_reject_code_sets_the_code(daemon_factory):
    daemon = daemon_factory(local_recipient_maps="unix:passwd.byname",
                            unknown_local_recipient_reject_code="450").start()
    code, text = rcpt_reply(daemon, "nosuchuser@example.test")
    # The status class follows the code, as Postfix's smtpd_check_reject makes it: 450 4.1.1.
    assert (code, text) == (
        450, "4.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown in local recipient table")
