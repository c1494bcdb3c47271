"""pipe(8): argv macros, the command's input, the exit status, and the agent with a scripted spawner.

The facts are Postfix's (pipe(8), src/pipe/pipe.c, src/global/pipe_command.c,
mail_copy.c and sys_exits.c); the places mailferry differs on purpose are
named in the tests' names.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config import pipe_service
from mailferry.config.mastercf import PipeSpec, parse_master_cf
from mailferry.delivery import outcome, pipe
from mailferry.delivery.pipe import PipeAgent, PipeSettings
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import CommandResult
from mailferry.message import BOUNCED, DEFERRED, SENT, ClientInfo, QueuedMessage, Recipient

SEED_ARGV = ["/usr/lib64/cyrus-imapd/deliver", "-e", "-r", "${sender}", "-m", "${extension}", "${user}"]
CONTENT = b"Received: from x\r\nSubject: hi\r\n\r\nFrom here\r\n.dot\r\nlast\r\n"


def values(**extra):
    return {"sender": "alice@example.org", "nexthop": "example.test", **extra}


# --- argv= macros ---------------------------------------------------------------------------------

def test_the_seeds_argv_gives_sender_extension_and_user():
    argv = pipe.expand_argv(SEED_ARGV, [Recipient("joe+inbox@example.test")], values(), "R", "+")
    assert argv == ["/usr/lib64/cyrus-imapd/deliver", "-e", "-r", "alice@example.org", "-m", "inbox", "joe"]


def test_no_extension_is_an_empty_argument_as_in_postfix():
    argv = pipe.expand_argv(SEED_ARGV, [Recipient("joe@example.test")], values(), "R", "+")
    assert argv[-3:] == ["-m", "", "joe"]


def test_a_per_recipient_word_expands_once_per_recipient():
    argv = pipe.expand_argv(["/usr/sbin/sendmail", "-f", "$sender", "--", "${recipient}"],
                            [Recipient("a@x.test"), Recipient("b@y.test")], values())
    assert argv == ["/usr/sbin/sendmail", "-f", "alice@example.org", "--", "a@x.test", "b@y.test"]


def test_all_three_macro_forms_and_the_dollar_escape():
    argv = pipe.expand_argv(["$user", "${domain}", "$(mailbox)", "cost$$", "at-$nexthop/x"],
                            [Recipient("u+e@d.test")], values(), "", "+")
    assert argv == ["u", "d.test", "u+e", "cost$", "at-example.test/x"]


def test_message_macros():
    message = QueuedMessage("4ABCD", "active", "s@x.test", [], 1234, 0.0, dsn_envid="env1",
                            client=ClientInfo(name="client.test", address="192.0.2.7", port=4321,
                                              helo="helo.test", protocol="ESMTPA", sasl_username="sam"))
    spec = parse_master_cf("p unix - n n - - pipe user=daemon argv=/bin/true\n", "m").services[0].pipe
    got = pipe.message_values(message, "NextHop.Test", spec)
    assert {key: got[key] for key in ("sender", "nexthop", "size", "queue_id", "envid", "client_address",
                                      "client_hostname", "client_port", "client_protocol", "client_helo",
                                      "sasl_username")} == {
        "sender": "s@x.test", "nexthop": "NextHop.Test", "size": "1234", "queue_id": "4ABCD", "envid": "env1",
        "client_address": "192.0.2.7", "client_hostname": "client.test", "client_port": "4321",
        "client_protocol": "ESMTPA", "client_helo": "helo.test", "sasl_username": "sam"}


def test_the_null_sender_becomes_null_sender_and_q_quotes_it():
    message = QueuedMessage("4A", "active", "", [], 1, 0.0)
    default = parse_master_cf("p unix - n n - - pipe user=daemon argv=/bin/true\n", "m").services[0].pipe
    empty = parse_master_cf("p unix - n n - - pipe user=daemon null_sender= argv=/bin/true\n", "m").services[0].pipe
    quoted = parse_master_cf("p unix - n n - - pipe flags=q user=daemon {null_sender=a b} argv=/bin/true\n",
                             "m").services[0].pipe
    assert pipe.message_values(message, "h", default)["sender"] == "MAILER-DAEMON"
    assert pipe.message_values(message, "h", empty)["sender"] == ""
    assert pipe.message_values(message, "h", quoted)["sender"] == '"a b"'


@pytest.mark.parametrize("flags, recipient, user, mailbox, domain", [
    ("", "Joe+Box@Example.TEST", "Joe", "Joe+Box", "Example.TEST"),
    ("u", "Joe+Box@Example.TEST", "joe", "joe+box", "Example.TEST"),
    ("h", "Joe+Box@Example.TEST", "Joe", "Joe+Box", "example.test"),
    ("hu", "Joe+Box@Example.TEST", "joe", "joe+box", "example.test"),
])
def test_flags_u_and_h_fold_the_local_part_and_the_domain(flags, recipient, user, mailbox, domain):
    got = pipe.recipient_values(Recipient(recipient), flags, "+")
    assert (got["user"], got["mailbox"], got["domain"]) == (user, mailbox, domain)
    assert got["recipient"] == f"{mailbox}@{domain}"


def test_flag_q_quotes_recipient_but_not_user():
    plain = pipe.recipient_values(Recipient("john smith@example.test"), "q", "")
    assert plain["recipient"] == '"john smith"@example.test'
    assert plain["user"] == "john smith"


def test_original_recipient_is_orcpt_when_rewritten():
    recipient = Recipient("john.smith@mail1.internal", orcpt="rfc822;sample@example.com")
    got = pipe.recipient_values(recipient, "", "")
    assert got["original_recipient"] == "sample@example.com"
    assert pipe.recipient_values(Recipient("a@b.test"), "", "")["original_recipient"] == "a@b.test"


@pytest.mark.parametrize("local, delimiters, expected", [
    ("joe+box", "+", ("joe", "box")),
    ("joe-box+x", "+-", ("joe", "box+x")),
    ("joe", "+", ("joe", None)),
    ("+box", "+", ("+box", None)),            # the name would be empty
    ("MAILER-DAEMON", "-", ("MAILER-DAEMON", None)),
    ("owner-list", "-", ("owner-list", None)),
    ("list-request", "-", ("list-request", None)),
    ("joe+box", "", ("joe+box", None)),
])
def test_recipient_delimiter_splits_as_postfix_split_addr(local, delimiters, expected):
    assert pipe.split_extension(local, delimiters) == expected


@pytest.mark.parametrize("word, problem", [
    ("${bogus}", 'unknown macro name: "bogus"'),
    ("$", 'empty macro name'),
    ("${user", "truncated macro reference"),
    ("${user?x}", 'unknown macro name: "user?x"'),   # pipe(8) has no conditional forms
])
def test_words_postfix_refuses(word, problem):
    with pytest.raises(pipe_service.MacroError, match=problem.replace("?", r"\?")):
        pipe_service.check_argv(["/bin/cmd", word])


@pytest.mark.parametrize("argv, flags, single", [
    (SEED_ARGV, "R", True),                                    # ${extension} and ${user}: two words
    (["/usr/sbin/sendmail", "-f", "${sender}", "--", "${recipient}"], "", False),
    (["/bin/cmd", "${user}@${domain}"], "", False),            # one word keeps each pair together
    (["/bin/cmd", "${sender}"], "D", True),
    (["/bin/cmd", "${sender}"], "O", True),
    (["/bin/cmd", "${sender}"], "FR", False),
])
def test_when_mailferry_runs_one_command_per_recipient(argv, flags, single):
    assert pipe_service.needs_one_command_per_recipient(argv, flags) is single


# --- the command's standard input -------------------------------------------------------------------

def test_plain_copy_turns_crlf_into_lf():
    assert pipe.command_input(CONTENT, "") == CONTENT.replace(b"\r\n", b"\n")


def test_eol_crlf_keeps_crlf():
    assert pipe.command_input(CONTENT, "", b"\r\n") == CONTENT


def test_headers_in_postfix_order_with_from_line():
    text = pipe.command_input(CONTENT, "FROD", b"\n", "alice@example.org", "orig@example.test",
                              "joe@example.test", now=0.0)
    lines = text.split(b"\n")
    assert lines[0].startswith(b"From alice@example.org  ") and len(lines[0]) == len(b"From alice@example.org  ") + 24
    assert lines[1:4] == [b"Return-Path: <alice@example.org>", b"X-Original-To: orig@example.test",
                          b"Delivered-To: joe@example.test"]
    assert lines[4] == b"Received: from x"


def test_null_sender_in_from_line_and_return_path():
    text = pipe.command_input(CONTENT, "FR", b"\n", "", now=0.0)
    assert text.startswith(b"From MAILER-DAEMON  ")
    assert b"\nReturn-Path: <>\n" in text


def test_dot_and_from_quoting_and_blank_line():
    text = pipe.command_input(CONTENT, ".>B")
    assert b"\n>From here\n..dot\nlast\n\n" in text
    assert text.endswith(b"last\n\n")


def test_a_last_line_without_end_gets_one():
    assert pipe.command_input(b"Subject: x\r\n\r\nno end", "") == b"Subject: x\n\nno end\n"


def test_delivered_to_reads_only_the_header():
    content = (b"Delivered-To: Joe@Example.test\r\nX: y\r\n continued Delivered-To: no@x\r\n\r\n"
               b"Delivered-To: body@example.test\r\n")
    assert pipe.delivered_to(content) == {"joe@example.test"}


# --- the exit status -------------------------------------------------------------------------------

CMD = "/usr/lib64/cyrus-imapd/deliver"


@pytest.mark.parametrize("status, dsn, outcome_status, text", [
    (67, "5.1.1", BOUNCED, "user unknown. Command output: Mailbox does not exist"),
    (75, "4.3.0", DEFERRED, "temporary failure. Command output: Mailbox does not exist"),
    (71, "4.3.0", DEFERRED, "system resource problem. Command output: Mailbox does not exist"),
    (78, "5.3.5", BOUNCED, "local configuration error. Command output: Mailbox does not exist"),
    (1, "5.3.0", BOUNCED, f'Command died with status 1: "{CMD}". Command output: Mailbox does not exist'),
])
def test_sysexits_decide(status, dsn, outcome_status, text):
    result = outcome.pipe_result(CommandResult(status, output=b"Mailbox does not exist\n"), CMD, "cyrus")
    assert (result.status, result.dsn, result.reason, result.relay) == (outcome_status, dsn, text, "cyrus")


def test_no_output_no_output_text():
    assert outcome.pipe_result(CommandResult(67), CMD, "cyrus").reason == "user unknown"


def test_a_status_code_in_the_output_wins():
    deferred = outcome.pipe_result(CommandResult(1, output=b"4.2.2 Mailbox full\n"), CMD, "cyrus")
    assert (deferred.status, deferred.dsn, deferred.reason) == (DEFERRED, "4.2.2", "Mailbox full")
    bounced = outcome.pipe_result(CommandResult(75, output=b"5.1.1 no such user"), CMD, "cyrus")
    assert (bounced.status, bounced.dsn) == (BOUNCED, "5.1.1")
    ignored = outcome.pipe_result(CommandResult(67, output=b"4.2.2x no"), CMD, "cyrus")
    assert ignored.dsn == "5.1.1"


def test_success_quotes_the_first_100_characters_of_output():
    assert outcome.pipe_result(CommandResult(0), CMD, "cyrus").reason == "delivered via cyrus service"
    chatty = outcome.pipe_result(CommandResult(0, output=b"ok\tqueued\n" + b"x" * 200), CMD, "cyrus")
    assert chatty.status == SENT and chatty.dsn == "2.0.0"
    assert chatty.reason == "delivered via cyrus service (ok queued " + "x" * 90 + ")"


def test_output_control_characters_become_underscores():
    result = outcome.pipe_result(CommandResult(67, output=b"bad\x01\r\nline"), CMD, "cyrus")
    assert result.reason == "user unknown. Command output: bad__ line"


def test_a_signal_defers():
    result = outcome.pipe_result(CommandResult(None, signal=11, output=b"core"), CMD, "cyrus")
    assert (result.status, result.dsn, result.reason) == (
        DEFERRED, "4.3.0", f'Command died with signal 11: "{CMD}". Command output: core')


def test_the_time_limit_defers_where_postfix_bounces():
    result = outcome.pipe_result(CommandResult(None, signal=9, timed_out=True), CMD, "cyrus")
    assert (result.status, result.dsn, result.reason) == (DEFERRED, "4.3.0",
                                                          f'Command time limit exceeded: "{CMD}"')


def test_a_command_that_never_ran_defers_even_when_permanent():
    result = outcome.pipe_result(CommandResult(None, error="execvp: No such file or directory", temporary=False),
                                 CMD, "cyrus")
    assert result.status == DEFERRED
    assert result.reason == f'cannot run command "{CMD}": execvp: No such file or directory'


# --- settings -----------------------------------------------------------------------------------

def config_of(main_cf: str = "") -> Config:
    return Config("/etc/mailferry-test", parse_main_cf(main_cf, "/etc/mailferry-test/main.cf"))


def service_of(line: str):
    master = parse_master_cf(line, "/etc/mailferry-test/master.cf")
    assert not master.errors, master.errors
    return master.services[0]


SEED_SERVICE = ("cyrus unix - n n - - pipe\n"
                "  flags=R user=daemon argv=/usr/lib64/cyrus-imapd/deliver -e -r ${sender} -m ${extension} ${user}\n")


def test_settings_read_the_per_service_parameters():
    settings = PipeSettings.from_config(
        config_of("cyrus_time_limit = 2s\ncyrus_destination_recipient_limit = 3\nrecipient_delimiter = +\n"),
        service_of(SEED_SERVICE), "/etc/mailferry-test/master.cf", environ={})
    assert (settings.time_limit, settings.recipient_limit, settings.recipient_delimiter) == (2.0, 3, "+")
    assert settings.run_as.user == "daemon" and settings.run_as.group == ""


def test_settings_defaults_are_command_time_limit_and_the_default_recipient_limit():
    settings = PipeSettings.from_config(config_of("command_time_limit = 7\n"), service_of(SEED_SERVICE),
                                        "m", environ={})
    assert (settings.time_limit, settings.recipient_limit) == (7.0, 50)


def test_the_environment_is_export_environment_and_path():
    environment = dict(pipe.command_environment(["TZ", "MAIL_CONFIG", "LANG", "X=1"],
                                                {"TZ": "UTC", "HOME": "/root", "SECRET": "s"}, "/etc/mf"))
    assert environment == {"TZ": "UTC", "MAIL_CONFIG": "/etc/mf", "X": "1", "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("user, problem", [
    ("root", "has root privileges"),
    ("nobody", "is the mail system owner"),
    ("no-such-account-here", "no such account"),
    ("daemon:no-such-group-here", "no such group"),
    ("daemon:root", "privileged group id 0"),
])
def test_accounts_pipe_refuses_name_the_master_cf_line(user, problem):
    master = parse_master_cf(f"cyrus unix - n n - - pipe\n  user={user} argv=/bin/true\n", "/etc/m/master.cf")
    name, _, group = user.partition(":")
    # The master.cf reader already refuses user=root; the agent checks again.
    service = dataclasses.replace(master.services[0], pipe=PipeSpec(name, group or None, ["/bin/true"]))
    with pytest.raises(ValueError, match=problem) as raised:
        PipeSettings.from_config(config_of("mail_owner = nobody\n"), service, "/etc/m/master.cf", environ={})
    assert str(raised.value).startswith("/etc/m/master.cf, line 1: service cyrus: ")


def test_an_unknown_macro_stops_the_service_with_its_line():
    with pytest.raises(ValueError, match=r'm, line 1: service p: unknown macro name: "bogus"'):
        PipeSettings.from_config(config_of(), service_of("p unix - n n - - pipe user=daemon argv=/x ${bogus}\n"),
                                 "m", environ={})


# --- the agent, with a scripted spawner ------------------------------------------------------------

class ScriptedSpawner:
    """Answers each run_command with the next result, and keeps the requests."""

    def __init__(self, *results: CommandResult):
        self.results = list(results)
        self.requests = []

    async def run_command(self, request):
        self.requests.append(request)
        return self.results.pop(0) if self.results else CommandResult(0)

    async def store_in_mailbox(self, request):
        raise AssertionError("pipe never stores into a mailbox")


class Log:
    def line(self, *args):
        pass

    warning = line


def agent(spawner, main_cf: str = "", service: str = SEED_SERVICE) -> PipeAgent:
    settings = PipeSettings.from_config(config_of("recipient_delimiter = +\n" + main_cf), service_of(service),
                                        "m", environ={"TZ": "UTC"})
    return PipeAgent(settings, spawner, Log())


def job(*recipients: str, sender: str = "alice@example.org", content: bytes = CONTENT) -> DeliveryJob:
    message = QueuedMessage("4QID", "active", sender, [Recipient(r) for r in recipients], len(content), 0.0)
    return DeliveryJob(message, content, list(message.recipients), "example.test")


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_the_agent_runs_the_seeds_command_as_user_with_the_message():
    spawner = ScriptedSpawner(CommandResult(0))
    [result] = run(agent(spawner).deliver(job("joe+inbox@example.test")))
    assert (result.status, result.reason, result.relay) == (SENT, "delivered via cyrus service", "cyrus")
    [request] = spawner.requests
    assert request.argv == tuple(SEED_ARGV[:3]) + ("alice@example.org", "-m", "inbox", "joe")
    assert request.run_as.user == "daemon" and request.run_as.uid is None
    assert request.stdin == b"Return-Path: <alice@example.org>\n" + CONTENT.replace(b"\r\n", b"\n")
    assert dict(request.env) == {"TZ": "UTC", "MAIL_CONFIG": "/etc/mailferry-test", "PATH": "/usr/bin:/bin"}
    assert request.cwd == "/" and request.time_limit == 1000.0


def test_the_seeds_argv_runs_one_command_per_recipient_in_order():
    spawner = ScriptedSpawner(CommandResult(0), CommandResult(67, output=b"no such mailbox"))
    results = run(agent(spawner).deliver(job("one@example.test", "two+x@example.test")))
    assert [r.status for r in results] == [SENT, BOUNCED]
    assert [request.argv[-3:] for request in spawner.requests] == [("-m", "", "one"), ("-m", "x", "two")]


def test_one_word_per_recipient_runs_one_command_within_the_recipient_limit():
    service = "p unix - n n - - pipe user=daemon argv=/usr/sbin/sendmail -f ${sender} -- ${recipient}\n"
    spawner = ScriptedSpawner()
    results = run(agent(spawner, "p_destination_recipient_limit = 2\n", service).deliver(
        job("a@x.test", "b@x.test", "c@x.test")))
    assert [r.status for r in results] == [SENT] * 3
    assert [request.argv[4:] for request in spawner.requests] == [("a@x.test", "b@x.test"), ("c@x.test",)]


def test_one_result_for_every_recipient_of_a_failed_batch():
    service = "p unix - n n - - pipe user=daemon argv=/bin/cmd ${recipient}\n"
    spawner = ScriptedSpawner(CommandResult(75))
    results = run(agent(spawner, "", service).deliver(job("a@x.test", "b@x.test")))
    assert [(r.status, r.reason) for r in results] == [(DEFERRED, "temporary failure")] * 2


def test_size_attribute_bounces_without_running():
    service = "p unix - n n - - pipe user=daemon size=10 argv=/bin/cmd\n"
    spawner = ScriptedSpawner()
    [result] = run(agent(spawner, "", service).deliver(job("a@x.test")))
    assert (result.status, result.dsn, result.reason) == (BOUNCED, "5.2.3", "message too large")
    assert spawner.requests == []


def test_flag_d_adds_delivered_to_and_bounces_a_loop():
    service = "p unix - n n - - pipe flags=D user=daemon argv=/bin/cmd\n"
    spawner = ScriptedSpawner()
    looping = b"Delivered-To: A@X.test\r\n" + CONTENT
    results = run(agent(spawner, "", service).deliver(job("a@x.test", "b@x.test", content=looping)))
    assert [(r.status, r.dsn) for r in results] == [(BOUNCED, "5.4.6"), (SENT, "2.0.0")]
    assert results[0].reason == "mail forwarding loop for a@x.test"
    [request] = spawner.requests
    assert request.stdin.startswith(b"Delivered-To: b@x.test\nDelivered-To: A@X.test\n")


def test_directory_eol_and_group():
    service = r"p unix - n n - - pipe eol=\r\n directory=/tmp user=daemon:daemon argv=/bin/cmd" + "\n"
    spawner = ScriptedSpawner()
    run(agent(spawner, "", service).deliver(job("a@x.test")))
    [request] = spawner.requests
    assert request.cwd == "/tmp" and request.run_as.group == "daemon"
    assert request.stdin == CONTENT


def test_a_spawner_that_cannot_be_reached_defers():
    class Broken(ScriptedSpawner):
        async def run_command(self, request):
            raise ConnectionResetError("spawner went away")
    [result] = run(agent(Broken()).deliver(job("a@x.test")))
    assert result.status == DEFERRED and "spawner" in result.reason
