"""`mailferry pw`: make a password hash for `smtpd_sasl_type = table`, as `doveadm pw` does.

    mailferry pw [-s SCHEME] [-p PASSWORD] [-u USER]    print {SCHEME}hash (with -u: "USER {SCHEME}hash",
                                                        a line for the password table)
    mailferry pw -t HASH [-p PASSWORD]                  check PASSWORD against HASH: exit 0 if it matches

SCHEME is ARGON2ID (the default), BLF-CRYPT or SHA512-CRYPT. Without -p the password is read
from the terminal (twice), or as one line from standard input. mailferry's own command.
"""

from __future__ import annotations

import getopt
import getpass
import sys

from mailferry.cli.output import Reporter

USAGE = "usage: mailferry pw [-s ARGON2ID|BLF-CRYPT|SHA512-CRYPT] [-p PASSWORD] [-u USER] [-t HASH]"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    from mailferry.auth import passwords
    try:
        pairs, rest = getopt.getopt(argv, "s:p:u:t:")
    except getopt.GetoptError as error:
        return reporter.fatal(f"{error}\n{USAGE}")
    if rest:
        return reporter.fatal(f"unexpected argument {rest[0]!r}\n{USAGE}")
    options = dict(pairs)
    scheme = options.get("-s", passwords.DEFAULT_SCHEME).upper()
    if scheme not in passwords.SCHEMES:
        return reporter.fatal(f"unknown scheme {scheme!r}: use one of {', '.join(passwords.SCHEMES)}")
    password = options.get("-p")
    if password is None:
        password = _read_password(confirm="-t" not in options)
        if password is None:
            return reporter.fatal("the passwords differ")
    if not password:
        return reporter.fatal("empty password")
    if "-t" in options:
        try:
            matches = passwords.verify(password, options["-t"])
        except passwords.HashFormatError as error:
            return reporter.fatal(str(error))
        print(f"{options['-t']} ({'verified' if matches else 'does not match'})")
        return 0 if matches else 1
    hashed = passwords.make(password, scheme)
    print(f"{options['-u']} {hashed}" if "-u" in options else hashed)
    return 0


def _read_password(confirm: bool) -> str | None:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Enter new password: " if confirm else "Enter password to verify: ")
    if confirm and getpass.getpass("Retype new password: ") != first:
        return None
    return first
