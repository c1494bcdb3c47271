from mailferry.config.maincf import parse_main_cf
from mailferry.diagnostics import ERROR, WARNING


def parse(text):
    return parse_main_cf(text, "/etc/mailferry/main.cf")


def values(text):
    return {name: setting.value for name, setting in parse(text).settings.items()}


def test_name_equals_value_with_spaces_trimmed():
    assert values("myhostname   =   mail.example.com   \n") == {"myhostname": "mail.example.com"}


def test_no_space_around_equals():
    assert values("relayhost=[smtp.gmail.com]:587\n") == {"relayhost": "[smtp.gmail.com]:587"}


def test_empty_value():
    assert values("smtp_tls_eccert_file =\n") == {"smtp_tls_eccert_file": ""}


def test_continuation_lines_keep_their_leading_whitespace_like_postfix():
    # Postfix's postconf prints `b=x   y  z  w` for exactly this input.
    text = "b = x\n   y\n\n  z\n# comment\n  w\nc = 1\n"
    assert values(text) == {"b": "x   y  z  w", "c": "1"}


def test_comment_only_at_start_of_line_even_when_indented():
    text = "a = 1\n   # an indented comment does not continue a\nb = 2\n"
    assert values(text) == {"a": "1", "b": "2"}


def test_later_setting_wins_and_is_reported():
    parsed = parse("a = 1\na = 2\n")
    assert parsed.settings["a"].value == "2"
    assert parsed.settings["a"].line == 2
    [diagnostic] = parsed.diagnostics
    assert diagnostic.severity == WARNING and diagnostic.line == 2 and "line 1" in diagnostic.message


def test_missing_equals_is_an_error_with_line():
    parsed = parse("a = 1\nthis is not a setting\n")
    [diagnostic] = parsed.diagnostics
    assert diagnostic.severity == ERROR and diagnostic.line == 2
    assert "missing '='" in diagnostic.message


def test_inline_comment_is_kept_in_value_and_reported_with_value():
    parsed = parse("x = 1\nsmtp_tls_security_level = may # http://www.postfix.org/TLS_README.html#client_tls_may\n")
    assert parsed.settings["smtp_tls_security_level"].value == \
        "may # http://www.postfix.org/TLS_README.html#client_tls_may"
    [diagnostic] = parsed.diagnostics
    assert diagnostic.severity == ERROR
    assert diagnostic.file == "/etc/mailferry/main.cf" and diagnostic.line == 2
    assert diagnostic.parameter == "smtp_tls_security_level"
    assert "'may # http://www.postfix.org/TLS_README.html#client_tls_may'" in diagnostic.message
    assert "smtp_tls_security_level = may?" in diagnostic.message


def test_inline_comment_on_a_continuation_line_reports_that_line():
    parsed = parse("smtpd_recipient_restrictions =\n  permit_mynetworks,\n  reject  # no relay\n")
    [diagnostic] = parsed.diagnostics
    assert diagnostic.line == 3


def test_hash_inside_a_word_is_not_a_comment():
    parsed = parse("smtpd_banner = $myhostname ESMTP#1\n")
    assert parsed.diagnostics == []


def test_orphan_continuation_line_is_warned_and_ignored_like_postfix():
    parsed = parse("   a = 1\nb = 2\n")
    assert list(parsed.settings) == ["b"]
    [diagnostic] = parsed.diagnostics
    assert diagnostic.severity == WARNING and diagnostic.line == 1
    assert "must not start with whitespace" in diagnostic.message


def test_crlf_line_endings():
    assert values("a = 1\r\nb = 2\r\n") == {"a": "1", "b": "2"}
