"""local(8) (delivery/local.py) against a recording spawner and a passwd of the test's own.

The spawner here does what master/spawner.py is asked, without rights: it records each
request, reads files for `cat`, and answers as the test says. Integration tests
(tests/integration/test_local_delivery.py) run the real one.
"""

import asyncio
import os
import pwd

import pytest

from mailferry.delivery.local import ForwardError, LocalAgent, open_alias_maps
from mailferry.delivery.local_settings import LocalSettings
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import CommandResult, MailboxResult, RunAs
from mailferry.message import BOUNCED, DEFERRED, SENT, QueuedMessage, Recipient
from mailferry.tables.aliases import read_alias_entries
from mailferry.tables.build import build_index
from tests.unit.listlog import ListLog

CONTENT = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"


class RecordingSpawner:
    def __init__(self):
        self.commands = []
        self.mailboxes = []
        self.command_result = CommandResult(0)
        self.mailbox_result = MailboxResult(True, "file")

    async def run_command(self, request):
        if request.argv[0] == "/bin/cat":
            try:
                with open(request.argv[-1], "rb") as handle:
                    return CommandResult(0, output=handle.read())
            except OSError as problem:
                return CommandResult(1, output=f"cat: {problem.strerror}".encode())
        self.commands.append(request)
        return self.command_result

    async def store_in_mailbox(self, request):
        self.mailboxes.append(request)
        return self.mailbox_result


class Forwarder:
    def __init__(self, fail=False):
        self.messages = []
        self.fail = fail

    async def forward(self, message):
        if self.fail:
            raise ForwardError("queue file write error")
        self.messages.append(message)
        return f"FWD{len(self.messages)}"


class Passwd:
    """alice (uid 2001) and bob (2002) with homes under tmp; root as itself."""

    def __init__(self, tmp_path):
        self.entries = {}
        for name, uid in (("alice", 2001), ("bob", 2002), ("nobody", 65534)):
            home = tmp_path / "home" / name
            home.mkdir(parents=True, exist_ok=True)
            self.entries[name] = pwd.struct_passwd((name, "x", uid, uid, "", str(home), "/bin/sh"))
        self.entries["root"] = pwd.struct_passwd(("root", "x", 0, 0, "", "/root", "/bin/bash"))

    def by_name(self, name):
        return self.entries.get(name)

    def by_uid(self, uid):
        return next((entry for entry in self.entries.values() if entry.pw_uid == uid), None)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


class World:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.spawner = RecordingSpawner()
        self.forwarder = Forwarder()
        self.passwd = Passwd(tmp_path)
        self.log = ListLog()

    def home(self, name):
        return self.passwd.entries[name].pw_dir

    def agent(self, aliases="", owner_uid=0, table_type="hash", **settings):
        maps = []
        if aliases:
            source = self.tmp / "aliases"
            source.write_text(aliases)
            if table_type == "texthash":
                spec = f"texthash:{source}"
            else:
                build_index(table_type, str(source), True, None, read_alias_entries)
                os.chown(f"{source}.db", owner_uid, owner_uid)
                spec = f"{table_type}:{source}"
            maps = open_alias_maps([spec], self.log.texts().append, self.passwd)
        defaults = {"alias_maps": [], "myorigin": "host.example", "recipient_delimiter": "+",
                    "home_mailbox": "Maildir/"}
        defaults.update(settings)
        return LocalAgent(LocalSettings(**defaults), self.spawner, self.log, maps,
                          lambda domain: domain in ("host.example", "localhost"), self.forwarder,
                          accounts=self.passwd)

    def deliver(self, agent, *addresses, content=CONTENT, sender="sender@example.org", orcpt=None):
        message = QueuedMessage("QID1", "active", sender, [], len(content), 1700000000.0)
        recipients = [Recipient(address, orcpt=orcpt) for address in addresses]
        return asyncio.run(agent.deliver(DeliveryJob(message, content, recipients, "host.example")))


def test_user_gets_a_maildir_in_home_as_the_user(world):
    [result] = world.deliver(world.agent(), "Alice@host.example")
    assert (result.status, result.dsn, result.reason, result.relay) == (SENT, "2.0.0", "delivered to maildir", "local")
    [request] = world.spawner.mailboxes
    assert request.run_as == RunAs(user="alice")
    assert request.path == os.path.join(world.home("alice"), "Maildir/")
    assert request.content.startswith(b"Return-Path: <sender@example.org>\nX-Original-To: Alice@host.example\n"
                                      b"Delivered-To: Alice@host.example\nFrom: a@example.org\n")
    assert b"\r\n" not in request.content
    assert request.sender == "sender@example.org" and request.arrival_time == 1700000000.0


def test_mbox_under_home_and_spool(world, tmp_path):
    world.deliver(world.agent(home_mailbox="Mailbox"), "bob@host.example")
    assert world.spawner.mailboxes[-1].path == os.path.join(world.home("bob"), "Mailbox")
    spool = tmp_path / "spool"
    spool.mkdir()
    [result] = world.deliver(world.agent(home_mailbox="", mail_spool_directory=str(spool)), "bob@host.example")
    assert result.reason == "delivered to mailbox"
    assert world.spawner.mailboxes[-1].path == f"{spool}/bob"
    world.deliver(world.agent(home_mailbox="", mail_spool_directory=f"{spool}/"), "bob@host.example")
    assert world.spawner.mailboxes[-1].path == f"{spool}/bob/"


def test_extension_is_split_off_for_the_mailbox(world):
    [result] = world.deliver(world.agent(), "alice+lists@host.example")
    assert result.status == SENT and world.spawner.mailboxes[0].run_as.user == "alice"


def test_unknown_user_bounces_with_postfix_text(world):
    [result] = world.deliver(world.agent(), "nosuch@host.example")
    assert (result.status, result.dsn, result.reason) == (BOUNCED, "5.1.1", 'unknown user: "nosuch"')


def test_luser_relay_takes_unknown_users(world):
    [result] = world.deliver(world.agent(luser_relay="catchall+$user@elsewhere.example"), "nosuch@host.example")
    assert (result.status, result.reason) == (SENT, "forwarded as FWD1")
    [copy] = world.forwarder.messages
    assert [r.address for r in copy.recipients] == ["catchall+nosuch@elsewhere.example"]
    assert copy.sender == "sender@example.org"
    assert copy.content.startswith(b"Delivered-To: nosuch@host.example\r\nFrom:")


def test_luser_relay_to_a_local_user(world):
    [result] = world.deliver(world.agent(luser_relay="bob"), "nosuch@host.example")
    assert result.status == SENT and world.spawner.mailboxes[0].run_as.user == "bob"


def test_alias_to_two_users_delivers_both_mailboxes(world):
    agent = world.agent("team: alice, bob@host.example\n")
    [result] = world.deliver(agent, "team@host.example")
    assert (result.status, result.reason) == (SENT, "delivered to maildir")
    assert [r.run_as.user for r in world.spawner.mailboxes] == ["alice", "bob"]
    # frozen_delivered_to: the copies say which address was delivered to
    assert all(b"Delivered-To: team@host.example\n" in r.content for r in world.spawner.mailboxes)


def test_alias_lookup_full_localpart_then_user(world):
    agent = world.agent("team+x: alice\nteam: bob\n")
    world.deliver(agent, "team+x@host.example")
    world.deliver(agent, "team+y@host.example")
    assert [r.run_as.user for r in world.spawner.mailboxes] == ["alice", "bob"]


def test_alias_naming_itself_delivers_to_the_user(world):
    [result] = world.deliver(world.agent("alice: alice, bob\n"), "alice@host.example")
    assert result.status == SENT
    assert sorted(r.run_as.user for r in world.spawner.mailboxes) == ["alice", "bob"]


def test_duplicates_in_an_expansion_are_delivered_once(world):
    world.deliver(world.agent("team: alice, alice, sub\nsub: alice, bob\n"), "team@host.example")
    assert sorted(r.run_as.user for r in world.spawner.mailboxes) == ["alice", "bob"]


def test_alias_loop_bounces(world):
    [result] = world.deliver(world.agent("a: b\nb: a\n"), "a@host.example")
    assert result.status == BOUNCED and result.dsn == "5.4.6"


def test_remote_alias_destination_is_forwarded_through_cleanup(world):
    [result] = world.deliver(world.agent("ext: someone@remote.example, other@remote.example\n"),
                             "ext@host.example")
    assert (result.status, result.reason) == (SENT, "forwarded as FWD1")
    [copy] = world.forwarder.messages
    assert [r.address for r in copy.recipients] == ["someone@remote.example", "other@remote.example"]
    assert all(r.orcpt == "rfc822;ext@host.example" for r in copy.recipients)


def test_forward_failure_waits(world):
    world.forwarder.fail = True
    [result] = world.deliver(world.agent("ext: someone@remote.example\n"), "ext@host.example")
    assert (result.status, result.dsn) == (DEFERRED, "4.3.0")
    assert "queue file write error" in result.reason


def test_owner_alias_becomes_the_envelope_sender(world):
    agent = world.agent("list: someone@remote.example\nowner-list: alice\n")
    world.deliver(agent, "list@host.example")
    assert world.forwarder.messages[0].sender == "owner-list@host.example"


def test_delivered_to_loop_bounces(world):
    content = b"Delivered-To: alice@host.example\r\n" + CONTENT
    [result] = world.deliver(world.agent(), "alice@host.example", content=content)
    assert (result.status, result.dsn, result.reason) == (BOUNCED, "5.4.6",
                                                          "mail forwarding loop for alice@host.example")
    assert world.spawner.mailboxes == []


def test_command_alias_runs_as_default_privs_with_postfix_environment(world):
    agent = world.agent('report: "|/usr/bin/logger -t mail"\n', default_privs="nobody")
    [result] = world.deliver(agent, "report+ext@host.example")
    assert (result.status, result.reason) == (SENT, "delivered to command: /usr/bin/logger -t mail")
    [request] = world.spawner.commands
    assert request.argv == ("/bin/sh", "-c", "/usr/bin/logger -t mail")
    assert request.run_as == RunAs(user="nobody")
    env = dict(request.env)
    assert env["USER"] == env["LOGNAME"] == "report"
    assert env["EXTENSION"] == "ext" and env["DOMAIN"] == "host.example" and env["LOCAL"] == "report+ext"
    assert env["RECIPIENT"] == "report+ext@host.example" and env["SENDER"] == "sender@example.org"
    assert env["HOME"] == world.home("nobody") and env["ORIGINAL_RECIPIENT"] == "report+ext@host.example"
    assert request.stdin.startswith(b"Return-Path: <sender@example.org>\n")
    assert b"Delivered-To: report+ext@host.example\n" in request.stdin


def test_alias_table_owned_by_a_user_runs_commands_as_that_user(world):
    agent = world.agent('report: "|/bin/true"\n', owner_uid=2002)
    world.deliver(agent, "report@host.example")
    assert world.spawner.commands[0].run_as == RunAs(user="bob")


@pytest.mark.parametrize("status, outcome, dsn", [(75, DEFERRED, "4.3.0"), (67, BOUNCED, "5.1.1"),
                                                  (1, BOUNCED, "5.3.0")])
def test_command_exit_status_maps_as_sysexits(world, status, outcome, dsn):
    world.spawner.command_result = CommandResult(status, output=b"no such mailbox\n")
    [result] = world.deliver(world.agent('p: "|/bin/false"\n'), "p@host.example")
    assert (result.status, result.dsn) == (outcome, dsn)
    assert "Command output: no such mailbox" in result.reason


def test_commands_and_files_can_be_disallowed(world):
    agent = world.agent('p: "|/bin/true", /tmp/x.mbox\n', allow_mail_to_commands=frozenset({"forward"}),
                        allow_mail_to_files=frozenset())
    [result] = world.deliver(agent, "p@host.example")
    assert (result.status, result.dsn, result.reason) == (BOUNCED, "5.7.1", "mail to command is restricted")
    assert world.spawner.commands == [] and world.spawner.mailboxes == []


def test_file_and_maildir_destinations(world):
    agent = world.agent("arch: /srv/archive.mbox, /srv/archive/\n", default_privs="nobody")
    [result] = world.deliver(agent, "arch@host.example")
    assert result.status == SENT
    assert [(r.path, r.run_as.user) for r in world.spawner.mailboxes] == [
        ("/srv/archive.mbox", "nobody"), ("/srv/archive/", "nobody")]


def test_include_file_members_are_forwarded_with_its_owner_rights(world, tmp_path):
    members = tmp_path / "members"
    members.write_text("# the list\nalice\nbob, someone@remote.example\n")
    os.chown(members, 2002, 2002)
    [result] = world.deliver(world.agent(f"list: :include:{members}\n"), "list@host.example")
    assert result.status == SENT
    [copy] = world.forwarder.messages
    assert [r.address for r in copy.recipients] == ["alice@host.example", "bob@host.example",
                                                    "someone@remote.example"]


def test_include_file_commands_are_restricted_unless_allowed(world, tmp_path):
    members = tmp_path / "members"
    members.write_text("|/bin/cat\n")
    os.chown(members, 2002, 2002)
    [result] = world.deliver(world.agent(f"list: :include:{members}\n"), "list@host.example")
    assert (result.status, result.reason) == (BOUNCED, "mail to command is restricted")
    allowed = frozenset({"alias", "forward", "include"})
    [result] = world.deliver(world.agent(f"list: :include:{members}\n", allow_mail_to_commands=allowed),
                             "list@host.example")
    assert result.status == SENT
    assert world.spawner.commands[0].run_as == RunAs(user="bob")


def test_missing_include_file_waits(world, tmp_path):
    [result] = world.deliver(world.agent(f"list: :include:{tmp_path}/absent\n"), "list@host.example")
    assert (result.status, result.reason) == (
        DEFERRED, f"cannot open include file {tmp_path}/absent: No such file or directory")


def test_dot_forward_is_read_and_its_command_runs_as_the_user(world):
    forward = os.path.join(world.home("alice"), ".forward")
    with open(forward, "w") as handle:
        handle.write('\\alice, "|/usr/bin/procmail"\n')
    os.chown(forward, 2001, 2001)
    [result] = world.deliver(world.agent(), "alice@host.example")
    assert result.status == SENT
    assert world.spawner.commands[0].run_as == RunAs(user="alice")
    assert [r.run_as.user for r in world.spawner.mailboxes] == ["alice"]


def test_dot_forward_with_extension_is_tried_first(world):
    for name, text in ((".forward+lists", "bob\n"), (".forward", "someone@remote.example\n")):
        path = os.path.join(world.home("alice"), name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chown(path, 2001, 2001)
    world.deliver(world.agent(), "alice+lists@host.example")
    assert [r.address for r in world.forwarder.messages[0].recipients] == ["bob@host.example"]
    world.deliver(world.agent(), "alice@host.example")
    assert [r.address for r in world.forwarder.messages[1].recipients] == ["someone@remote.example"]


def test_dot_forward_owned_by_someone_else_is_ignored(world):
    forward = os.path.join(world.home("alice"), ".forward")
    with open(forward, "w") as handle:
        handle.write("someone@remote.example\n")
    os.chown(forward, 2002, 2002)
    [result] = world.deliver(world.agent(), "alice@host.example")
    assert result.reason == "delivered to maildir"
    assert any("bad owner uid 2002" in text for text in world.log.warnings())


def test_mailbox_command_runs_as_the_user(world):
    [result] = world.deliver(world.agent(mailbox_command='/usr/lib/dovecot/deliver -a "$RECIPIENT"'),
                             "bob@host.example")
    assert result.reason == 'delivered to command: /usr/lib/dovecot/deliver -a "$RECIPIENT"'
    assert world.spawner.commands[0].run_as == RunAs(user="bob")


def test_mailbox_command_reaches_the_shell_as_written(world):
    """postconf(5): mailbox_command is not $-expanded; /bin/sh expands "$EXTENSION" from the
    environment local(8) exports (Debian's `procmail -a "$EXTENSION"`)."""
    world.deliver(world.agent(mailbox_command='procmail -a "$EXTENSION" $user'), "bob+tag@host.example")
    request = world.spawner.commands[0]
    assert request.argv == ("/bin/sh", "-c", 'procmail -a "$EXTENSION" $user')
    assert dict(request.env)["EXTENSION"] == "tag"


def test_full_mailbox_bounces_5_2_2(world):
    world.spawner.mailbox_result = MailboxResult(False, error="error writing message: File too large",
                                                 errno=27, too_big=True)
    [result] = world.deliver(world.agent(home_mailbox="Mailbox", mailbox_size_limit=1000), "bob@host.example")
    assert world.spawner.mailboxes[0].size_limit == 1000
    assert (result.status, result.dsn) == (BOUNCED, "5.2.2")
    assert result.reason == (f"cannot update mailbox {world.home('bob')}/Mailbox for user bob. "
                             "error writing message: File too large")


def test_unwritable_mailbox_waits(world):
    world.spawner.mailbox_result = MailboxResult(False, error="Permission denied", errno=13)
    [result] = world.deliver(world.agent(), "bob@host.example")
    assert (result.status, result.dsn) == (DEFERRED, "4.2.0")
    assert result.reason == "maildir delivery failed: Permission denied"


def test_mail_for_root_waits_for_an_alias(world):
    [result] = world.deliver(world.agent(), "root@host.example")
    assert result.status == DEFERRED and "alias root to a real user" in result.reason
    assert world.spawner.mailboxes == []
    [result] = world.deliver(world.agent("root: alice\n"), "root@host.example")
    assert result.status == SENT and world.spawner.mailboxes[0].run_as.user == "alice"


def test_one_failing_part_makes_the_recipient_wait(world):
    world.forwarder.fail = True
    [result] = world.deliver(world.agent("team: alice, someone@remote.example\n"), "team@host.example")
    assert result.status == DEFERRED
    assert [r.run_as.user for r in world.spawner.mailboxes] == ["alice"]


def test_texthash_alias_table_and_a_rebuilt_index_is_reopened(world, tmp_path):
    agent = world.agent("team: alice\n", table_type="texthash")
    world.deliver(agent, "team@host.example")
    assert world.spawner.mailboxes[-1].run_as.user == "alice"
    agent = world.agent("team: alice\n")
    source = tmp_path / "aliases"
    source.write_text("team: bob\n")
    build_index("hash", str(source), True, None, read_alias_entries)
    world.deliver(agent, "team@host.example")
    assert world.spawner.mailboxes[-1].run_as.user == "bob"


def test_nis_alias_map_is_skipped_with_a_warning(world, tmp_path):
    source = tmp_path / "aliases"
    source.write_text("a: b\n")
    warnings = []
    maps = open_alias_maps([f"texthash:{source}", "nis:mail.aliases"], warnings.append)
    assert len(maps) == 1
    assert warnings == ["alias_maps: nis:mail.aliases: mailferry has no NIS client; this table is skipped"]


def test_settings_from_postfix_defaults():
    from mailferry.config.config import Config
    from mailferry.config.maincf import MainCf
    settings = LocalSettings.from_config(Config("/nonexistent", MainCf("/nonexistent/main.cf", {}, [])))
    assert settings.forward_path == ("$home/.forward${recipient_delimiter}${extension}", "$home/.forward")
    assert settings.alias_maps == ["hash:/etc/aliases", "nis:mail.aliases"]
    assert settings.allow_mail_to_commands == frozenset({"alias", "forward"})
    assert settings.mailbox_size_limit == 51200000 and settings.mail_spool_directory == "/var/mail"


def test_unbuilt_alias_table_says_to_run_newaliases(tmp_path):
    from mailferry.tables import TableError
    source = tmp_path / "aliases"
    source.write_text("a: b\n")
    with pytest.raises(TableError) as raised:
        open_alias_maps([f"hash:{source}"], print)
    assert str(raised.value) == (f"{source}.db: no such file; build it with: mailferry newaliases hash:{source}")
