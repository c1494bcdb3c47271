"""sendmail: the command line, the dot rule, and the real mailferry-sendmail with no daemon.

Expected behaviour was checked against Postfix 3.7's sendmail (postcat of the
maildrop files it wrote): see the docstring of mailferry.cli.sendmail."""

import io
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.cli.sendmail import SendmailUsageError, parse_arguments, read_message
from mailferry.local.maildrop import read_maildrop
from mailferry.local.pickup import pick_up, scan
from tests.unit.cli.test_postqueue import FakeDaemon
from tests.unit.local.queue_fixtures import make_instance

# ---- parse_arguments


def test_defaults():
    request = parse_arguments(["bob@example.net"])
    assert request.mode == "m" and request.sender is None and request.recipients == ["bob@example.net"]
    assert not request.extract_recipients and not request.ignore_dots and request.flush is None


@pytest.mark.parametrize("argv, sender", [
    (["-f", "alice@example.org"], "alice@example.org"),
    (["-falice@example.org"], "alice@example.org"),
    (["-f", "<alice@example.org>"], "alice@example.org"),
    (["-f", ""], ""),
    (["-f", "<>"], ""),
    (["-r", "list@example.org"], "list@example.org"),
    (["-f", "a@x", "-f", "b@x"], "b@x"),
])
def test_sender(argv, sender):
    assert parse_arguments(argv + ["rcpt@example.net"]).sender == sender


@pytest.mark.parametrize("argv", [["-i"], ["-oi"], ["-o", "i"], ["-ti"], ["-it"]])
def test_ignore_dots(argv):
    assert parse_arguments(argv).ignore_dots


def test_grouped_flags_and_values():
    request = parse_arguments(["-tvFJoe Q. Public", "-C", "/tmp/conf", "x@example.net"])
    assert request.extract_recipients and request.verbose == 1
    assert request.full_name == "Joe Q. Public" and request.config_dir == "/tmp/conf"


def test_config_given_as_main_cf_path(tmp_path):
    (tmp_path / "main.cf").write_text("")
    assert parse_arguments(["-C", str(tmp_path / "main.cf")]).config_dir == str(tmp_path)


@pytest.mark.parametrize("argv, mode", [(["-bm"], "m"), (["-bp"], "p"), (["-bs"], "s"), (["-b", "d"], "d"),
                                        (["-bp", "-bm"], "m"), (["-I"], "i"), (["-bi"], "i")])
def test_modes(argv, mode):
    assert parse_arguments(argv).mode == mode


@pytest.mark.parametrize("argv, flush", [(["-q"], ""), (["-qIABCDEF1234"], "IABCDEF1234"),
                                         (["-qRexample.com"], "Rexample.com"), (["-q30m"], None)])
def test_queue_runs(argv, flush):
    assert parse_arguments(argv).flush == flush


def test_dsn_options():
    request = parse_arguments(["-N", "success,Delay", "-R", "hdrs", "-V", "env-1", "-B", "8BITMIME"])
    assert (request.dsn_notify, request.dsn_ret, request.dsn_envid, request.body_type) == (
        "SUCCESS,DELAY", "HDRS", "env-1", "8BITMIME")
    assert parse_arguments(["-N", "never"]).dsn_notify == "NEVER"


@pytest.mark.parametrize("argv, warning", [(["-N", "bogus"], "bad -N option value -- ignored"),
                                           (["-N", "never,success"], "bad -N option value -- ignored"),
                                           (["-R", "bogus"], "bad -R option value -- ignored"),
                                           (["-XV"], "VERP is not supported")])
def test_bad_dsn_values_warn_and_are_ignored(argv, warning):
    request = parse_arguments(argv)
    assert any(warning in text for text in request.warnings)
    assert request.dsn_notify is None and request.dsn_ret is None


def test_body_type_must_be_exact():
    with pytest.raises(SendmailUsageError, match="-B option needs 8BITMIME or 7BIT"):
        parse_arguments(["-B", "8bitmime"])


@pytest.mark.parametrize("argv", [["-Am"], ["-Ac"], ["-G"], ["-U"], ["-c"], ["-m"], ["-n"], ["-x"],
                                  ["-h", "10"], ["-L", "label"], ["-O", "opt=1"], ["-e", "p"], ["-p", "SMTP"],
                                  ["-o7"], ["-o8"], ["-om"], ["-oAhash:/etc/aliases"], ["-oeq"],
                                  ["-X", "/tmp/log"], ["-bh"], ["-bH"]])
def test_options_sendmail_ignores(argv):
    request = parse_arguments(argv + ["--", "x@example.net"])
    assert request.recipients == ["x@example.net"] and not request.ignore_dots and not request.warnings


@pytest.mark.parametrize("argv, complaint", [(["-Z"], "invalid option -- 'Z'"),
                                             (["-f"], "option requires an argument -- 'f'"),
                                             (["-b"], "option requires an argument -- 'b'")])
def test_usage_errors(argv, complaint):
    with pytest.raises(SendmailUsageError, match=complaint):
        parse_arguments(argv)


def test_option_processing_stops_at_the_first_recipient_or_double_dash():
    # As Postfix's getopt: everything after the first recipient is a recipient.
    assert parse_arguments(["a@x", "-t"]).recipients == ["a@x", "-t"]
    assert not parse_arguments(["a@x", "-t"]).extract_recipients
    assert parse_arguments(["-i", "--", "-r4@example.net"]).recipients == ["-r4@example.net"]


def test_recipient_arguments_are_address_lists():
    request = parse_arguments(["<r5@example.net>", "A <r5b@example.net>", "r5c@example.net, r5d@example.net",
                               "<>"])
    assert request.recipients == ["r5@example.net", "r5b@example.net", "r5c@example.net", "r5d@example.net"]


# ---- the dot rule


def lines(text: bytes):
    return io.BytesIO(text)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_lone_dot_ends_input_without_i(ending):
    text = b"Subject: 1" + ending + ending + b"..foo" + ending + b"." + ending + b"after" + ending
    assert read_message(lines(text), ignore_dots=False) == b"Subject: 1" + ending + ending + b"..foo" + ending


def test_with_i_the_dot_is_content_and_dots_are_never_unstuffed():
    text = b"Subject: 2\n\n..foo\n.\nafter\n"
    assert read_message(lines(text), ignore_dots=True) == text


def test_dot_with_trailing_space_is_content():
    assert read_message(lines(b"a\n. \nb\n"), ignore_dots=False) == b"a\n. \nb\n"


def test_a_leading_mbox_from_line_is_dropped():
    text = b"From sender@example.org Mon Nov 24 10:00:00 2026\nTo: a@example.net\n\nFrom me\n"
    assert read_message(lines(text), ignore_dots=False) == b"To: a@example.net\n\nFrom me\n"


def test_last_line_without_newline_is_kept():
    assert read_message(lines(b"a\nb"), ignore_dots=False) == b"a\nb"


# ---- the real program, daemon down


def sendmail(config_dir, *args, stdin=b"Subject: hi\n\nhello\n", env=None, program="mailferry-sendmail"):
    executable = Path(sys.executable).parent / "mailferry-sendmail"
    command = [str(executable)] if program == "mailferry-sendmail" else [sys.executable, "-m", "mailferry",
                                                                         "-c", str(config_dir), "sendmail"]
    environment = {key: value for key, value in os.environ.items() if key != "NAME"}
    environment.update({"MAILFERRY_CONFIG_DIR": str(config_dir), **(env or {})})
    return subprocess.run(command + list(args), input=stdin, capture_output=True, env=environment, timeout=60)


def dropped(queue_directory):
    return [read_maildrop(path) for path in scan(str(queue_directory))]


@pytest.mark.parametrize("program", ["mailferry-sendmail", "mailferry sendmail"])
def test_message_is_dropped_while_the_daemon_is_down(tmp_path, program):
    config_dir, queue_directory = make_instance(tmp_path)
    result = sendmail(config_dir, "-f", "alice@example.org", "bob@example.net",
                      stdin=b"Subject: hi\n\nhello\n.\nnot this\n", program=program)
    assert (result.returncode, result.stderr) == (0, b"")
    maildrop = queue_directory / "maildrop"
    assert stat.S_IMODE(os.stat(maildrop).st_mode) == 0o1733
    [entry] = dropped(queue_directory)
    assert entry.envelope.sender == "alice@example.org"
    assert entry.envelope.recipients == ["bob@example.net"]
    assert entry.envelope.uid == os.getuid()
    assert entry.content == b"Subject: hi\n\nhello\n"
    assert [name for name in os.listdir(maildrop) if name.startswith(".")] == []


def test_default_sender_and_full_name_come_from_the_account(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    assert sendmail(config_dir, "bob@example.net").returncode == 0
    account = pwd.getpwuid(os.getuid())
    [entry] = dropped(queue_directory)
    assert entry.envelope.sender == account.pw_name
    assert entry.envelope.full_name == (account.pw_gecos.split(",")[0] or None)


def test_full_name_from_f_option_then_name_variable(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    sendmail(config_dir, "-F", "Option Name", "a@example.net", env={"NAME": "Env Name"})
    sendmail(config_dir, "a@example.net", env={"NAME": "Env Name"})
    assert sorted(entry.envelope.full_name for entry in dropped(queue_directory)) == ["Env Name", "Option Name"]


def test_extract_recipients_end_to_end_through_pickup(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    message = (b'To: Undisclosed:;\nCc: "Doe, J" <j@example.com>, (comment) k@example.com,\n  l@example.com\n'
               b"Bcc: hidden@example.com\nSubject: x\n\nbody\n")
    assert sendmail(config_dir, "-t", "-f", "s@example.org", "extra@example.org", stdin=message).returncode == 0
    [path] = scan(str(queue_directory))
    submission = pick_up(path)
    assert [r.address for r in submission.message.recipients] == [
        "extra@example.org", "j@example.com", "k@example.com", "l@example.com", "hidden@example.com"]
    assert b"hidden" not in submission.message.content


def test_no_recipients_is_refused_before_reading(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    result = sendmail(config_dir)
    who = f"{pwd.getpwuid(os.getuid()).pw_name}({os.getuid()})"
    assert result.returncode == 75
    assert (f"fatal: {who}: Recipient addresses must be specified on the command line or via the -t option"
            in result.stderr.decode())
    assert dropped(queue_directory) == []


def test_extract_recipients_with_none_in_the_header_is_refused(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    result = sendmail(config_dir, "-t", stdin=b"Subject: x\n\nTo: body@example.net\n")
    assert result.returncode == 75
    assert b"No recipient addresses found in message header" in result.stderr
    assert dropped(queue_directory) == []


def test_missing_queue_directory_is_a_temporary_failure(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_directory.rmdir()
    result = sendmail(config_dir, "bob@example.net")
    assert result.returncode == 75
    assert b"No such file or directory; the message was NOT accepted" in result.stderr


def test_unwritable_maildrop_is_a_temporary_failure(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    (queue_directory / "maildrop").write_text("not a directory")
    result = sendmail(config_dir, "bob@example.net")
    assert result.returncode == 75
    assert b"the message was NOT accepted" in result.stderr


def test_usage_error_exits_75_as_postfix(tmp_path):
    config_dir, _ = make_instance(tmp_path)
    result = sendmail(config_dir, "-Z")
    assert result.returncode == 75 and b"invalid option -- 'Z'" in result.stderr


def test_bs_quit_at_once_drops_nothing(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    result = sendmail(config_dir, "-bs", stdin=b"QUIT\r\n")
    assert result.returncode == 0
    assert result.stdout == b"220 mf.example.test ESMTP mailferry\r\n221 2.0.0 Bye\r\n"
    assert list((queue_directory / "maildrop").iterdir()) == []


def test_bp_and_mailq_name_list_the_queue(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    sendmail(config_dir, "-f", "alice@example.org", "bob@example.net")
    listing = sendmail(config_dir, "-bp", stdin=b"")
    assert listing.returncode == 0
    lines = listing.stdout.decode().splitlines()
    assert lines[0].startswith("-Queue ID-") and lines[-1] == "-- 0 Kbytes in 1 Request."
    assert "alice@example.org" in lines[1] and lines[2].strip() == "bob@example.net"
    mailq = tmp_path / "mailq"
    shutil.copy(Path(sys.executable).parent / "mailferry-sendmail", mailq)
    as_mailq = subprocess.run([str(mailq)], capture_output=True, timeout=60,
                              env={**os.environ, "MAILFERRY_CONFIG_DIR": str(config_dir)})
    assert as_mailq.stdout == listing.stdout


def test_the_daemon_is_poked_when_it_runs(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    daemon = FakeDaemon(str(queue_directory))
    try:
        assert sendmail(config_dir, "bob@example.net").returncode == 0
    finally:
        daemon.close()
    assert daemon.commands == ["pickup"]


def test_verbose_says_where_the_message_went(tmp_path):
    config_dir, queue_directory = make_instance(tmp_path)
    result = sendmail(config_dir, "-v", "bob@example.net")
    assert result.returncode == 0 and f"message dropped as {queue_directory}/maildrop/".encode() in result.stderr


@pytest.mark.parametrize("argv", [
    ["-f", "a@example.com\r\nRCPT TO:<injected@example.com>", "b@example.com"],
    ["-fa@example.com\n", "b@example.com"],
    ["-f", "a\x00@example.com", "b@example.com"],
    ["-f", "a@example.com", "b\x00@example.com"],
])
def test_addresses_with_control_characters_are_refused(argv):
    with pytest.raises(SendmailUsageError, match="bad address syntax: .* cannot contain CR, LF, NUL"):
        parse_arguments(argv)


def test_line_ends_in_a_recipient_argument_separate_addresses_as_in_a_header():
    # A recipient argument is an address list (RFC 5322 folding white space included): the CR LF
    # never ends up inside an address.
    request = parse_arguments(["b@example.com\r\nRSET"])
    assert request.recipients == ["b@example.com", "RSET"]
