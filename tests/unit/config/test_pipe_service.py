"""`mailferry check` on master.cf pipe(8) services: macros, user=, chroot=, directory= and the
recipient limit the seed's Cyrus line needs in Postfix."""

from __future__ import annotations

import pytest

from mailferry.config.config import Config
from mailferry.config.lint import lint_pipe_services
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
from mailferry.config.pipe_service import account_problem
from mailferry.diagnostics import ERROR, WARNING

SEED_LINE = ("cyrus unix - n n - - pipe\n"
             "  flags=R user=daemon argv=/usr/lib64/cyrus-imapd/deliver -e -r ${sender} -m ${extension} ${user}\n")


def lint(master_cf: str, main_cf: str = "mail_owner = nobody\n"):
    config = Config("/etc/mf", parse_main_cf(main_cf, "/etc/mf/main.cf"))
    return [(item.severity, item.file, item.line, item.message)
            for item in lint_pipe_services(config, parse_master_cf(master_cf, "/etc/mf/master.cf"))]


def test_the_seeds_line_without_the_limit_gets_the_advice():
    [(severity, file, line, message)] = lint(SEED_LINE)
    assert (severity, file, line) == (WARNING, "/etc/mf/master.cf", 1)
    assert "per-recipient macros in 2 arguments (${extension} ${user})" in message
    assert "mailferry runs the command once per recipient" in message
    assert "Set cyrus_destination_recipient_limit = 1 in main.cf" in message


@pytest.mark.parametrize("main_cf", ["cyrus_destination_recipient_limit = 1\n",
                                     "default_destination_recipient_limit = 1\n"])
def test_a_limit_of_one_is_clean(main_cf):
    assert lint(SEED_LINE, "mail_owner = nobody\n" + main_cf) == []


def test_a_limit_given_with_dash_o_counts():
    line = SEED_LINE.replace("pipe\n", "pipe -o cyrus_destination_recipient_limit=1\n")
    assert lint(line) == []


def test_one_per_recipient_word_needs_no_limit():
    assert lint("p unix - n n - - pipe user=daemon argv=/usr/sbin/sendmail -f $sender -- $recipient\n") == []


def test_flag_d_needs_the_limit_too():
    [(severity, _, _, message)] = lint("p unix - n n - - pipe flags=DR user=daemon argv=/bin/cat\n")
    assert severity == WARNING and "flags=D names the one recipient" in message


def test_an_unknown_macro_is_an_error():
    [(severity, _, line, message)] = lint("p unix - n n - - pipe user=daemon\n  argv=/bin/cat ${recipent}\n")
    assert (severity, line) == (ERROR, 1)
    assert message.startswith('service p: argv=: unknown macro name: "recipent"; pipe(8) knows ')


@pytest.mark.parametrize("user, severity, text", [
    ("nobody", ERROR, "user=nobody: the account is the mail system owner (mail_owner = nobody)"),
    ("daemon:root", ERROR, "user=daemon:root: the privileged group id 0"),
    ("no-such-account-here", WARNING, "user=no-such-account-here: no such account; until it exists"),
])
def test_accounts(user, severity, text):
    [(found, _, _, message)] = lint(f"p unix - n n - - pipe user={user} argv=/bin/cat\n")
    assert found == severity and message.startswith(f"service p: {text}")


def test_root_is_refused_by_uid_not_by_name():
    assert "root privileges" in account_problem("root", None, "nobody", "postdrop")
    assert account_problem("daemon", None, "nobody", "postdrop") is None


def test_chroot_is_not_supported_and_directory_must_exist(tmp_path):
    found = lint(f"p unix - n n - - pipe chroot=/var/empty directory={tmp_path}/missing user=daemon argv=/bin/cat\n")
    assert [(severity, message.split(":")[1].strip()) for severity, _, _, message in found] == [
        (ERROR, "mailferry does not support pipe's chroot=; remove it"),
        (WARNING, f"directory={tmp_path}/missing is not a directory; deliveries will wait until it is")]


def test_a_bare_program_name_is_looked_for_where_pipe_looks(tmp_path):
    from mailferry.config.inspect import inspect_config
    (tmp_path / "main.cf").write_text("mail_owner = nobody\nmailbox_transport = b\n")
    (tmp_path / "master.cf").write_text("a unix - n n - - pipe user=daemon argv=cat\n"
                                        "b unix - n n - - pipe user=daemon argv=no-such-program-here\n"
                                        "c unix - n n - - pipe user=daemon argv=no-such-program-either\n")
    problems = [item for item in inspect_config(str(tmp_path)) if "pipe program" in item.message]
    # An error where mail is routed (b), a warning where nothing routes yet (c: Debian's stock uux...).
    assert [(item.severity, item.line) for item in problems] == [(ERROR, 2), (WARNING, 3)]
    assert all("is not in /usr/bin or /bin" in item.message for item in problems)
