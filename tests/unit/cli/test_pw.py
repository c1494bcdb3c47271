"""`mailferry pw`: hashes for smtpd_sasl_type = table."""

from __future__ import annotations

import io
import subprocess
import sys

from mailferry.auth import passwords
from mailferry.cli.main import main


def test_pw_prints_a_table_line_that_verifies(capsys):
    assert main(["pw", "-s", "sha512-crypt", "-u", "user1", "-p", "correct horse"]) == 0
    user, stored = capsys.readouterr().out.split()
    assert user == "user1" and stored.startswith("{SHA512-CRYPT}$6$")
    assert passwords.verify("correct horse", stored)


def test_pw_default_scheme_is_argon2id(capsys):
    assert main(["pw", "-p", "x"]) == 0
    assert capsys.readouterr().out.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")


def test_pw_test_mode_exit_status(capsys):
    stored = passwords.make("pw", "BLF-CRYPT")
    assert main(["pw", "-t", stored, "-p", "pw"]) == 0
    assert main(["pw", "-t", stored, "-p", "nope"]) == 1
    assert "(verified)" in capsys.readouterr().out


def test_pw_reads_the_password_from_standard_input():
    out = subprocess.run([sys.executable, "-m", "mailferry", "pw", "-s", "BLF-CRYPT"], input="from stdin\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert passwords.verify("from stdin", out.stdout.strip())


def test_pw_unknown_scheme(capsys):
    assert main(["pw", "-s", "MD5", "-p", "x"]) != 0
    assert "unknown scheme 'MD5'" in capsys.readouterr().err
