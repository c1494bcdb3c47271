"""`mailferry check` on smtp_bind_address(6): a host name or the other family's address is an
error at its line, in main.cf or a client service's -o (docs/client-source-lookup.md)."""

from __future__ import annotations

from tests.conftest import write

MASTER = ("127.0.0.1:2525 inet n - n - - smtpd\n"
          "smtp unix - - n - - smtp\n"
          "out2 unix - - n - - smtp -o smtp_bind_address6=127.0.0.2\n"
          "lmtp unix - - n - - lmtp -o lmtp_bind_address=[127.0.0.3]\n")


def check(tmp_path, mailferry, main: str, master: str = MASTER):
    write(tmp_path / "main.cf", main, 0o644)
    write(tmp_path / "master.cf", master, 0o644)
    return mailferry("check", config_dir=tmp_path)


def test_bad_bind_addresses_are_errors_at_their_line(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtp_bind_address = mail.example.com\nsmtp_bind_address6 = [::1]\n")
    assert result.code == 1
    assert ("main.cf, line 1: parameter smtp_bind_address: bad value mail.example.com: expected a numeric "
            "IPv4 address") in result.err, result.err
    assert ("master.cf, line 3: parameter smtp_bind_address6: bad value 127.0.0.2: not an IPv6 address"
            in result.err), result.err
    assert "2 error(s)" in result.err, result.err


def test_good_bind_addresses_pass(tmp_path, mailferry):
    result = check(tmp_path, mailferry, "smtp_bind_address = 127.0.0.2\nsmtp_bind_address6 = [::1]\n"
                                        "smtp_bind_address_enforce = yes\n",
                   MASTER.replace("smtp_bind_address6=127.0.0.2", "smtp_bind_address6=::2"))
    assert result.code == 0 and " 0 error(s)" in result.err, result.err
