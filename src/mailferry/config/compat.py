"""compatibility_level: which of Postfix's backwards-compatible defaults are in force.

The defaults themselves follow the level through the parameter table: each one that
changed with a level is Postfix's own `${{$compatibility_level} <level {N} ? {old} :
{new}}` expression (config/parameters_data.py), expanded like any other value, so
`compatibility_level = 2` gives `smtpd_tls_fingerprint_digest = md5` as it does in
Postfix 3.7. Unset, mailferry's level is 3.6 (Postfix's is 0): a new mailferry install
gets the current defaults, an old Postfix main.cf that says `compatibility_level = 2`
gets what it had.

This module says which old defaults are in force, with the rules of Postfix's
mail_params.c check_legacy_defaults(): an old default counts only when the parameter
is not set in main.cf (mynetworks_style only when mynetworks is not set either). The
daemon logs Postfix's lines about them at start and reload (master/server.py).
"""

from __future__ import annotations

from mailferry.config.config import Config

# Postfix 3.7's LAST_COMPAT_LEVEL: the level whose defaults mailferry has when none is set.
LAST_LEVEL = "3.6"

# (level the default changed at, parameter): the old default is used below that level.
CHANGES = (
    ("1", "append_dot_mydomain"),
    ("1", "smtputf8_enable"),
    ("1", "smtpd_relay_restrictions"),
    ("2", "relay_domains"),
    ("2", "mynetworks_style"),
    ("3.6", "smtpd_tls_fingerprint_digest"),
    ("3.6", "smtp_tls_fingerprint_digest"),
    ("3.6", "lmtp_tls_fingerprint_digest"),
    ("3.6", "smtpd_relay_before_recipient_restrictions"),
    ("3.6", "respectful_logging"),
)


def level(text: str) -> tuple[int, int, int]:
    """`3.6` → (3, 6, 0): major, minor and patch, as Postfix's compat_level_from_string()
    compares them (3.10 is above 3.9). Raises ValueError for anything else."""
    parts = text.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"malformed compatibility level syntax: {text!r}")
    numbers = [int(part) for part in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


def configured_level(config: Config) -> str:
    return config.get("compatibility_level").strip() or "0"


def legacy_defaults(config: Config) -> list[tuple[str, str]]:
    """(parameter, value) for each backwards-compatible default in force, in Postfix's order."""
    try:
        current = level(configured_level(config))
    except ValueError:
        return []      # check reports the bad level
    found = []
    for changed_at, name in CHANGES:
        if current >= level(changed_at) or config.settings.get(name) is not None or name in config.overrides:
            continue
        if name == "mynetworks_style" and config.settings.get("mynetworks") is not None:
            continue
        try:
            found.append((name, config.get(name)))
        except ValueError:
            continue
    return found


def log_lines(config: Config) -> list[str]:
    """What the daemon logs at start and reload below the last level: Postfix's three lines
    (postfix.c), then one line per old default in force. Postfix logs those where they are
    first used ("... to accept mail for domain ..."); mailferry says so once, up front."""
    try:
        below = level(configured_level(config)) < level(LAST_LEVEL)
    except ValueError:
        return []
    if not below:
        return []
    lines = ["mailferry is using backwards-compatible default settings",
             "See https://www.postfix.org/COMPATIBILITY_README.html for details",
             f"To disable backwards compatibility set \"compatibility_level = {LAST_LEVEL}\" in main.cf "
             "and run \"mailferry reload\""]
    for name, value in legacy_defaults(config):
        lines.append(f"using backwards-compatible default setting {name}={value or '(empty)'}")
    return lines
