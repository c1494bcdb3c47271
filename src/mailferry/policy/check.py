"""`mailferry check` for the restriction lists: what would answer 451 4.3.5 at run time.

An unknown restriction name (a typo such as `permit_mynetwork`) makes every
recipient that reaches it get `451 4.3.5 Server configuration error`; a
restriction that needs an argument and has none, too. check says so first,
naming the parameter's file and line.
"""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.diagnostics import Diagnostic, error
from mailferry.policy.restrictions import HANDLERS
from mailferry.policy.settings import ARGUMENT_RESTRICTIONS, STAGES, TABLE_RESTRICTIONS


def restriction_problems(config: Config) -> list[Diagnostic]:
    classes = {name.lower() for name in config.list("smtpd_restriction_classes")}
    found: list[Diagnostic] = []
    for parameter in (*STAGES, *config.list("smtpd_restriction_classes")):
        setting = config.settings.get(parameter)
        where = (setting.file, setting.line) if setting is not None else (None, None)
        for problem in _list_problems(config.list(parameter), classes):
            found.append(error(f"parameter {parameter}: {problem}; clients would get 451 4.3.5 Server "
                               "configuration error (see docs/restrictions.md)", *where, parameter))
    return found


def _list_problems(restrictions: list[str], classes: set[str]) -> list[str]:
    problems = []
    index = 0
    while index < len(restrictions):
        name = restrictions[index].lower()
        if name in TABLE_RESTRICTIONS or name in ARGUMENT_RESTRICTIONS:
            if index + 1 >= len(restrictions):
                problems.append(f"restriction {name} needs an argument")
            index += 2
            continue
        if ":" not in name and name != "warn_if_reject" and name not in HANDLERS and name not in classes:
            problems.append(f"unknown smtpd restriction \"{restrictions[index]}\"")
        index += 1
    return problems
