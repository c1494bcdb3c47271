"""`mailferry check`: find what would break before it breaks.

Reports, each with its file and line: main.cf syntax and inline comments,
unknown and not-yet-implemented parameters, values that do not parse,
master.cf problems, unknown restrictions in the smtpd_*_restrictions lists,
tables that cannot be opened or whose index is older
than its source, credential tables readable by group or others, pipe
programs that do not exist, and TLS files that are missing or unreadable;
`smtp_tls_security_level = may` for a relay that gets a password, and with
--online (mailferry's own) a relay certificate the CA file cannot verify.
Files the configuration names that do not exist on this machine are listed
last, apart from the other errors ("missing file"). Exit status 1 when there
is any error or missing file, 0 when there are only warnings (docs/check.md).
"""

from __future__ import annotations

import os

from mailferry.cli.options import parse_options
from mailferry.cli.output import MISSING_FILE, Reporter

USAGE = "usage: mailferry [-c CONFIG_DIR] check [--online]"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    options, rest, config_dir = parse_options(argv, "", config_dir, USAGE, reporter, ("online",))
    if rest:
        return reporter.fatal(f"unexpected arguments {' '.join(rest)}\n{USAGE}")
    from mailferry.config.inspect import inspect_config
    items = inspect_config(config_dir)
    items += _restriction_problems(config_dir)
    items += _relay_problems(config_dir, "--online" in options)
    items += _bind_address_problems(config_dir)
    missing = [item for item in items if item.kind == MISSING_FILE]
    for item in items:
        if item.kind != MISSING_FILE:
            reporter.diagnostic(item)
    if missing:
        reporter.info("files this configuration names that do not exist on this machine "
                      "(Postfix would fail on them too; create them or fix the names):")
    for item in missing:
        reporter.diagnostic(item)
    summary = f"{config_dir}: {reporter.errors} error(s), {reporter.warnings} warning(s)"
    if reporter.missing_files:
        summary += f", {reporter.missing_files} missing file(s)"
    reporter.info(summary)
    return 1 if reporter.errors or reporter.missing_files else 0


def _restriction_problems(config_dir: str) -> list:
    from mailferry.config.config import load
    from mailferry.policy.check import restriction_problems
    try:
        return restriction_problems(load(config_dir))
    except (OSError, ValueError):
        return []   # inspect_config has reported why the configuration cannot be read


def _relay_problems(config_dir: str, online: bool) -> list:
    """A password that `may` does not protect; with --online (mailferry's own), the relay's certificate."""
    from mailferry.delivery.relay_check import config_problems
    loaded = _config_and_master(config_dir)
    return config_problems(*loaded, online) if loaded else []


def _bind_address_problems(config_dir: str) -> list:
    """smtp_bind_address(6) that are no numeric address of their family (delivery/settings.py)."""
    from mailferry.delivery.settings import bind_address_problems
    from mailferry.diagnostics import error
    loaded = _config_and_master(config_dir)
    return [error(text) for text in bind_address_problems(*loaded)] if loaded else []


def _config_and_master(config_dir: str):
    """(main.cf, master.cf or None); None when they cannot be read (inspect_config says why)."""
    from mailferry.config.config import load, master_cf_path
    from mailferry.config.mastercf import read_master_cf
    try:
        config = load(config_dir)
        path = master_cf_path(config_dir)
        return config, (read_master_cf(path) if os.path.exists(path) else None)
    except (OSError, ValueError):
        return None
