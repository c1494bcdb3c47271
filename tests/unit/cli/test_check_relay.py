"""`mailferry check` on a relay that gets a password: `smtp_tls_security_level = may` (or none)
does not protect it; `encrypt` or `secure` is what is meant (a warning: Postfix delivers so)."""

from __future__ import annotations

import pytest

from tests.conftest import write

QUICK_MASTER = "127.0.0.1:2525 inet n - n - - smtpd\nsmtp unix - - n - - smtp\n"
RELAY = ("relayhost = [smtp.gmail.com]:587\n"
         "smtp_sasl_auth_enable = yes\n"
         "smtp_sasl_security_options = noanonymous\n")


def check(tmp_path, mailferry, main: str, passwords: str = "[smtp.gmail.com]:587 user@gmail.com:s3cret\n",
          master: str = QUICK_MASTER):
    write(tmp_path / "sasl_passwd", passwords, 0o600)
    write(tmp_path / "main.cf", RELAY + f"smtp_sasl_password_maps = texthash:{tmp_path}/sasl_passwd\n" + main,
          0o644)
    write(tmp_path / "master.cf", master, 0o644)
    return mailferry("check", config_dir=tmp_path)


@pytest.mark.parametrize("level", ["may", "none"])
def test_may_or_none_protecting_a_password_is_a_warning_naming_encrypt(tmp_path, mailferry, level):
    result = check(tmp_path, mailferry, f"smtp_tls_security_level = {level}\n")
    assert result.code == 0, result.err
    assert (f"main.cf, line 5: parameter smtp_tls_security_level = {level} while [smtp.gmail.com]:587 gets a "
            "password (smtp_sasl_password_maps entry '[smtp.gmail.com]:587')") in result.err, result.err
    assert 'set "smtp_tls_security_level = encrypt"' in result.err
    assert "s3cret" not in result.err


def test_encrypt_is_quiet(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtp_tls_security_level = encrypt\n")
    assert "gets a password" not in result.err, result.err


def test_no_entry_for_the_relay_is_quiet(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtp_tls_security_level = may\n", passwords="other.example u:p\n")
    assert "gets a password" not in result.err, result.err


def test_a_policy_table_that_makes_the_relay_secure_is_quiet(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtp_tls_security_level = may\n"
                   "smtp_tls_policy_maps = inline:{ [smtp.gmail.com]:587=encrypt }\n")
    assert "gets a password" not in result.err, result.err


def test_a_transport_override_is_what_counts(tmp_path, mailferry):
    master = QUICK_MASTER.replace("smtp unix - - n - - smtp\n",
                                  "smtp unix - - n - - smtp\n  -o smtp_tls_security_level=encrypt\n")
    result = check(tmp_path, mailferry, "smtp_tls_security_level = may\n", master=master)
    assert "gets a password" not in result.err, result.err
