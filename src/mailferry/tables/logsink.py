"""Where tables that talk to servers (SQL, and proxy: refusals) report what went wrong.

Standard error until the daemon points it at its mail log (master/server.py), so `postmap -q`
and `check` show the same warnings the daemon logs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _stderr_warning(service: str, text: str) -> None:
    print(f"mailferry: warning: {text}", file=sys.stderr, flush=True)


_sink: Callable[[str, str], None] = _stderr_warning


def log_warnings_to(sink: Callable[[str, str], None]) -> None:
    """`sink(service, text)`: the daemon logs it as `SERVICE[pid]: warning: TEXT`."""
    global _sink
    _sink = sink


def warn(text: str, service: str = "cleanup") -> None:
    """`service`: the Postfix program that would log it (cleanup for a lookup, as for LDAP;
    proxymap for a refused proxy: table)."""
    _sink(service, text)
