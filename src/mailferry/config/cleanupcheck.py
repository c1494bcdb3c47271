"""`check` for cleanup_service_name, rewrite_service_name and queue_service_name (docs/content-checks.md).

cleanup_service_name (main.cf's, or a service's -o) must name a master.cf `cleanup` service
of type unix, or be the built-in `cleanup`: otherwise every message that service receives
is refused with a 4xx (cleanup/services.py). mailferry has no separate trivial-rewrite or
qmgr service, so rewrite_service_name and queue_service_name have no effect: their
defaults are accepted silently, any other value gets a warning.
"""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf
from mailferry.diagnostics import Diagnostic, error, warning

_BUILTIN_CLEANUP = "cleanup"
_NO_SUCH_SERVICE = {"rewrite_service_name": ("rewrite", "trivial-rewrite",
                                             "address rewriting and resolving are built into cleanup, smtpd and qmgr"),
                    "queue_service_name": ("qmgr", "qmgr", "the queue manager is built into the master process")}


def check_service_names(config: Config, master: MasterCf | None) -> list[Diagnostic]:
    cleanups = {_BUILTIN_CLEANUP} | {service.name for service in master.services
                                     if service.command == "cleanup" and service.type == "unix"} \
        if master is not None else {_BUILTIN_CLEANUP}
    found = []
    places = [(config, config.settings, None, None)]
    for service in master.services if master is not None else []:
        if service.overrides:
            places.append((config.with_overrides(service.overrides, f"{master.path}, line {service.line}"),
                           service.overrides, master.path, service.line))
    lines = _read_lines(master.path) if master is not None and len(places) > 1 else []
    for view, written, file, line in places:
        def where(name: str) -> tuple[str | None, int | None]:
            if file is not None:
                return file, _override_line(lines, line, name)
            setting = config.settings.get(name)
            return (setting.file, setting.line) if setting is not None else (None, None)
        if "cleanup_service_name" in written:
            name = view.get("cleanup_service_name").strip()
            if name not in cleanups:
                found.append(error(
                    f"cleanup_service_name = {name}: master.cf defines no `{name} unix ... cleanup` service, "
                    f"so every message handed to it would be refused with 451 4.3.0; define that service "
                    f"(e.g. `{name} unix n - n - 0 cleanup` with its -o overrides) or fix the name",
                    *where("cleanup_service_name"), "cleanup_service_name"))
        for parameter, (default, daemon, why) in _NO_SUCH_SERVICE.items():
            if parameter in written and view.get(parameter).strip() != default:
                found.append(warning(
                    f"{parameter} = {view.get(parameter).strip()} has no effect: mailferry runs no separate "
                    f"{daemon} service ({why}, with main.cf's settings); only the default `{default}` "
                    f"is accepted silently", *where(parameter), parameter))
    return found


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def _override_line(lines: list[str], start: int, name: str) -> int:
    """The line of the entry starting at `start` whose -o sets `name` (the entry's line if not found)."""
    for index in range(start - 1, len(lines)):
        text = lines[index]
        if index > start - 1 and text.strip() and not text[0].isspace() and not text.startswith("#"):
            break
        if f"{name}=" in text.replace(" ", ""):
            return index + 1
    return start
