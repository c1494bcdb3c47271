"""Postfix-style short options, shared by every command.

Each command also takes `-c CONFIG_DIR` and `-v`, as Postfix's commands do.
"""

from __future__ import annotations

import getopt
import os

DEFAULT_CONFIG_DIR = "/etc/mailferry"


def default_config_dir(environ=os.environ) -> str:
    """The configuration directory when no -c (sendmail: -C) is given: MAIL_CONFIG, as Postfix's
    commands read it (sendmail(1), postqueue(1), postconf(1) ENVIRONMENT), then mailferry's own
    MAILFERRY_CONFIG_DIR, then /etc/mailferry. Precedence: -c > MAIL_CONFIG >
    MAILFERRY_CONFIG_DIR > /etc/mailferry. The daemon exports MAIL_CONFIG to pipe commands
    (export_environment), so a command that calls sendmail reaches the same instance."""
    return environ.get("MAIL_CONFIG") or environ.get("MAILFERRY_CONFIG_DIR") or DEFAULT_CONFIG_DIR


class UsageError(Exception):
    """Bad options; the message ends with the command's usage line."""


def parse_options(argv: list[str], letters: str, config_dir: str, usage: str,
                  reporter, long_options: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str], str]:
    """(options by flag, e.g. {"-q": KEY, "-s": ""}; remaining arguments; config directory).
    `long_options` (mailferry's own commands: `--sender=`...) may also follow the arguments."""
    try:
        if long_options:
            pairs, rest = getopt.gnu_getopt(argv, letters + "c:v", list(long_options))
        else:
            pairs, rest = getopt.getopt(argv, letters + "c:v")
    except getopt.GetoptError as exc:
        raise UsageError(f"{exc}\n{usage}") from None
    options: dict[str, str] = {}
    for flag, value in pairs:
        if flag == "-c":
            config_dir = value
        elif flag == "-v":
            reporter.verbose += 1
        else:
            options[flag] = value
    return options, rest, config_dir
