"""`mailferry check` on oauth2: entries of smtp_sasl_password_maps (config/oauth2check.py)."""

from __future__ import annotations

import json
import os
import pwd

from tests.conftest import write

RELAY = """\
relayhost = [smtp.gmail.com]:587
mail_owner = nobody
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = hash:{directory}/sasl_passwd
smtp_sasl_security_options = {options}
smtp_sasl_mechanism_filter = {filter}
smtp_tls_security_level = encrypt
"""


def relay(directory, mailferry, settings, options="noanonymous", mechanism_filter="xoauth2"):
    (directory / "main.cf").write_text(RELAY.format(directory=directory, options=options, filter=mechanism_filter))
    write(directory / "sasl_passwd", f"[smtp.gmail.com]:587 user.name@gmail.com:oauth2:{settings}\n", 0o600)
    assert mailferry("postmap", f"hash:{directory}/sasl_passwd").code == 0
    return mailferry("check", config_dir=directory)


def settings_file(directory, mode=0o600, **fields):
    path = directory / "gmail.json"
    data = {"token_endpoint": "https://oauth2.googleapis.com/token", "client_id": "c", "refresh_token": "r"}
    data.update(fields)
    write(path, json.dumps({key: value for key, value in data.items() if value is not None}), mode)
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return path


def test_a_good_oauth2_entry_checks_clean(tmp_path, mailferry):
    result = relay(tmp_path, mailferry, settings_file(tmp_path))
    assert result.code == 0, result.err
    assert "OAuth2" not in result.err


def test_a_missing_or_incomplete_settings_file_is_named(tmp_path, mailferry):
    result = relay(tmp_path, mailferry, tmp_path / "missing.json")
    assert f"the OAuth2 entry for [smtp.gmail.com]:587 names {tmp_path}/missing.json, which does not exist: " \
           "mail to [smtp.gmail.com]:587 is deferred until `mailferry oauth2 --settings FILE` writes it" in result.err
    assert result.code == 0          # a warning: other mail still flows
    result = relay(tmp_path, mailferry, settings_file(tmp_path, refresh_token=None))
    assert "which has no refresh_token" in result.err


def test_a_readable_settings_file_is_an_error_with_the_chmod(tmp_path, mailferry):
    path = settings_file(tmp_path, mode=0o644)
    result = relay(tmp_path, mailferry, path)
    assert result.code == 1
    assert (f"{path} holds an OAuth2 refresh token and client secret but is readable by group and others "
            f"(mode 0644); run: chmod 600 {path}") in result.err


def test_a_settings_file_mail_owner_cannot_read_says_chown(tmp_path, mailferry):
    path = settings_file(tmp_path)
    os.chown(path, 0, 0)
    result = relay(tmp_path, mailferry, path)
    assert f"which mail_owner nobody cannot read (the delivery agent reads it as mail_owner): run: chown nobody " \
           f"{path}" in result.err


def test_options_and_filters_that_leave_xoauth2_out_are_named(tmp_path, mailferry):
    result = relay(tmp_path, mailferry, settings_file(tmp_path), options="noplaintext, noanonymous",
                   mechanism_filter="plain, login")
    assert "smtp_sasl_mechanism_filter = plain, login leaves both out: set smtp_sasl_mechanism_filter = xoauth2" \
        in result.err
    assert "smtp_sasl_tls_security_options = noplaintext, noanonymous forbids XOAUTH2 and OAUTHBEARER" in result.err
