"""`mailferry check` on pcre:, cidr:, socketmap: and the composite types: a malformed rule is a
warning at its own file and line (Postfix skips it and runs), an unreadable file or a type
mailferry cannot serve is an error naming the parameter at its main.cf line."""

from __future__ import annotations

from tests.conftest import write

MASTER_CF = "smtp unix - - n - - smtp\n"


def check(tmp_path, mailferry, main_cf: str):
    write(tmp_path / "main.cf", main_cf, 0o644)
    write(tmp_path / "master.cf", MASTER_CF, 0o644)
    return mailferry("check", config_dir=tmp_path)


def test_a_malformed_pcre_rule_is_a_warning_at_its_own_line(tmp_path, mailferry):
    write(tmp_path / "header_checks.pcre", "/^Subject: spam/  DISCARD\n/^X-Bad: (/  REJECT\n", 0o644)
    result = check(tmp_path, mailferry, f"header_checks = pcre:{tmp_path}/header_checks.pcre\n")
    assert result.code == 0, result.err
    assert (f"warning: {tmp_path}/main.cf, line 1: parameter header_checks: {tmp_path}/header_checks.pcre, "
            "line 2: error in regex at offset 9: missing closing parenthesis") in result.err


def test_a_malformed_cidr_rule_is_a_warning_at_its_own_line(tmp_path, mailferry):
    write(tmp_path / "clients.cidr", "10.0.0.0/8 OK\n10.1.2.3/16 REJECT\n", 0o644)
    result = check(tmp_path, mailferry, f"smtpd_sender_restrictions =\nrbl_reply_maps = cidr:{tmp_path}/clients.cidr\n")
    assert result.code == 0, result.err
    assert (f"{tmp_path}/clients.cidr, line 2: non-null host address bits in \"10.1.2.3/16\", "
            "perhaps you should use \"10.1.0.0/16\" instead: skipping this rule") in result.err


def test_a_missing_pcre_file_is_an_error_naming_the_parameter_and_line(tmp_path, mailferry):
    result = check(tmp_path, mailferry, f"\nvirtual_alias_maps = pcre:{tmp_path}/missing.pcre\n")
    assert result.code == 1
    # A file not on this machine is check's "missing file" kind (docs/check.md): still exit 1.
    assert (f"missing file: {tmp_path}/main.cf, line 2: parameter virtual_alias_maps: table pcre:{tmp_path}/missing.pcre: "
            f"{tmp_path}/missing.pcre: no such file") in result.err


def test_a_bad_socketmap_name_is_an_error_and_a_good_one_is_not_contacted(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "virtual_alias_maps = socketmap:inet:127.0.0.1:1:aliases\n"
                                        "relocated_maps = socketmap:unix:/nowhere\n")
    assert result.code == 1
    assert "line 1" not in result.err  # a server that is down is not a configuration error
    assert (f"error: {tmp_path}/main.cf, line 2: parameter relocated_maps: table socketmap:unix:/nowhere: "
            'need service transport:endpoint instead of "unix"') in result.err


def test_composites_are_checked_member_by_member(tmp_path, mailferry):
    write(tmp_path / "a.cidr", "1.2.3.0/24 OK\n", 0o644)
    result = check(tmp_path, mailferry, f"transport_maps = unionmap:{{cidr:{tmp_path}/a.cidr, pcre:{tmp_path}/b.pcre}}\n"
                                        "canonical_maps = pipemap:{inline:{a=b}, static:c}\n")
    assert result.code == 1
    assert "parameter transport_maps: table unionmap:" in result.err and f"{tmp_path}/b.pcre: no such file" in result.err
    assert "canonical_maps" not in result.err


def test_types_mailferry_cannot_serve_are_errors_never_a_traceback(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "transport_maps = tcp:127.0.0.1:9999\nalias_maps = nisplus:mail_aliases.org_dir\n")
    assert result.code == 1
    assert (f"error: {tmp_path}/main.cf, line 1: parameter transport_maps: table tcp:127.0.0.1:9999: "
            "tcp: table type not supported by mailferry") in result.err
    assert f"{tmp_path}/main.cf, line 2: parameter alias_maps: table nisplus:" in result.err
    assert "Traceback" not in result.err


def test_a_network_table_in_a_list_read_at_once_is_an_error_at_its_line(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "mydestination = localhost, socketmap:inet:127.0.0.1:1:dest\n"
                                        "mynetworks = 127.0.0.0/8, pipemap:{inline:{a=b}, socketmap:inet:127.0.0.1:1:n}\n"
                                        "relay_domains = socketmap:inet:127.0.0.1:1:relay\n")
    assert result.code == 1
    for line, name in ((1, "mydestination"), (2, "mynetworks")):
        assert (f"error: {tmp_path}/main.cf, line {line}: parameter {name}: table "
                in result.err), result.err
    assert result.err.count("answers over the network") == 2  # relay_domains may hold one
    assert "Traceback" not in result.err
