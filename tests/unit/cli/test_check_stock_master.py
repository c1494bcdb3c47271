"""Postfix's stock Debian master.cf, with its submission and submissions blocks uncommented,
passes `mailferry check` (issue 11): the file as the postfix package installs it, read from
/usr/share/postfix/master.cf.dist, next to Debian's main.cf as the package composes it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write

STOCK_MASTER = Path("/usr/share/postfix/master.cf.dist")
DEBIAN_MAIN = Path("/usr/share/postfix/main.cf.debian")
DEBIAN_MAIN_TLS = Path("/usr/share/postfix/main.cf.tls")
SERVICE_HEADS = ("#submission inet", "#submissions     inet")


def uncommented_stock_master() -> str:
    """The stock file with the `submission` and `submissions` entries (any client, not the
    loopback-only variants) and their `-o` lines uncommented; the prose comments inside the
    blocks stay comments, as an administrator leaves them."""
    assert STOCK_MASTER.exists(), "Debian's postfix package is needed: run scripts/setup --test"
    lines, in_block = [], False
    for line in STOCK_MASTER.read_text().split("\n"):
        if line.startswith(SERVICE_HEADS):
            in_block = True
            lines.append(line[1:])
        elif in_block and line.startswith("#  -o "):
            lines.append(line[1:])
        elif in_block and line.startswith("#     "):
            lines.append(line)
        else:
            in_block = False
            lines.append(line)
    return "\n".join(lines)


def certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "snakeoil.key", directory / "snakeoil.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.example.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def debian_main_cf(directory: Path) -> str:
    """main.cf.debian plus main.cf.tls, as Debian's postinst writes a new main.cf; the snakeoil
    certificate (package ssl-cert) is replaced by one made here."""
    cert, key = certificate(directory)
    tls = (DEBIAN_MAIN_TLS.read_text().replace("/etc/ssl/certs/ssl-cert-snakeoil.pem", str(cert))
           .replace("/etc/ssl/private/ssl-cert-snakeoil.key", str(key)))
    return DEBIAN_MAIN.read_text() + tls


def diagnostics(text: str, severity: str) -> list[str]:
    return re.findall(rf"^mailferry/check: {severity}: (.*)$", text, flags=re.M)


def test_the_uncommented_blocks_are_services(tmp_path):
    text = uncommented_stock_master()
    assert re.search(r"^submission inet n\s+-\s+y\s+-\s+-\s+smtpd$", text, flags=re.M)
    assert re.search(r"^submissions\s+inet\s+n\s+-\s+y\s+-\s+-\s+smtpd$", text, flags=re.M)
    assert text.count("\n  -o smtpd_tls_wrappermode=yes") == 1
    assert text.count("\n  -o milter_macro_daemon_name=ORIGINATING") == 2


def test_stock_master_cf_passes_check(tmp_path, mailferry):
    write(tmp_path / "main.cf", debian_main_cf(tmp_path), 0o644)
    write(tmp_path / "master.cf", uncommented_stock_master(), 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 0, result.err
    assert diagnostics(result.err, "error") == []
    warnings = "\n".join(diagnostics(result.err, "warning"))
    # Accepted as written; milter_macro_daemon_name=ORIGINATING is what the milters see (docs/milter.md).
    assert "milter_macro_daemon_name" not in warnings
    assert "syslog_name" not in warnings and "smtpd_tls_wrappermode" not in warnings
    assert "smtpd_reject_unlisted_recipient" not in warnings
    # The pipe services no main.cf setting routes to: their missing programs are warnings.
    assert re.search(r"service maildrop: pipe program /usr/bin/maildrop does not exist; .*nothing routes "
                     r"mail to this service \(no \*_transport setting", warnings)


def test_without_a_certificate_the_tls_services_are_errors(tmp_path, mailferry):
    write(tmp_path / "main.cf", DEBIAN_MAIN.read_text(), 0o644)
    write(tmp_path / "master.cf", uncommented_stock_master(), 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    errors = diagnostics(result.err, "error")
    assert any(re.search(r"line 19: service submission: TLS is required here but no certificate is configured: "
                         r"STARTTLS is not offered", text) for text in errors), errors
    assert any(re.search(r"service submissions: TLS is required here but no certificate is configured: every "
                         r"connection would be dropped before the greeting", text) for text in errors), errors


@pytest.mark.parametrize("defined", [False, True])
def test_mua_restriction_references(tmp_path, mailferry, defined):
    """The stock comment's advice: -o smtpd_<xxx>_restrictions=$mua_<xxx>_restrictions."""
    master = uncommented_stock_master()
    for kind in ("client", "helo", "sender"):
        master = master.replace(f"  -o smtpd_{kind}_restrictions=\n",
                                f"  -o smtpd_{kind}_restrictions=$mua_{kind}_restrictions\n")
    main = debian_main_cf(tmp_path)
    if defined:
        main += "".join(f"mua_{kind}_restrictions = permit_mynetworks, reject\n" for kind in ("client", "helo"))
        main += "mua_sender_restrictions =\n"
    write(tmp_path / "main.cf", main, 0o644)
    write(tmp_path / "master.cf", master, 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 0, result.err
    undefined = [text for text in diagnostics(result.err, "warning") if "which is not set in main.cf" in text]
    if defined:
        assert undefined == [] and "unused parameter: mua_" not in result.err
    else:
        # Postfix expands an undefined $name to nothing; mailferry does too, and says so.
        assert len(undefined) == 6, undefined  # three references in each of the two services
        assert "service submission: -o smtpd_client_restrictions=$mua_client_restrictions refers to " \
               "$mua_client_restrictions" in result.err
