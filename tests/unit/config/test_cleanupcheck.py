"""check for cleanup_service_name, rewrite_service_name, queue_service_name (config/cleanupcheck.py)."""

from mailferry.config.cleanupcheck import check_service_names
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import read_master_cf
from mailferry.diagnostics import ERROR, WARNING

MASTER = """\
smtp inet n - n - - smtpd
submission inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o cleanup_service_name={name}
sender-cleanup unix n - n - 0 cleanup
  -o header_checks=pcre:/etc/postfix/maps/sender_header_filter.pcre
cleanup unix n - n - 0 cleanup
"""


def run(tmp_path, main="", name="sender-cleanup", extra=""):
    (tmp_path / "master.cf").write_text(MASTER.format(name=name) + extra)
    config = Config(str(tmp_path), parse_main_cf(main, str(tmp_path / "main.cf")))
    return check_service_names(config, read_master_cf(str(tmp_path / "master.cf")))


def test_a_defined_cleanup_service_and_the_defaults_say_nothing(tmp_path):
    assert run(tmp_path) == []
    assert run(tmp_path, "cleanup_service_name = cleanup\nrewrite_service_name = rewrite\n"
                         "queue_service_name = qmgr\n") == []


def test_an_undefined_name_is_an_error_at_the_overrides_line(tmp_path):
    [found] = run(tmp_path, name="sender-cleanpu")
    assert (found.severity, found.file, found.line, found.parameter) == \
        (ERROR, str(tmp_path / "master.cf"), 4, "cleanup_service_name")
    assert "`sender-cleanpu unix ... cleanup`" in found.message and "451 4.3.0" in found.message


def test_a_service_of_another_command_or_type_is_not_a_cleanup_service(tmp_path):
    found = run(tmp_path, name="relay", extra="relay unix - - n - - smtp\n")
    assert [item.severity for item in found] == [ERROR]


def test_main_cf_names_an_undefined_service_at_its_line(tmp_path):
    found = run(tmp_path, "myorigin = example.com\ncleanup_service_name = nowhere\n")
    assert [(item.severity, item.file, item.line) for item in found] == \
        [(ERROR, str(tmp_path / "main.cf"), 2)]


def test_another_rewrite_or_queue_service_is_a_warning(tmp_path):
    extra = ("watchdog_cleanup unix n - n - 0 cleanup\n"
             "  -o queue_service_name=watchdog_qmgr\n"
             "watchdog_qmgr fifo n - n 300 1 qmgr\n"
             "  -o rewrite_service_name=watchdog_rewrite\n")
    found = run(tmp_path, extra=extra)
    assert [(item.severity, item.line, item.parameter) for item in found] == \
        [(WARNING, 9, "queue_service_name"), (WARNING, 11, "rewrite_service_name")]
    assert "has no effect" in found[0].message
