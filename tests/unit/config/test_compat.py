"""compatibility_level: the level-dependent defaults against the real Postfix's postconf, and
which backwards-compatible defaults the daemon says are in force (config/compat.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailferry.config.compat import CHANGES, legacy_defaults, level, log_lines
from mailferry.config.config import load
from mailferry.config.parameters import lookup

NAMES = sorted({name for _, name in CHANGES} | {"mynetworks_style"})
HOST = "myhostname = mx.example.com\nmydomain = example.com\n"


def postconf(program: list[str], directory, *flags: str) -> list[str]:
    out = subprocess.run([*program, "-c", str(directory), *flags, *NAMES], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


MAILFERRY = [sys.executable, "-m", "mailferry", "postconf"]


@pytest.mark.parametrize("compatibility_level", ["0", "1", "2", "3.6", "3.7", "3.10", "3.6.1"])
def test_defaults_follow_the_level_as_postfixs_do(tmp_path, compatibility_level):
    (tmp_path / "main.cf").write_text(f"compatibility_level = {compatibility_level}\n" + HOST)
    (tmp_path / "master.cf").write_text("")
    assert postconf(MAILFERRY, tmp_path, "-x") == postconf(["postconf"], tmp_path, "-x")


def test_postconf_d_prints_postfixs_level_expressions(tmp_path):
    (tmp_path / "main.cf").write_text(HOST)
    (tmp_path / "master.cf").write_text("")
    assert postconf(MAILFERRY, tmp_path, "-d") == postconf(["postconf"], tmp_path, "-d")


def test_unset_the_level_is_36_in_mailferry(tmp_path):
    """A documented difference: unset, Postfix 3.7 runs at level 0, mailferry at 3.6."""
    (tmp_path / "main.cf").write_text(HOST)
    config = load(str(tmp_path))
    assert lookup("compatibility_level").default == "3.6"
    assert config.get("relay_domains") == "" and config.get("smtputf8_enable") == "yes"
    assert legacy_defaults(config) == [] and log_lines(config) == []


def test_levels_compare_as_versions():
    assert level("3.10") > level("3.9") > level("3.6") == level("3.6.0") > level("2") > level("0")
    for bad in ("three", "3.", "3.6.1.2", "-1", ""):
        with pytest.raises(ValueError):
            level(bad)


def test_legacy_defaults_follow_postfixs_rules(tmp_path):
    """Only what main.cf leaves unset; mynetworks_style only when mynetworks is unset too."""
    (tmp_path / "main.cf").write_text("compatibility_level = 0\nrelay_domains = example.net\n"
                                      "mynetworks = 127.0.0.0/8\nsmtp_tls_fingerprint_digest = sha256\n" + HOST)
    found = dict(legacy_defaults(load(str(tmp_path))))
    assert found == {"append_dot_mydomain": "yes", "smtputf8_enable": "no", "smtpd_relay_restrictions": "",
                     "smtpd_tls_fingerprint_digest": "md5", "lmtp_tls_fingerprint_digest": "md5",
                     "smtpd_relay_before_recipient_restrictions": "no", "respectful_logging": "no"}


def test_log_lines_below_the_last_level(tmp_path):
    (tmp_path / "main.cf").write_text("compatibility_level = 2\n" + HOST)
    lines = log_lines(load(str(tmp_path)))
    assert lines[:2] == ["mailferry is using backwards-compatible default settings",
                         "See https://www.postfix.org/COMPATIBILITY_README.html for details"]
    assert "using backwards-compatible default setting smtpd_tls_fingerprint_digest=md5" in lines
    assert not any("relay_domains" in line or "mynetworks_style" in line for line in lines)
    (tmp_path / "main.cf").write_text("compatibility_level = 1\n" + HOST)
    assert "using backwards-compatible default setting relay_domains=mx.example.com, localhost.example.com, " \
           "localhost" in log_lines(load(str(tmp_path)))
