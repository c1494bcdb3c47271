"""master.cf parsing, checked against master(5), pipe(8) and Postfix 3.7's postconf.

The *.postconf-M golden files were recorded with Debian's Postfix 3.7:
    postconf -c DIR -M > master.cf.NAME.postconf-M
where DIR holds the fixture as master.cf and an empty main.cf.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailferry.config.mastercf import (
    BUILTIN,
    IMPLEMENTED,
    UNSUPPORTED,
    PipeSpec,
    Service,
    format_service,
    parse_master_cf,
    read_master_cf,
)

FIXTURES = Path(__file__).parent / "fixtures"
POSTCONF = "/usr/sbin/postconf"
GOLDEN_FIXTURES = ["master.cf.debian", "master.cf.varied"]


def parse(text: str):
    return parse_master_cf(text, "master.cf")


def errors(master):
    return [d for d in master.diagnostics if d.severity == "error"]


def warnings(master):
    return [d for d in master.diagnostics if d.severity == "warning"]


def only_service(text: str) -> Service:
    master = parse(text)
    assert len(master.services) == 1, master.diagnostics
    return master.services[0]


# ---- Debian's stock master.cf

DEBIAN_SERVICES = [
    ("smtp", "inet"), ("pickup", "unix"), ("cleanup", "unix"), ("qmgr", "unix"),
    ("tlsmgr", "unix"), ("rewrite", "unix"), ("bounce", "unix"), ("defer", "unix"),
    ("trace", "unix"), ("verify", "unix"), ("flush", "unix"), ("proxymap", "unix"),
    ("proxywrite", "unix"), ("smtp", "unix"), ("relay", "unix"), ("showq", "unix"),
    ("error", "unix"), ("retry", "unix"), ("discard", "unix"), ("local", "unix"),
    ("virtual", "unix"), ("lmtp", "unix"), ("anvil", "unix"), ("scache", "unix"),
    ("postlog", "unix-dgram"), ("maildrop", "unix"), ("uucp", "unix"), ("ifmail", "unix"),
    ("bsmtp", "unix"), ("scalemail-backend", "unix"), ("mailman", "unix"),
]


@pytest.fixture(scope="module")
def debian():
    return read_master_cf(str(FIXTURES / "master.cf.debian"))


def test_debian_master_cf_has_no_errors(debian):
    assert errors(debian) == []
    assert [(s.name, s.type) for s in debian.services] == DEBIAN_SERVICES


def test_debian_master_cf_loads_without_a_warning(debian):
    assert [(d.line, d.parameter) for d in warnings(debian)] == []
    assert all(d.file.endswith("master.cf.debian") for d in debian.diagnostics)


def test_debian_support_classification(debian):
    support = {(s.name, s.type): s.support for s in debian.services}
    assert support[("smtp", "inet")] == IMPLEMENTED
    assert support[("smtp", "unix")] == IMPLEMENTED
    assert support[("pickup", "unix")] == IMPLEMENTED
    assert support[("error", "unix")] == IMPLEMENTED
    assert support[("retry", "unix")] == BUILTIN
    assert support[("postlog", "unix-dgram")] == BUILTIN
    assert support[("rewrite", "unix")] == BUILTIN
    assert support[("local", "unix")] == IMPLEMENTED
    assert support[("virtual", "unix")] == IMPLEMENTED
    assert support[("maildrop", "unix")] == IMPLEMENTED


def test_debian_fields(debian):
    smtpd = debian.find("smtp", "inet")
    assert (smtpd.private, smtpd.unpriv, smtpd.chroot) == (False, None, True)
    assert (smtpd.wakeup, smtpd.maxproc, smtpd.command, smtpd.line) == (None, None, "smtpd", 12)
    tlsmgr = debian.find("tlsmgr", "unix")
    assert (tlsmgr.wakeup, tlsmgr.wakeup_after_first_use, tlsmgr.maxproc) == (1000, True, 1)
    assert debian.find("relay", "unix").overrides == {"syslog_name": "postfix/$service_name"}
    assert debian.find("smtp", "smtp") is None


def test_debian_pipe_entries(debian):
    maildrop = debian.find("maildrop", "unix").pipe
    assert maildrop == PipeSpec(user="vmail", group=None, flags="DRXhu",
                                argv=["/usr/bin/maildrop", "-d", "${recipient}"])
    uucp = debian.find("uucp", "unix").pipe
    assert uucp.argv == ["uux", "-r", "-n", "-z", "-a$sender", "-", "$nexthop!rmail",
                         "($recipient)"]
    assert debian.find("bsmtp", "unix").pipe.flags == "Fq."
    assert debian.find("smtp", "unix").pipe is None


# ---- pipe(8)

CYRUS = ("cyrus     unix  -       n       n       -       -       pipe\n"
         "  user=cyrus argv=/usr/lib/cyrus-imapd/deliver -e -r ${sender} -m ${extension} ${user}\n")


def test_cyrus_pipe_from_the_seed():
    service = only_service(CYRUS)
    assert service.pipe.user == "cyrus"
    assert service.pipe.group is None
    assert service.pipe.argv == ["/usr/lib/cyrus-imapd/deliver", "-e", "-r", "${sender}",
                                 "-m", "${extension}", "${user}"]
    assert service.args == ["user=cyrus", "argv=/usr/lib/cyrus-imapd/deliver", "-e", "-r",
                            "${sender}", "-m", "${extension}", "${user}"]
    assert parse(CYRUS).diagnostics == []


def test_pipe_attributes():
    service = only_service(
        "filter unix - n n - 10 pipe -o syslog_name=filter\n"
        "  flags=Rq size=1024 eol=\\r\\n directory=/tmp chroot=/var/x null_sender=\n"
        "  user=filter:mail argv=/bin/filter { -a x y } -o z=1\n")
    assert service.pipe == PipeSpec(
        user="filter", group="mail", argv=["/bin/filter", "-a x y", "-o", "z=1"], flags="Rq",
        size=1024, eol="\r\n", directory="/tmp", chroot="/var/x", null_sender="")
    # -o after argv= belongs to the command, not to the daemon.
    assert service.overrides == {"syslog_name": "filter"}


def test_pipe_unknown_flag_is_a_warning():
    master = parse("p unix - n n - - pipe flags=RZ user=x argv=/bin/x\n")
    assert errors(master) == []
    [warning] = warnings(master)
    assert "Z" in warning.message and warning.line == 1
    assert master.services[0].pipe.flags == "RZ"


def test_pipe_without_argv_is_an_error():
    master = parse("p unix - n n - - pipe\n  flags=R user=x\n")
    [error] = errors(master)
    assert "argv=" in error.message and error.line == 1 and "p/unix" in error.message
    assert master.services[0].pipe is None


def test_pipe_without_user_or_as_root_is_an_error():
    assert "user=" in errors(parse("p unix - n n - - pipe argv=/bin/x\n"))[0].message
    assert "root" in errors(parse("p unix - n n - - pipe user=root argv=/bin/x\n"))[0].message


def test_pipe_option_after_attribute_is_an_error():
    master = parse("p unix - n n - - pipe flags=R\n  -o x=y user=u argv=/bin/x\n")
    [error, *_] = errors(master)
    assert error.line == 2 and '"-o"' in error.message


def test_pipe_running_unprivileged_warns():
    [warning] = warnings(parse("p unix - - n - - pipe user=u argv=/bin/x\n"))
    assert "unpriv" in warning.message


# ---- daemon options

SUBMISSION = """\
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_reject_unlisted_recipient=no
#     Instead of specifying complex smtpd_<xxx>_restrictions here,
#     specify "smtpd_<xxx>_restrictions=$mua_<xxx>_restrictions"
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_relay_restrictions=
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
"""


def test_submission_overrides():
    master = parse(SUBMISSION)
    assert master.diagnostics == []
    service = master.find("submission", "inet")
    assert service.overrides == {
        "syslog_name": "postfix/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_tls_auth_only": "yes",
        "smtpd_reject_unlisted_recipient": "no",
        "smtpd_client_restrictions": "",
        "smtpd_helo_restrictions": "",
        "smtpd_sender_restrictions": "",
        "smtpd_relay_restrictions": "",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated,reject",
        "milter_macro_daemon_name": "ORIGINATING",
    }
    assert service.args == []
    assert service.listen_address() == (None, 587)


def test_long_form_override_keeps_inner_whitespace():
    service = only_service("10025 inet n - n - - smtpd -o { smtpd_client_restrictions = "
                           "permit_mynetworks, reject } -o {x=} -o{ y = a b }\n")
    assert service.overrides == {"smtpd_client_restrictions": "permit_mynetworks, reject",
                                 "x": "", "y": "a b"}


def test_attached_override_and_verbose_flag():
    service = only_service("10025 inet n - n - - smtpd -v -ox=1 -D\n")
    assert service.overrides == {"x": "1"}
    assert service.options == ["-v", "-o", "x=1", "-D"]


def test_override_values_are_not_expanded():
    service = only_service(
        "10025 inet n - n - - smtpd -o smtpd_tls_cert_file=${config_directory}/c\n")
    assert service.overrides == {"smtpd_tls_cert_file": "${config_directory}/c"}


def test_spaces_around_equals_is_an_error():
    master = parse("10025 inet n - n - - smtpd\n  -o smtpd_helo_restrictions = foo\n  -o x=1\n")
    [error] = errors(master)
    assert error.line == 2 and "-o { name = value }" in error.message
    assert error.parameter == "10025/inet/smtpd_helo_restrictions"
    assert master.services[0].overrides == {"x": "1"}


def test_repeated_override_keeps_the_last_and_warns():
    master = parse("10025 inet n - n - - smtpd -o x=1 -o x=2\n")
    assert master.services[0].overrides == {"x": "2"}
    assert len(warnings(master)) == 1


def test_override_without_equals_is_an_error():
    assert "name=value" in errors(parse("10025 inet n - n - - smtpd -o x\n"))[0].message
    assert "name=value" in errors(parse("10025 inet n - n - - smtpd -o\n"))[0].message


def test_argument_before_options_is_an_error_and_hides_them():
    master = parse("10025 inet n - n - - smtpd foo -o x=1\n")
    [error] = errors(master)
    assert '"foo"' in error.message
    assert master.services[0].overrides == {}


def test_inline_comment_is_reported():
    [error] = errors(parse("10025 inet n - n - - smtpd # listen on all interfaces\n"))
    assert "comment" in error.message


def test_builtin_services_keep_their_overrides():
    service = only_service("cleanup unix n - y - 0 cleanup -o header_checks=\n")
    assert service.support == BUILTIN
    assert service.overrides == {"header_checks": ""}


# ---- lines, fields and entries

def test_continuation_lines_across_blank_and_comment_lines():
    service = only_service("relay unix - - n - - smtp\n\t-o a=1\n\n# note\n    -o b=2\n")
    assert service.overrides == {"a": "1", "b": "2"}
    assert service.line == 1


def test_continuation_without_entry_is_an_error():
    master = parse("  -o x=1\nsmtp inet n - n - - smtpd\n")
    [error] = errors(master)
    assert error.line == 1
    assert master.services[0].overrides == {}


def test_diagnostics_point_at_the_continuation_line():
    [error] = errors(parse("10025 inet n - n - - smtpd\n  -o a=1\n  -o b\n"))
    assert error.line == 3


def test_too_few_fields_is_an_error():
    master = parse("# header\nsmtp inet n - y - smtpd\n")
    [error] = errors(master)
    assert (error.file, error.line) == ("master.cf", 2)
    assert "8" in error.message
    assert master.services == []


@pytest.mark.parametrize("line, field", [
    ("a inetx n - y - - smtpd", "type"),
    ("a unix Y - y - - smtpd", "private"),
    ("a unix n yes y - - smtpd", "unpriv"),
    ("a unix n - x - - smtpd", "chroot"),
    ("a unix n - y -1 - smtpd", "wakeup"),
    ("a unix n - y 10?? - smtpd", "wakeup"),
    ("a unix n - y - x smtpd", "maxproc"),
])
def test_invalid_fixed_field_is_an_error(line, field):
    master = parse(line + "\n")
    [error] = errors(master)
    assert f"invalid {field} field" in error.message and error.line == 1
    assert master.services == []


def test_dash_resolves_to_postfix_defaults():
    service = only_service("a unix - - - - - smtp\n")
    assert (service.private, service.unpriv, service.chroot) == (None, None, None)
    assert (service.is_private, service.is_unprivileged, service.is_chrooted) == (
        True, True, False)
    assert (service.wakeup, service.wakeup_seconds, service.maxproc) == (None, 0, None)


def test_inet_services_are_never_private():
    assert only_service("smtp inet - - - - - smtpd\n").is_private is False


def test_duplicate_service_is_a_warning_and_the_last_wins():
    """master(5): Postfix accepts it and remembers the last one, so it must not fail check."""
    master = parse("smtp inet n - y - - smtpd\n"
                   "pickup unix n - y 60 1 pickup\n"
                   "smtp inet n - y - 1 smtpd -o x=1\n")
    assert errors(master) == []
    [warning] = warnings(master)
    assert warning.line == 3 and "lines 1 and 3" in warning.message
    assert master.find("smtp", "inet").overrides == {"x": "1"}
    assert [s.name for s in master.services] == ["pickup", "smtp"]


def test_a_stray_argument_to_lmtp_is_a_warning_as_postfix_ignores_it():
    """mailcow's `lmtp unix - - n - - lmtp flags=O`: smtp(8)/lmtp(8) never read their arguments."""
    master = parse("lmtp unix - - n - - lmtp flags=O\n")
    assert errors(master) == []
    [warning] = warnings(master)
    assert '"flags=O"' in warning.message and "ignores it" in warning.message


def test_a_stray_argument_to_cleanup_stays_an_error():
    [error] = errors(parse("cleanup unix n - n - 0 cleanup flags=O\n"))
    assert "refuses it" in error.message


def test_same_name_with_another_type_is_not_a_duplicate():
    master = parse("smtp inet n - y - - smtpd\nsmtp unix - - y - - smtp\n")
    assert master.diagnostics == []


def test_two_names_for_one_port_is_an_error():
    [error] = errors(parse("smtp inet n - y - - smtpd\n25 inet n - y - - smtpd\n"))
    assert "port 25" in error.message and error.line == 2


def test_unknown_command_is_an_error():
    master = parse("# x\n\nfilter unix - n n - - /usr/bin/amavis -o x=1\n")
    [error] = errors(master)
    assert error.line == 3 and 'unknown command "/usr/bin/amavis"' in error.message
    assert master.services[0].support == UNSUPPORTED


@pytest.mark.parametrize("command", ["postscreen", "spawn", "tlsproxy",
                                     "dnsblog", "qmqpd"])
def test_unsupported_daemon_is_a_warning(command):
    master = parse(f"x unix - n n - - {command}\n")
    [warning] = master.diagnostics
    assert warning.severity == "warning" and warning.line == 1
    assert "x/unix" in warning.message and command in warning.message
    assert master.services[0].support == UNSUPPORTED


def test_smtpd_behind_postscreen_is_unsupported():
    master = parse("smtpd pass - - y - - smtpd\n")
    assert master.services[0].support == UNSUPPORTED
    assert len(warnings(master)) == 1


def test_pickup_without_wakeup_warns():
    assert "wake up" in warnings(parse("pickup unix n - y - 1 pickup\n"))[0].message


def test_unbalanced_brace_warns_like_postfix():
    master = parse("a unix - - n - - smtp -o {x=1\n")
    assert master.services[0].overrides == {"x": "1"}
    assert 'missing "}"' in warnings(master)[0].message


def test_read_missing_file_is_an_error(tmp_path):
    master = read_master_cf(str(tmp_path / "master.cf"))
    [error] = master.diagnostics
    assert error.severity == "error" and error.file.endswith("master.cf")


def test_service_is_frozen_and_slotted():
    service = only_service("a unix - - n - - smtp\n")
    assert not hasattr(service, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.name = "b"


# ---- listen addresses

@pytest.mark.parametrize("name, address", [
    ("smtp", (None, 25)),
    ("submission", (None, 587)),
    ("submissions", (None, 465)),
    ("smtps", (None, 465)),
    ("lmtp", (None, 24)),
    ("10025", (None, 10025)),
    ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("127.0.0.1:submission", ("127.0.0.1", 587)),
    ("[::1]:2525", ("::1", 2525)),
    ("::1:smtp", ("::1", 25)),
    ("mail.example.com:25", ("mail.example.com", 25)),
])
def test_listen_address(name, address):
    assert only_service(f"{name} inet n - n - - smtpd\n").listen_address() == address


@pytest.mark.parametrize("name", ["imap", "127.0.0.1:pop3", "0", "70000", "[::1]", ":25"])
def test_unusable_inet_name_is_an_error(name):
    master = parse(f"{name} inet n - n - - smtpd\n")
    assert len(errors(master)) == 1 and master.services == []


def test_listen_address_of_unix_service_raises():
    with pytest.raises(ValueError):
        only_service("a unix - - n - - smtp\n").listen_address()


# ---- postconf -M format

def formatted(fixture: str) -> str:
    master = read_master_cf(str(FIXTURES / fixture))
    assert errors(master) == []
    return "".join(format_service(service) + "\n" for service in master.services)


@pytest.mark.parametrize("fixture", GOLDEN_FIXTURES)
def test_format_service_matches_recorded_postconf(fixture):
    golden = (FIXTURES / f"{fixture}.postconf-M").read_text()
    assert formatted(fixture) == golden


def test_format_service_pads_like_postconf():
    service = only_service("postlog unix-dgram n - n - 1 postlogd\n")
    assert format_service(service) == (
        "postlog    unix-dgram n  -       n       -       1       postlogd")


@pytest.mark.integration
@pytest.mark.parametrize("fixture", GOLDEN_FIXTURES)
def test_format_service_matches_running_postconf(fixture, tmp_path):
    # Fails, rather than skips, without Postfix: the comparison is the point.
    assert os.access(POSTCONF, os.X_OK), f"{POSTCONF} is needed: install postfix"
    (tmp_path / "main.cf").write_text("")
    shutil.copy(FIXTURES / fixture, tmp_path / "master.cf")
    result = subprocess.run([POSTCONF, "-c", str(tmp_path), "-M"], capture_output=True,
                            text=True, check=True)
    assert formatted(fixture) == result.stdout
