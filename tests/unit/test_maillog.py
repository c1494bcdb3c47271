"""Postfix-format log lines, readable by pflogsumm.

A syslog line: `Mmm dd HH:MM:SS host syslog_name/program[pid]: text`, the day
padded with a space (`Nov  5`), as syslog writes it and as pflogsumm's `-d
today` builds it (sprintf "%s %2d"). The two patterns below are pflogsumm's
own (/usr/sbin/pflogsumm, the "Traditional timestamp format" branch and the
program/queue-ID match), with `postfix|$syslogName` and --syslog-name=mailferry.
"""

import calendar
import os
import re
import time

import pytest

from mailferry.maillog import MailLog, MemoryLog, for_service

PFLOGSUMM_TIMESTAMP = re.compile(r"^(...) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) \S+ (.+)$")
PFLOGSUMM_PROGRAM = re.compile(r"^(?:postfix|mailferry)(?:/(?:smtps|submission))?/([^\[:]*).*?: ([^:\s]+)")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@pytest.fixture
def clock(monkeypatch):
    """UTC, and a clock the test sets."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    now = {"t": calendar.timegm((2024, 11, 5, 3, 4, 5))}
    monkeypatch.setattr(time, "time", lambda: now["t"])
    yield now
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "mail.log"


def lines_of(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_the_line_layout_with_a_space_padded_day(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.line("smtpd", "connect from unknown[192.0.2.1]")
    log.close()
    assert lines_of(log_path) == [
        f"Nov  5 03:04:05 mx1 mailferry/smtpd[{os.getpid()}]: connect from unknown[192.0.2.1]"]


def test_a_two_digit_day_needs_no_padding(clock, log_path):
    clock["t"] = calendar.timegm((2024, 11, 25, 23, 59, 9))
    log = MailLog(str(log_path), hostname="mx1")
    log.line("qmgr", "6C8A2F41B3D7: removed")
    log.close()
    assert lines_of(log_path) == [f"Nov 25 23:59:09 mx1 mailferry/qmgr[{os.getpid()}]: 6C8A2F41B3D7: removed"]


def test_the_timestamp_follows_the_clock_from_line_to_line(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.line("smtpd", "first")
    clock["t"] += 1
    log.line("smtpd", "second")
    clock["t"] = calendar.timegm((2025, 1, 1, 0, 0, 0))
    log.line("smtpd", "third")
    log.close()
    assert [line.split(" mx1 ")[0] for line in lines_of(log_path)] == [
        "Nov  5 03:04:05", "Nov  5 03:04:06", "Jan  1 00:00:00"]


def test_syslog_name_is_the_program_prefix(clock, log_path):
    log = MailLog(str(log_path), syslog_name="postfix-out", hostname="mx1")
    log.line("smtp", "text")
    log.close()
    assert f" mx1 postfix-out/smtp[{os.getpid()}]: text" in lines_of(log_path)[0]


def test_a_service_logs_under_its_own_syslog_name(clock, log_path):
    """master.cf's `-o syslog_name=postfix/submission`: that service's lines, pflogsumm-readable."""
    log = MailLog(str(log_path), hostname="mx1")
    assert for_service(log, "mailferry") is log and for_service(log, "") is log
    submission = for_service(log, "postfix/submission")
    submission.line("smtpd", "connect from unknown[192.0.2.1]")
    submission.warning("smtpd", "careful")
    log.line("smtpd", "main")
    log.close()
    pid = os.getpid()
    assert [line.split(" mx1 ")[1] for line in lines_of(log_path)] == [
        f"postfix/submission/smtpd[{pid}]: connect from unknown[192.0.2.1]",
        f"postfix/submission/smtpd[{pid}]: warning: careful", f"mailferry/smtpd[{pid}]: main"]
    assert PFLOGSUMM_PROGRAM.match(lines_of(log_path)[0].split(" mx1 ")[1])[1] == "smtpd"


def test_warning_and_error_prefixes(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.warning("smtpd", "hostname does not resolve")
    log.error("cleanup", "queue file write error")
    log.fatal("master", "bad configuration")
    log.close()
    assert [line.split(": ", 1)[1] for line in lines_of(log_path)] == [
        "warning: hostname does not resolve", "error: queue file write error", "fatal: bad configuration"]


def test_a_warning_reaches_the_file_without_an_explicit_flush(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.line("smtpd", "ordinary")
    log.warning("smtpd", "something odd")
    assert [line.split(": ", 1)[1] for line in lines_of(log_path)] == ["ordinary", "warning: something odd"]
    log.close()


def test_reopen_after_logrotate_moved_the_file_writes_a_new_file(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.line("smtpd", "before rotation")
    rotated = log_path.with_name("mail.log.1")
    os.rename(log_path, rotated)
    log.line("smtpd", "still buffered for the old file")
    log.reopen()
    log.line("smtpd", "after rotation")
    log.close()
    assert [line.split(": ", 1)[1] for line in lines_of(rotated)] == [
        "before rotation", "still buffered for the old file"]
    assert [line.split(": ", 1)[1] for line in lines_of(log_path)] == ["after rotation"]


def test_reopen_appends_to_an_existing_file(clock, log_path):
    log_path.write_text("an older line\n")
    log = MailLog(str(log_path), hostname="mx1")
    log.line("smtpd", "new")
    log.reopen()
    log.line("smtpd", "newer")
    log.close()
    assert lines_of(log_path)[0] == "an older line"
    assert [line.split(": ", 1)[1] for line in lines_of(log_path)[1:]] == ["new", "newer"]


def test_without_a_file_lines_go_to_standard_error(clock, capfd):
    log = MailLog("", hostname="mx1")
    log.line("postfix-script", "starting the mail system")
    log.flush()
    assert capfd.readouterr().err == (
        f"Nov  5 03:04:05 mx1 mailferry/postfix-script[{os.getpid()}]: starting the mail system\n")


def test_maillog_file_wins_over_syslog(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1", to_syslog=True)
    log.line("smtpd", "to the file")
    log.close()
    assert lines_of(log_path)[0].endswith(": to the file")


@pytest.mark.parametrize("day", [5, 25])
@pytest.mark.parametrize("program, text, queue_id", [
    ("qmgr", "6C8A2F41B3D7: from=<alice@example.org>, size=310, nrcpt=1 (queue active)", "6C8A2F41B3D7"),
    ("smtpd", "connect from unknown[192.0.2.1]", "connect"),
    ("smtpd", "warning: hostname does not resolve", "warning"),
])
def test_pflogsumm_parses_the_line(clock, log_path, day, program, text, queue_id):
    clock["t"] = calendar.timegm((2024, 11, day, 3, 4, 5))
    log = MailLog(str(log_path), hostname="mx1.example.com")
    if text.startswith("warning: "):
        log.warning(program, text.removeprefix("warning: "))
    else:
        log.line(program, text)
    log.close()
    [line] = lines_of(log_path)
    stamp = PFLOGSUMM_TIMESTAMP.match(line)
    assert stamp is not None
    month, parsed_day, hour, minute, second, rest = stamp.groups()
    assert (month, int(parsed_day), hour, minute, second) == ("Nov", day, "03", "04", "05")
    assert month in MONTHS
    assert line.startswith("%s %2d " % ("Nov", day))  # pflogsumm -d today
    command = PFLOGSUMM_PROGRAM.match(rest)
    assert command is not None
    assert command.groups() == (program, queue_id)


def test_a_line_end_inside_a_text_cannot_forge_a_line(clock, log_path):
    log = MailLog(str(log_path), hostname="mx1")
    log.line("pickup", "6C8A2F41B3D7: from=<a@x\r\nNov  5 03:04:05 mx1 mailferry/qmgr[1]: forged>")
    log.close()
    [line] = lines_of(log_path)
    assert line.endswith("from=<a@x#015#012Nov  5 03:04:05 mx1 mailferry/qmgr[1]: forged>")


def test_syslog_facility_names_are_postfix_linux_ones():
    import syslog

    from mailferry.maillog import facility
    assert facility("mail") == syslog.LOG_MAIL and facility(" LOCAL3 ") == syslog.LOG_LOCAL3
    assert facility("ftp") == 11 << 3 and facility("authpriv") == syslog.LOG_AUTHPRIV
    assert facility("security") is None and facility("bogus") is None   # no such facility on Linux


def test_memory_log_keeps_each_line_as_mail_log_would_write_it():
    log = MemoryLog()
    log.line("smtp", "4ABC: to=<a@example.test>, status=sent")
    log.warning("smtp", "no such table")
    assert log.lines == [("smtp", "4ABC: to=<a@example.test>, status=sent"), ("smtp", "warning: no such table")]
    assert log.texts() == ["4ABC: to=<a@example.test>, status=sent", "warning: no such table"]
    assert log.warnings() == ["warning: no such table"]
