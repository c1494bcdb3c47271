"""`mailferry check`: find what would break before it breaks.

Reports, each with its file and line: main.cf syntax and inline comments,
unknown and not-yet-implemented parameters, values that do not parse,
master.cf problems, unknown restrictions in the smtpd_*_restrictions lists,
tables that cannot be opened or whose index is older
than its source, credential tables readable by group or others, pipe
programs that do not exist, and TLS files that are missing or unreadable.
Exit status 1 when there is any error, 0 otherwise.
"""

from __future__ import annotations

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry [-c CONFIG_DIR] check"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    _, rest, config_dir = parse_options(argv, "", config_dir, USAGE, reporter)
    if rest:
        return reporter.fatal(f"unexpected arguments {' '.join(rest)}\n{USAGE}")
    from mailferry.config.inspect import inspect_config
    items = inspect_config(config_dir)
    items += _restriction_problems(config_dir)
    for item in items:
        reporter.diagnostic(item)
    reporter.info(f"{config_dir}: {reporter.errors} error(s), {reporter.warnings} warning(s)")
    return 1 if reporter.errors else 0


def _restriction_problems(config_dir: str) -> list:
    from mailferry.config.config import load
    from mailferry.policy.check import restriction_problems
    try:
        return restriction_problems(load(config_dir))
    except (OSError, ValueError):
        return []   # inspect_config has reported why the configuration cannot be read
