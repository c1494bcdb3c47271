"""`mailferry check` on TLS settings: bad values where they are written, per service, and a
warning of its own for each thing Python's ssl cannot do as Postfix does."""

from __future__ import annotations

import re

import pytest

from tests.conftest import write

QUICK_MASTER = "127.0.0.1:2525 inet n - n - - smtpd\n"


def check(tmp_path, mailferry, main: str, master: str = QUICK_MASTER):
    write(tmp_path / "main.cf", main, 0o644)
    write(tmp_path / "master.cf", master, 0o644)
    return mailferry("check", config_dir=tmp_path)


@pytest.fixture
def certificate(make_ca):
    return make_ca("cert.pem")  # any PEM certificate file will do for check


@pytest.mark.parametrize("setting, message", [
    ("smtpd_tls_protocols = >=TLSv1.4", "unknown TLS protocol version in '>=TLSv1.4'"),
    ("smtpd_tls_ciphers = strongest", "unknown cipher grade 'strongest'"),
    ("smtpd_tls_eecdh_grade = extreme", "unknown EECDH grade 'extreme'"),
    ("tls_ssl_options = NO_FUN", "unknown SSL option 'NO_FUN'"),
    ("smtpd_tls_loglevel = chatty", "unknown TLS log level 'chatty'"),
    ("smtp_tls_ciphers = strongest", "unknown cipher grade 'strongest'"),
])
def test_bad_tls_values_are_errors_at_their_line(tmp_path, mailferry, setting, message):
    result = check(tmp_path, mailferry, "smtpd_tls_security_level = may\n" + setting + "\n")
    assert result.code == 1
    name = setting.split(" = ")[0]
    assert f"main.cf, line 2: parameter {name}: " in result.err and message in result.err, result.err


def test_a_bad_override_is_reported_at_its_service(tmp_path, mailferry, certificate):
    master = QUICK_MASTER + "127.0.0.1:2587 inet n - n - - smtpd\n  -o smtpd_tls_security_level=encrypt\n" \
                            "  -o smtpd_tls_mandatory_protocols=TLSv9\n"
    result = check(tmp_path, mailferry, f"smtpd_tls_cert_file = {certificate}\n", master)
    assert result.code == 1
    assert re.search(r"master.cf, line 2: service 127.0.0.1:2587: parameter smtpd_tls_mandatory_protocols: "
                     r"unknown TLS protocol 'TLSv9'", result.err), result.err


@pytest.mark.parametrize("setting, words", [
    ("smtpd_tls_exclude_ciphers = aNULL, MD5", "cannot choose TLS 1.3 cipher suites"),
    ("smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache", "full handshake on every connection"),
    ("smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache", "in memory, per process"),
    ("smtpd_tls_session_cache_timeout = 7200s", "cannot set a session lifetime"),
    ("tls_eecdh_auto_curves = X25519", "cannot set a list of key exchange groups"),
    ("smtpd_tls_ask_ccert = yes", "ends the handshake when a client presents a certificate it cannot verify"),
])
def test_what_python_cannot_do_gets_its_own_warning(tmp_path, mailferry, setting, words):
    result = check(tmp_path, mailferry, setting + "\n")
    assert result.code == 0, result.err
    name = setting.split(" = ")[0]
    [line] = [text for text in result.err.splitlines() if f"parameter {name}" in text]
    assert "warning:" in line and words in line and "a limit of Python's ssl, see docs/tls.md" in line
    assert "known but not implemented" not in result.err


def test_zero_session_timeout_is_not_a_limit(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtpd_tls_session_cache_timeout = 0\n")
    assert result.code == 0 and "smtpd_tls_session_cache_timeout" not in result.err
