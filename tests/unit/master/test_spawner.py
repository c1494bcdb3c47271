"""The privileged spawner, forked for real by each test (the tests run as root).

Each request crosses the same socket and JSON framing the daemon uses; what
the command saw (its ids, input, environment, directory) comes back in its
output.
"""

import array
import asyncio
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import socket
import tempfile
import time
from pathlib import Path

import pytest

from mailferry.config.config import load
from mailferry.config.mastercf import read_master_cf
from mailferry.delivery.agents import open_client_tables, reopen_client_tables
from mailferry.delivery.spawn import CommandRequest, MailboxRequest, RunAs
from mailferry.master.spawner import (COMMAND, PASSWORD_TABLES, RequestError, SpawnerClient, command_header,
                                      mailbox_header, parse_command, parse_mailbox, parse_run_as, start_spawner)
from tests.unit.listlog import ListLog

NOBODY = pwd.getpwnam("nobody")
PATH = (("PATH", "/usr/bin:/bin"),)


@pytest.fixture
def spawned(tmp_path):
    process = start_spawner(str(tmp_path / "config"))
    yield process
    process.stop()


@pytest.fixture
def reachable():
    """A directory other users can reach (pytest's tmp_path is under root's 0700 directory)."""
    path = tempfile.mkdtemp(prefix="spawner-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


@pytest.fixture
def client(spawned):
    return SpawnerClient(spawned.control)


def run(coroutine):
    return asyncio.run(coroutine)


def command(argv, run_as=RunAs(user="nobody"), stdin=b"", **options):
    return CommandRequest(run_as, tuple(argv), stdin, **{"env": PATH, **options})


def shell(script, **options):
    return command(["/bin/sh", "-c", script], **options)


def test_a_command_runs_as_the_named_user_with_its_own_groups(client):
    result = run(client.run_command(shell("id -u; id -g; id -G")))
    assert result.error == ""
    assert result.exit_status == 0
    assert result.output.decode().split("\n")[:2] == [str(NOBODY.pw_uid), str(NOBODY.pw_gid)]
    groups = {int(gid) for gid in result.output.decode().split("\n")[2].split()}
    assert groups == {NOBODY.pw_gid, *(group.gr_gid for group in grp.getgrall() if "nobody" in group.gr_mem)}


def test_a_group_named_beside_the_user_replaces_its_primary_group(client):
    result = run(client.run_command(shell("id -u; id -g", run_as=RunAs(user="nobody", group="daemon"))))
    assert result.output.decode().split() == [str(NOBODY.pw_uid), str(grp.getgrnam("daemon").gr_gid)]


def test_numeric_ids_are_used_as_given_with_no_supplementary_groups(client):
    result = run(client.run_command(shell("id -u; id -g; id -G", run_as=RunAs(uid=54321, gid=54322))))
    assert result.error == ""
    assert result.output.decode().split() == ["54321", "54322", "54322"]


@pytest.mark.parametrize("run_as", [RunAs(user="root"), RunAs(uid=0, gid=NOBODY.pw_gid),
                                    RunAs(uid=NOBODY.pw_uid, gid=0), RunAs(user="nobody", group="root")],
                         ids=["user-root", "uid-0", "gid-0", "group-root"])
def test_root_is_refused_and_nothing_runs(client, tmp_path, run_as):
    marker = tmp_path / "ran"
    result = run(client.run_command(command(["/usr/bin/touch", str(marker)], run_as=run_as)))
    assert result.exit_status is None
    assert "refusing to deliver as" in result.error and "root privileges" in result.error
    assert not marker.exists()


def test_an_unknown_user_is_refused_for_good(client):
    result = run(client.run_command(command(["/usr/bin/id"], run_as=RunAs(user="no-such-user-here"))))
    assert (result.exit_status, result.error, result.temporary) == (None, "unknown user: no-such-user-here", False)
    result = run(client.run_command(command(["/usr/bin/id"], run_as=RunAs(user="nobody", group="no-such-group"))))
    assert (result.error, result.temporary) == ("unknown group: no-such-group", False)


def test_the_input_reaches_the_command_and_the_environment_is_exactly_the_one_given(client):
    env = (("PATH", "/usr/bin:/bin"), ("SENDER", "a@example.test"), ("EMPTY", ""))
    result = run(client.run_command(shell("env; cat", stdin=b"line one\nline two\n", env=env)))
    lines = result.output.decode().splitlines()
    assert lines[-2:] == ["line one", "line two"]
    assert sorted(line for line in lines[:-2] if line != "PWD=/") == sorted(f"{k}={v}" for k, v in env)


def test_a_command_that_does_not_read_its_input_is_not_an_error(client):
    result = run(client.run_command(command(["/bin/true"], stdin=b"x" * (4 << 20))))
    assert (result.exit_status, result.error, result.timed_out) == (0, "", False)


def test_the_output_is_cut_at_the_limit_and_the_command_still_finishes(client):
    result = run(client.run_command(shell("head -c 300000 /dev/zero; echo done >&2; exit 3", output_limit=100)))
    assert result.output == b"\0" * 100
    assert result.exit_status == 3


def test_exit_status_and_death_by_signal_are_told_apart(client):
    assert run(client.run_command(shell("exit 75"))).exit_status == 75
    killed = run(client.run_command(shell("kill -TERM $$")))
    assert (killed.exit_status, killed.signal, killed.timed_out) == (None, signal.SIGTERM, False)


def test_a_hanging_command_and_its_grandchild_are_killed_at_the_time_limit(client):
    result = run(client.run_command(shell("sleep 300 & echo $!; wait", time_limit=1)))
    assert result.timed_out and result.signal == signal.SIGKILL and result.exit_status is None
    grandchild = int(result.output.split()[0])
    assert _gone_within(grandchild, 10), "the sleeping grandchild outlived the time limit"


def _gone_within(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True        # dead, waiting for init to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_the_command_runs_in_the_directory_asked_and_one_it_cannot_enter_waits(client, reachable):
    home = reachable / "home"
    home.mkdir()
    assert run(client.run_command(command(["/bin/pwd"], cwd=str(home)))).output == f"{home}\n".encode()
    os.chmod(home, 0o700)           # root's: nobody cannot enter it
    result = run(client.run_command(command(["/bin/pwd"], cwd=str(home))))
    assert (result.exit_status, result.output, result.temporary) == (None, b"", True)
    assert result.error == (f'cannot change directory to "{home}" for uid={NOBODY.pw_uid} gid={NOBODY.pw_gid}: '
                            "Permission denied")


def test_a_command_that_cannot_be_executed_says_why(client):
    result = run(client.run_command(command(["/no/such/program", "-x"])))
    assert (result.exit_status, result.temporary) == (None, True)
    assert result.error == "execvp /no/such/program: No such file or directory"


def test_requests_run_side_by_side(client, reachable):
    """Each command waits (boundedly) until all four have started: only concurrency lets all see 4."""
    meeting = reachable / "meeting"
    meeting.mkdir(mode=0o777)
    os.chmod(meeting, 0o777)
    script = (f"touch {meeting}/$$; i=0; while [ $(ls {meeting} | wc -l) -lt 4 ] && [ $i -lt 400 ]; "
              f"do sleep 0.05; i=$((i+1)); done; ls {meeting} | wc -l")

    async def four():
        return await asyncio.gather(*(client.run_command(shell(script)) for _ in range(4)))
    results = run(four())
    assert [result.output.strip() for result in results] == [b"4"] * 4


def test_a_mailbox_is_written_as_its_owner(client, reachable):
    home = reachable / "nobody"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    result = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{home}/Maildir/", b"Subject: hi\n\nbody\n")))
    assert result.stored, result.error
    written = home / "Maildir" / "new" / result.file
    assert written.read_bytes() == b"Subject: hi\n\nbody\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    mbox = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{home}/mbox", b"x\n", "a@b.test")))
    assert mbox.stored and (home / "mbox").stat().st_uid == NOBODY.pw_uid


def test_a_mailbox_the_user_may_not_write_is_an_error_not_roots_write(client, reachable):
    result = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{reachable}/mbox", b"x\n")))
    assert not result.stored
    assert result.error == (f"cannot update mailbox {reachable}/mbox for user nobody. cannot open file: "
                            "Permission denied")
    assert result.errno == 13
    assert not (reachable / "mbox").exists()


def test_a_mailbox_for_root_is_refused(client, tmp_path):
    result = run(client.store_in_mailbox(MailboxRequest(RunAs(user="root"), f"{tmp_path}/mbox", b"x\n")))
    assert not result.stored and "refusing to deliver as root" in result.error
    assert not (tmp_path / "mbox").exists()


@pytest.mark.parametrize("header", [
    {"kind": COMMAND, "run_as": {"user": "nobody"}, "argv": "/usr/bin/id", "cwd": "/", "time_limit": 5,
     "output_limit": 10},
    {"kind": COMMAND, "run_as": {"user": "nobody"}, "argv": [], "cwd": "/", "time_limit": 5, "output_limit": 10},
    {"kind": COMMAND, "run_as": {"uid": "65534", "gid": 65534}, "argv": ["/usr/bin/id"], "cwd": "/",
     "time_limit": 5, "output_limit": 10},
    {"kind": COMMAND, "run_as": {"uid": True, "gid": 65534}, "argv": ["/usr/bin/id"], "cwd": "/",
     "time_limit": 5, "output_limit": 10},
    {"kind": COMMAND, "run_as": {"user": "nobody", "uid": 65534, "gid": 65534}, "argv": ["/usr/bin/id"],
     "cwd": "/", "time_limit": 5, "output_limit": 10},
    {"kind": COMMAND, "run_as": {"user": "nobody"}, "argv": ["/usr/bin/id"], "cwd": "relative",
     "time_limit": 5, "output_limit": 10},
    {"kind": COMMAND, "run_as": {"user": "nobody"}, "argv": ["/usr/bin/id"], "cwd": "/", "time_limit": 0,
     "output_limit": 10},
    {"kind": COMMAND, "run_as": {"user": "nobody"}, "argv": ["/usr/bin/id"], "cwd": "/", "time_limit": 5,
     "output_limit": 10, "env": [["A=B", "c"]]},
    {"kind": "shell", "script": "id"},
    {"kind": COMMAND},
], ids=["argv-not-list", "argv-empty", "uid-text", "uid-bool", "user-and-uid", "cwd-relative", "no-time",
        "env-name", "unknown-kind", "empty"])
def test_malformed_requests_are_refused(client, header):
    answer, _ = run(client._ask(header, b"", 30))
    assert answer["refused"].startswith("malformed request")


def test_garbage_on_the_wire_is_refused_and_the_spawner_goes_on(client, spawned):
    ours, theirs = socket.socketpair()
    spawned.control.sendmsg([b"r"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
    theirs.close()
    ours.sendall(b"\0\0\0\x05[1,2]")
    reply = ours.recv(4096)
    assert b"malformed request" in reply
    ours.close()
    assert run(client.run_command(command(["/bin/true"]))).exit_status == 0


def test_the_parsers_return_what_the_client_sent():
    request = CommandRequest(RunAs(user="nobody", group="daemon"), ("/bin/x", "-e", "caf\udce9"), b"in",
                             (("A", "1"),), "/tmp", 12.5, 99)
    header = json.loads(json.dumps(command_header(request)))
    assert parse_command(header, b"in") == request
    box = MailboxRequest(RunAs(uid=1000, gid=1001), "/var/mail/u", b"m", "s@x", 1.5, 10, ("flock",), 3, 0.5, 9.0)
    assert parse_mailbox(json.loads(json.dumps(mailbox_header(box))), b"m") == box
    with pytest.raises(RequestError):
        parse_run_as({"user": "nobody", "shell": "/bin/sh"})


def test_a_dead_spawner_is_a_temporary_error_and_the_master_logs_it(spawned, client, tmp_path):
    os.kill(spawned.pid, signal.SIGKILL)
    log = ListLog()
    deadline = time.monotonic() + 10
    while not spawned.dead and time.monotonic() < deadline:
        spawned.check(log)
        time.sleep(0.02)
    [warning] = log.warnings()
    assert f"process spawner pid {spawned.pid} exit status -9" in warning
    assert "cannot be restarted without root" in warning
    result = run(client.run_command(command(["/bin/true"])))
    assert result.exit_status is None and result.temporary
    assert "privileged spawner is not available" in result.error
    stored = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{tmp_path}/m", b"x\n")))
    assert not stored.stored and stored.errno == 11 and "not available" in stored.error


def test_not_started_as_root_it_runs_as_that_user_and_refuses_another(tmp_path):
    """A test process that has become nobody starts its own spawner, as the quickstart does."""
    def ask_as_nobody():
        process = start_spawner(str(tmp_path))
        client = SpawnerClient(process.control)

        async def ask():
            return [await client.run_command(shell("id -u", run_as=run_as)) for run_as in
                    (RunAs(user="nobody"), RunAs(uid=NOBODY.pw_uid, gid=NOBODY.pw_gid), RunAs(user="daemon"),
                     RunAs(uid=1, gid=1))]
        results = run(ask())
        process.stop()
        return [[result.output.decode(), result.error] for result in results]
    assert _as_nobody(ask_as_nobody) == [[f"{NOBODY.pw_uid}\n", ""], [f"{NOBODY.pw_uid}\n", ""],
                                         ["", "mailferry is not running as root: cannot deliver as daemon"],
                                         ["", "mailferry is not running as root: cannot deliver as 1"]]


def test_password_tables_are_the_configurations_own_read_with_roots_rights(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    secrets = tmp_path / "sasl_passwd"
    secrets.write_text("[smtp.example.test]:587 user:secret\n")
    os.chmod(secrets, 0o600)
    (config / "main.cf").write_text(f"smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = texthash:{secrets}\n")
    (config / "master.cf").write_text("smtp unix - - n - - smtp\n")
    process = start_spawner(str(config))
    try:
        client = SpawnerClient(process.control)
        log = ListLog()
        # Whatever the daemon adds, it cannot name a file: only main.cf's tables are read.
        answer, _ = run(client._ask({"kind": PASSWORD_TABLES, "path": "/etc/shadow"}, b"", 30))
        assert list(answer["tables"]) == [f"texthash:{secrets}"]
        run(client.refresh_password_tables(log))
        assert log.warnings() == []
        maps = client.password_tables[f"texthash:{secrets}"]
        assert run(maps.lookup("[SMTP.example.test]:587")).value == "user:secret"
    finally:
        process.stop()


def _root_only_relay_config(tmp_path):
    secrets = tmp_path / "sasl_passwd"
    secrets.write_text("[smtp.example.test]:587 user:old\n")
    os.chmod(secrets, 0o600)
    config = tmp_path / "config"
    config.mkdir()
    (config / "main.cf").write_text(f"smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = texthash:{secrets}\n")
    (config / "master.cf").write_text("smtp unix - - n - - smtp\n")
    return config, secrets


def _as_nobody(function):
    """Run `function` in a child that has become nobody (mail_owner's rights); its result comes back as JSON."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            os.write(write_end, json.dumps(function()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = json.loads(reader.read() or b"null")
    os.waitpid(pid, 0)
    return answer


@pytest.mark.parametrize("spawner_alive", [True, False])
def test_reload_takes_a_root_only_table_from_the_spawner_or_keeps_the_old_copy(tmp_path, spawner_alive):
    config_dir, secrets = _root_only_relay_config(tmp_path)
    config, master = load(str(config_dir)), read_master_cf(str(config_dir / "master.cf"))
    spec = f"texthash:{secrets}"
    at_start = open_client_tables(config, master, ListLog())      # as root, as prepare() does
    process = start_spawner(str(config_dir))
    client = SpawnerClient(process.control)
    secrets.write_text("[smtp.example.test]:587 user:new\n")
    if not spawner_alive:
        process.stop()

    def reload_as_mail_owner():
        log = ListLog()
        run(client.refresh_password_tables(log))
        tables = reopen_client_tables(at_start, config, master, log, client)
        return run(tables[spec].lookup("[smtp.example.test]:587")).value, log.warnings()
    try:
        value, warnings = _as_nobody(reload_as_mail_owner)
    finally:
        process.stop()
    if spawner_alive:
        assert (value, warnings) == ("user:new", [])
    else:
        assert value == "user:old"
        assert warnings[0].startswith("warning: reload: cannot re-read the password tables: the privileged "
                                      "spawner is not available")
        assert warnings[1].startswith(f"warning: reload: cannot re-read {spec} as mail_owner")


@pytest.mark.parametrize("mode, group, owner_group", [
    (0o1777, "root", "nogroup"),     # world-writable: the user's own rights
    (0o2775, "mail", "mail"),        # Debian's /var/mail: the user with the spool's group
    (0o755, "root", "nogroup"),      # root's alone: root makes the mailbox and gives it to the user
], ids=["world-writable", "group-writable", "root-only"])
def test_a_mailbox_in_the_mail_spool_directory_is_made_as_postfix_makes_it(reachable, mode, group, owner_group):
    spool = reachable / "mail"
    spool.mkdir()
    os.chown(spool, 0, grp.getgrnam(group).gr_gid)
    os.chmod(spool, mode)
    config = reachable / "config"
    config.mkdir()
    (config / "main.cf").write_text(f"mail_spool_directory = {spool}\n")
    process = start_spawner(str(config))
    try:
        client = SpawnerClient(process.control)
        for text in (b"one\n", b"two\n"):
            result = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{spool}/nobody", text)))
            assert result.stored, result.error
        # Only <spool>/<that user>: no other name is made with root's rights.
        other = run(client.store_in_mailbox(MailboxRequest(RunAs(user="nobody"), f"{spool}/daemon", b"x\n")))
    finally:
        process.stop()
    info = (spool / "nobody").stat()
    assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == \
        (NOBODY.pw_uid, owner_group, 0o600)
    assert (spool / "nobody").read_bytes().count(b"From MAILER-DAEMON") == 2
    if mode == 0o1777:
        assert other.stored and (spool / "daemon").stat().st_uid == NOBODY.pw_uid
    else:
        assert not other.stored and "Permission denied" in other.error
        assert not (spool / "daemon").exists()
