"""check's rules for files, tables and services a configuration refers to (config/references.py,
config/inspect.py): missing files are their own kind, /file/name list items, myorigin from a
file, tables inside restriction lists, and pipe services a transport table routes to."""

from __future__ import annotations

import pytest

from mailferry.config.config import ConfigValueError, load
from mailferry.config.inspect import inspect_config
from mailferry.config.references import restriction_tables
from mailferry.diagnostics import ERROR, MISSING_FILE, WARNING
from mailferry.tables.match_lists import NetworkList, list_items
from tests.conftest import write


def configure(tmp_path, main: str, master: str = "smtp inet n - n - - smtpd\n"):
    write(tmp_path / "main.cf", main, 0o644)
    write(tmp_path / "master.cf", master, 0o644)
    return inspect_config(str(tmp_path))


def about(found, text):
    return [item for item in found if text in item.message]


def test_restriction_tables_are_the_arguments_of_access_restrictions():
    value = ("permit_mynetworks, check_recipient_access hash:/etc/a, check_policy_service inet:127.0.0.1:7,"
             " check_sender_access pcre:/etc/b.pcre reject_rbl_client zen.example=127.0.0.2,"
             " check_client_a_access cidr:/etc/c.cidr")
    assert restriction_tables(value) == ["hash:/etc/a", "pcre:/etc/b.pcre", "cidr:/etc/c.cidr"]


def test_a_table_in_a_restriction_list_is_checked_like_any_other(tmp_path):
    found = configure(tmp_path, f"smtpd_recipient_restrictions = permit_mynetworks,"
                                f" check_recipient_access hash:{tmp_path}/access, reject_unauth_destination\n")
    [item] = about(found, "table hash:")
    assert (item.severity, item.kind, item.line) == (ERROR, MISSING_FILE, 1)
    assert "parameter smtpd_recipient_restrictions" in item.message


def test_a_table_whose_source_exists_but_is_not_built_is_an_error_not_a_missing_file(tmp_path):
    write(tmp_path / "access", "spam@example.com REJECT\n", 0o644)
    found = configure(tmp_path, f"smtpd_sender_restrictions = check_sender_access hash:{tmp_path}/access\n")
    [item] = about(found, "table hash:")
    assert (item.severity, item.kind) == (ERROR, "")
    assert "postmap" in item.message


def test_tables_in_restriction_classes_and_master_cf_overrides_are_checked(tmp_path):
    found = configure(tmp_path,
                      f"smtpd_restriction_classes = strict\nstrict = check_helo_access texthash:{tmp_path}/helo\n",
                      "smtp inet n - n - - smtpd\nsubmission inet n - n - - smtpd\n"
                      f"  -o smtpd_client_restrictions=check_client_access,texthash:{tmp_path}/clients\n")
    assert [item.kind for item in about(found, f"texthash:{tmp_path}/helo")] == [MISSING_FILE]
    [override] = about(found, f"texthash:{tmp_path}/clients")
    assert override.kind == MISSING_FILE and override.file.endswith("master.cf") and override.line == 2


def test_a_file_name_in_mynetworks_is_read_as_its_patterns(tmp_path):
    write(tmp_path / "networks", "# trusted\n192.0.2.0/24, [2001:db8::]/32\n  198.51.100.7\n", 0o644)
    networks = NetworkList(f"127.0.0.0/8 {tmp_path}/networks")
    assert networks.matches("192.0.2.9") and networks.matches("2001:db8::1") and networks.matches("198.51.100.7")
    assert not networks.matches("203.0.113.1")
    assert list_items(f"a, {tmp_path}/networks") == ["a", "192.0.2.0/24", "[2001:db8::]/32", "198.51.100.7"]
    found = configure(tmp_path, f"mynetworks = {tmp_path}/networks\n")
    assert [item for item in found if item.severity == ERROR] == []


def test_a_missing_file_in_a_list_is_a_missing_file(tmp_path):
    found = configure(tmp_path, f"mynetworks = 127.0.0.0/8 {tmp_path}/nope\nrelay_domains = {tmp_path}/gone\n")
    kinds = {(item.parameter, item.kind) for item in found if item.severity == ERROR}
    assert kinds == {("mynetworks", MISSING_FILE), ("relay_domains", MISSING_FILE)}


def test_myorigin_from_a_file_is_its_first_line_trimmed(tmp_path):
    write(tmp_path / "mailname", "\t example.org \nother\n", 0o644)
    write(tmp_path / "main.cf", f"myorigin = {tmp_path}/mailname\n", 0o644)
    config = load(str(tmp_path))
    assert config.get("myorigin") == "example.org"
    assert config.expanded("myorigin") == f"{tmp_path}/mailname"   # postconf -x shows the name


def test_myorigin_file_missing_or_empty(tmp_path):
    found = configure(tmp_path, f"myorigin = {tmp_path}/mailname\n")
    assert [(item.kind, item.parameter) for item in found if item.severity == ERROR] == [(MISSING_FILE, "myorigin")]
    write(tmp_path / "mailname", "\n", 0o644)
    found = configure(tmp_path, f"myorigin = {tmp_path}/mailname\n")
    [item] = [item for item in found if item.severity == ERROR]
    assert item.kind == "" and "is empty" in item.message
    with pytest.raises(ConfigValueError):
        load(str(tmp_path)).get("myorigin")


def test_raw_parameters_give_no_undefined_reference_warning(tmp_path):
    found = configure(tmp_path, 'mailbox_command = procmail -a "$EXTENSION"\n')
    assert about(found, "EXTENSION") == []


PIPE = "cyrus unix - n n - - pipe\n  user=nobody argv=/nonexistent/cyrus/deliver -e ${user}\n"


def test_an_unrouted_pipe_service_with_a_missing_program_is_a_warning(tmp_path):
    [item] = about(configure(tmp_path, "", "smtp inet n - n - - smtpd\n" + PIPE), "pipe program")
    assert item.severity == WARNING and "nothing routes mail to this service" in item.message


@pytest.mark.parametrize("transport", ["transport_maps = inline:{ cyrus.example=cyrus: }",
                                       "transport_maps = static:cyrus",
                                       "mailbox_transport = cyrus"])
def test_a_pipe_service_a_table_or_setting_routes_to_needs_its_program(tmp_path, transport):
    [item] = about(configure(tmp_path, transport + "\n", "smtp inet n - n - - smtpd\n" + PIPE), "pipe program")
    assert item.severity == ERROR and item.kind == MISSING_FILE


def test_a_transport_table_source_file_names_the_services_it_routes_to(tmp_path):
    write(tmp_path / "transport", "cyrus.example cyrus:\nother.example smtp:[relay.example]\n", 0o644)
    found = configure(tmp_path, f"transport_maps = hash:{tmp_path}/transport\n", "smtp inet n - n - - smtpd\n" + PIPE)
    [item] = about(found, "pipe program")
    assert item.severity == ERROR


def test_a_service_defined_twice_warns_and_check_exits_0(tmp_path, mailferry):
    write(tmp_path / "main.cf", "", 0o644)
    write(tmp_path / "master.cf", "smtp inet n - n - - smtpd\nsmtp inet n - n - - smtpd\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 0, result.err
    assert "warning:" in result.err and "defined twice" in result.err


def test_docker_mailservers_virtual_mailbox_domains_file_is_read_at_run_time(tmp_path):
    """docker-mailserver: `virtual_mailbox_domains = /etc/postfix/vhost`, one domain a line."""
    import asyncio

    from mailferry.config.localdomains import VirtualAliasDomains
    write(tmp_path / "vhost", "example.com\nexample.org\n", 0o644)
    domains = VirtualAliasDomains(f"{tmp_path}/vhost")
    assert asyncio.run(domains.matches("example.org")) is True
    assert asyncio.run(domains.matches("example.net")) is False
