"""`mailferry check` on the seed's snippets and on each problem it must find."""

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, SEED, seed_file, write

INLINE_COMMENT_LINES = {15: "smtp_tls_security_level", 16: "smtp_tls_CAfile", 19: "smtpd_tls_security_level"}


def assert_golden(actual, name):
    """Compare with a reviewed golden file; MAILFERRY_UPDATE_GOLDEN=1 rewrites it for review."""
    path = SEED / name
    if os.environ.get("MAILFERRY_UPDATE_GOLDEN") == "1":
        path.write_text(actual)
    assert actual == path.read_text()


def normalise(text, directory):
    return text.replace(str(directory), "DIR")


def relocated_seed(directory: Path, make_ca):
    """The seed's relay config, inline comments removed, /etc/postfix files moved into `directory`."""
    text = seed_file("relay-main.cf")
    text = re.sub(r"[ \t]+#.*$", "", text, flags=re.M)  # the fix check asks for
    text = text.replace("/etc/postfix/", f"{directory}/")
    write(directory / "main.cf", text, 0o644)
    shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", directory / "master.cf")
    write(directory / "sasl_passwd", seed_file("sasl_passwd"), 0o600)
    make_ca("cacert.pem")
    return directory


def test_seed_relay_config_verbatim_reports_each_inline_comment(tmp_path, mailferry):
    write(tmp_path / "main.cf", seed_file("relay-main.cf"), 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    for line, name in INLINE_COMMENT_LINES.items():
        assert f"error: {tmp_path}/main.cf, line {line}: parameter {name}: '#' starts a comment" in result.err
    assert_golden(normalise(result.err, tmp_path), "relay-check.golden")


def test_seed_relay_config_with_comments_removed_passes(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    assert mailferry("postmap", f"hash:{directory}/sasl_passwd").code == 0
    result = mailferry("check", config_dir=directory)
    assert result.code == 0, result.err
    assert ": error: " not in result.err
    assert_golden(normalise(result.err, tmp_path), "relay-fixed-check.golden")


def test_the_smarthost_example_checks_clean(tmp_path, mailferry):
    """examples/smarthost, with its table moved into the test directory, has nothing to report."""
    source = ROOT / "examples" / "smarthost"
    (tmp_path / "master.cf").write_text((source / "master.cf").read_text())
    (tmp_path / "main.cf").write_text((source / "main.cf").read_text().replace(
        "/etc/mailferry/sasl_passwd", str(tmp_path / "sasl_passwd")))
    write(tmp_path / "sasl_passwd", "[smtp.gmail.com]:587 user.name@gmail.com:app-password\n", 0o600)
    assert mailferry("postmap", f"hash:{tmp_path}/sasl_passwd").code == 0
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 0, result.err
    assert result.err.endswith(": 0 error(s), 0 warning(s)\n"), result.err


def test_world_readable_sasl_passwd_names_the_chmod(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    os.chmod(directory / "sasl_passwd", 0o644)
    assert mailferry("postmap", f"hash:{directory}/sasl_passwd").code == 0
    result = mailferry("check", config_dir=directory)
    assert result.code == 1
    for path in (f"{directory}/sasl_passwd", f"{directory}/sasl_passwd.db"):
        assert (f"{path} holds passwords but is readable by group and others (mode 0644); "
                f"run: chmod 600 {path}") in result.err


def test_missing_index_is_an_error(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    result = mailferry("check", config_dir=directory)
    assert result.code == 1
    assert f"build it with: mailferry postmap hash:{directory}/sasl_passwd" in result.err
    assert f"{directory}/main.cf, line 9: parameter smtp_sasl_password_maps" in result.err


def test_stale_index_is_a_warning(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    mailferry("postmap", f"hash:{directory}/sasl_passwd")
    later = os.stat(directory / "sasl_passwd").st_mtime + 60
    os.utime(directory / "sasl_passwd", (later, later))
    result = mailferry("check", config_dir=directory)
    assert result.code == 0
    assert "warning" in result.err and "is older than source file" in result.err


def test_missing_ca_file_is_an_error(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    mailferry("postmap", f"hash:{directory}/sasl_passwd")
    os.unlink(directory / "cacert.pem")
    result = mailferry("check", config_dir=directory)
    assert result.code == 1
    assert (f"{directory}/main.cf, line 16: parameter smtp_tls_CAfile: "
            f"{directory}/cacert.pem does not exist") in result.err


def test_unparsable_ca_file_is_an_error(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    mailferry("postmap", f"hash:{directory}/sasl_passwd")
    (directory / "cacert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    result = mailferry("check", config_dir=directory)
    assert result.code == 1
    assert "cacert.pem cannot be parsed as PEM certificates" in result.err


def test_ca_file_without_certificates_is_an_error(tmp_path, mailferry, make_ca):
    directory = relocated_seed(tmp_path, make_ca)
    mailferry("postmap", f"hash:{directory}/sasl_passwd")
    (directory / "cacert.pem").write_text("# concatenated nothing\n")
    result = mailferry("check", config_dir=directory)
    assert result.code == 1
    assert "cacert.pem" in result.err and ("no CA certificate" in result.err or "cannot be parsed" in result.err)


def cyrus_config(directory: Path, program_root: Path):
    # Mail goes to the cyrus service, so its missing program is an error (unused, a warning).
    write(directory / "main.cf", "myhostname = mail1.internal\nmailbox_transport = cyrus\n", 0o644)
    master = seed_file("cyrus-master.cf").replace("/usr/lib/", f"{program_root}/usr/lib/")
    write(directory / "master.cf", master, 0o644)


def test_cyrus_deliver_missing_suggests_lib64_twin(tmp_path, mailferry):
    twin = tmp_path / "usr" / "lib64" / "cyrus-imapd" / "deliver"
    twin.parent.mkdir(parents=True)
    write(twin, "#!/bin/sh\n", 0o755)
    cyrus_config(tmp_path, tmp_path)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert (f"{tmp_path}/master.cf, line 2: service cyrus: pipe program "
            f"{tmp_path}/usr/lib/cyrus-imapd/deliver does not exist; "
            f"{twin} exists: use that path") in result.err


def test_cyrus_deliver_missing_without_twin(tmp_path, mailferry):
    cyrus_config(tmp_path, tmp_path)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert "does not exist; install it or fix argv=" in result.err


def test_cyrus_deliver_present_passes(tmp_path, mailferry):
    program = tmp_path / "usr" / "lib" / "cyrus-imapd" / "deliver"
    program.parent.mkdir(parents=True)
    write(program, "#!/bin/sh\n", 0o755)
    cyrus_config(tmp_path, tmp_path)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 0, result.err


def test_seed_login_config(tmp_path, mailferry):
    write(tmp_path / "main.cf", seed_file("login-main.cf"), 0o644)
    shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", tmp_path / "master.cf")
    result = mailferry("check", config_dir=tmp_path)
    assert_golden(normalise(result.err, tmp_path), "login-check.golden")


def test_unknown_parameter_is_named_with_file_and_line(tmp_path, mailferry):
    write(tmp_path / "main.cf", "relay_host = [smtp.gmail.com]:587\nmy_list = a\nx = $my_list\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert f"warning: {tmp_path}/main.cf, line 1: unused parameter: relay_host=[smtp.gmail.com]:587" in result.err
    assert "did you mean relayhost?" in result.err
    # my_list is used by x, so only x is unused.
    assert "unused parameter: my_list" not in result.err
    assert f"{tmp_path}/main.cf, line 3: unused parameter: x=$my_list" in result.err


def test_an_unimplemented_feature_switched_off_is_not_warned_about(tmp_path, mailferry):
    """The seed's `smtp_tls_eccert_file =`: empty, as its default is, so the feature stays off."""
    write(tmp_path / "main.cf", "smtp_tls_eccert_file =\nsmtp_tls_eckey_file =\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert "smtp_tls_ec" not in result.err, result.err


def test_not_yet_implemented_parameter_gets_its_own_warning(tmp_path, mailferry):
    write(tmp_path / "main.cf", "smtp_tls_eccert_file = /etc/ssl/client-ec.pem\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert (f"warning: {tmp_path}/main.cf, line 1: parameter smtp_tls_eccert_file is known but not "
            "implemented yet") in result.err
    assert "unused parameter" not in result.err


def test_bad_values_are_errors(tmp_path, mailferry):
    write(tmp_path / "main.cf", "smtpd_timeout = 5x\nmessage_size_limit = 10M\n"
          "smtpd_tls_received_header = true\nmyorigin = $a\na = $myorigin\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert f"{tmp_path}/main.cf, line 1: parameter smtpd_timeout: bad time value '5x'" in result.err
    assert f"{tmp_path}/main.cf, line 2: parameter message_size_limit: bad size value '10M'" in result.err
    assert f"{tmp_path}/main.cf, line 3: parameter smtpd_tls_received_header: bad boolean value 'true'" in result.err
    assert "parameter expansion loop: $myorigin -> $a -> $myorigin" in result.err


def test_an_unknown_receive_override_option_is_an_error(tmp_path, mailferry):
    write(tmp_path / "main.cf", "receive_override_options = no_header_body_checks, no_header_reply\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert (f"{tmp_path}/main.cf, line 1: parameter receive_override_options: unknown value no_header_reply"
            in result.err)


def test_undefined_reference_is_warned(tmp_path, mailferry):
    write(tmp_path / "main.cf", "myorigin = $nosuchthing\nmydestination = ${nosuch?x}\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert "parameter myorigin refers to $nosuchthing, which is not set" in result.err
    assert "refers to $nosuch," not in result.err


def test_missing_main_cf(tmp_path, mailferry):
    result = mailferry("check", config_dir=tmp_path / "nowhere")
    assert result.code == 1
    assert "main.cf: no such file" in result.err


@pytest.mark.parametrize("example", ["quickstart"])
def test_shipped_examples_pass(example, mailferry):
    result = mailferry("check", config_dir=ROOT / "examples" / example)
    assert result.code == 0, result.err


def test_bad_mynetworks_is_an_error_before_the_daemon_trips_on_it(tmp_path, mailferry):
    write(tmp_path / "main.cf", "mynetworks = 127.0.0.0/8, 127.0.0.1/33\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert (f"{tmp_path}/main.cf, line 1: parameter mynetworks: bad network '127.0.0.1/33'") in result.err


def test_the_seed_ldap_file_unknown_parameter_is_reported_at_its_line(tmp_path, mailferry):
    """The seed's `special_result_filter = %s@%d` is no Postfix parameter: Postfix ignores it
    silently (result_format is the one), so check names the file and line."""
    write(tmp_path / "ldap-aliases.cf", seed_file("ldap-aliases.cf"), 0o644)
    write(tmp_path / "main.cf", f"virtual_alias_maps = ldap:{tmp_path}/ldap-aliases.cf\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert (f"warning: {tmp_path}/ldap-aliases.cf, line 18: unknown ldap_table parameter "
            f"'special_result_filter': Postfix ignores it; result_format") in result.err, result.err


def test_a_broken_ldap_file_is_an_error_at_its_line(tmp_path, mailferry):
    write(tmp_path / "ldap.cf", "server_host = ldap://127.0.0.1:1/\nsize_limit = one\n", 0o644)
    write(tmp_path / "main.cf", f"virtual_alias_maps = ldap:{tmp_path}/ldap.cf\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert f"{tmp_path}/ldap.cf, line 2: bad numerical configuration: size_limit = one" in result.err


@pytest.mark.parametrize("settings, complaint", [
    ("smtpd_sasl_type = cyrus\n", "line 2: parameter smtpd_sasl_type: 'cyrus' is not a SASL type mailferry has"),
    ("smtpd_sasl_type = table\nsmtpd_sasl_path = smtpd\n",
     "line 3: parameter smtpd_sasl_path: smtpd_sasl_type = table needs a table"),
    ("smtpd_sasl_type = ldap\nsmtpd_sasl_path = /nonexistent/ldap.cf\n",
     "line 3: parameter smtpd_sasl_path: smtpd_sasl_type = ldap needs an ldap_table(5) file"),
    ("smtpd_sasl_type = dovecot\nsmtpd_sasl_security_options = noplain\n",
     "line 3: parameter smtpd_sasl_security_options: unknown value noplain; did you mean noplaintext?"),
])
def test_smtpd_sasl_settings_mailferry_cannot_use_are_errors(tmp_path, mailferry, settings, complaint):
    write(tmp_path / "main.cf", "smtpd_sasl_auth_enable = yes\n" + settings, 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert complaint in result.err


def test_smtpd_sasl_settings_are_not_checked_while_auth_is_off(tmp_path, mailferry):
    write(tmp_path / "main.cf", "smtpd_sasl_type = cyrus\n", 0o644)
    assert "smtpd_sasl_type" not in mailferry("check", config_dir=tmp_path).err


def test_restriction_class_names_are_not_unused_parameters(tmp_path, mailferry):
    write(tmp_path / "main.cf", "smtpd_restriction_classes = strict\nstrict = reject_unauth_destination\n"
                                "nothing = here\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert "unused parameter: strict" not in result.err
    assert "unused parameter: nothing=here" in result.err


def test_an_unknown_restriction_is_an_error_with_its_line(tmp_path, mailferry):
    write(tmp_path / "main.cf", "myhostname = mx.example.com\nsmtpd_restriction_classes = strict\n"
                                "strict = reject_unauth_destination\n"
                                "smtpd_recipient_restrictions = permit_mynetwork, strict, check_sender_access\n",
          0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert (f"error: {tmp_path}/main.cf, line 4: parameter smtpd_recipient_restrictions: unknown smtpd "
            "restriction \"permit_mynetwork\"") in result.err
    assert "restriction check_sender_access needs an argument" in result.err
    assert "restriction \"strict\"" not in result.err   # a class is a restriction name
