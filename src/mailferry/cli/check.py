"""`mailferry check`: find what would break before it breaks.

Reports, each with its file and line: main.cf syntax and inline comments,
unknown and not-yet-implemented parameters, values that do not parse,
master.cf problems, tables that cannot be opened or whose index is older
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
    for item in inspect_config(config_dir):
        reporter.diagnostic(item)
    reporter.info(f"{config_dir}: {reporter.errors} error(s), {reporter.warnings} warning(s)")
    return 1 if reporter.errors else 0
