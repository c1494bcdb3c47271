"""The operator's table of parameters, docs/parameters.md.

Regenerate the page after changing the table or a status:

    python -m mailferry.config.paramdocs > docs/parameters.md

A unit test compares the page with render_markdown(), so it cannot go stale.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable

from mailferry.config import parameters_data
from mailferry.config.parameters import (
    COMPUTED,
    IMPLEMENTED,
    NO_EFFECT,
    NOT_YET,
    Parameter,
    parameters,
    postfix_default,
)

STATUS_LABELS = {
    IMPLEMENTED: "supported",
    NO_EFFECT: "accepted without effect",
    NOT_YET: "not yet",
}

# How mailferry computes the defaults that depend on the host or process.
COMPUTED_RULES = {
    "myhostname": "The host name from gethostname(). When that has no dot, "
                  "`.$mydomain` is appended, or `.localdomain` when mydomain is not set either.",
    "mydomain": "`$myhostname` without its first label; `localdomain` when nothing is left.",
    "mynetworks": "The loopback networks `127.0.0.0/8` and `[::1]/128`, plus the host's own "
                  "addresses. With `mynetworks_style = host` (the default) each address alone; "
                  "with `subnet`, the whole network of its interface. `class` is treated as "
                  "`subnet`: classful networks have been obsolete since CIDR.",
    "process_id": "The process ID of the running mailferry process.",
    "process_name": "The name of the running mailferry program.",
    "service_name": "The master.cf name of the service doing the work; empty outside a service.",
}

INTRO = """\
# Parameters

mailferry reads Postfix's `main.cf`. This page lists every parameter of
Postfix {version}, as `postconf -d` prints them with Postfix's stock
master.cf, with its default and what mailferry does with it. Each parameter
has one of three statuses:

- **supported**: mailferry does what Postfix does with it.
- **accepted without effect**: mailferry accepts it silently, and it makes no
  difference to mailferry: install paths, and tuning of Postfix's own
  internals that mailferry does not have.
- **not yet**: a real Postfix setting that mailferry does not act on yet.
  Setting it gets a warning that names the file and line and says the
  setting has no effect yet.

A name that is not a Postfix parameter, and that no other setting refers to
as `$name`, gets Postfix's `unused parameter` warning, naming the file and
line. It is usually a typo.

Defaults are shown raw, as `postconf -d` prints them: `$name` refers to
another parameter. Where mailferry's default differs from Postfix's, both are
shown. Kinds: `bool` (yes or no), `time` (a number with an optional unit
letter s, m, h, d or w; the unit in brackets is the one a bare number is in),
`size` (a number of bytes), `int`, `str`, and `list` (separated by commas or
whitespace)."""


def render_markdown() -> str:
    table = parameters()
    sections = [
        INTRO.format(version=parameters_data.POSTFIX_VERSION),
        status_section(table, IMPLEMENTED, "Supported"),
        status_section(table, NO_EFFECT, "Accepted without effect"),
        not_yet_section(table),
        differences_section(),
        computed_section(),
        per_transport_section(),
        "## All parameters\n\n" + parameter_table(table.values()),
    ]
    return "\n\n".join(sections) + "\n"


def status_section(table: dict[str, Parameter], status: str, title: str) -> str:
    chosen = [parameter for parameter in table.values() if parameter.status == status]
    return f"## {title} ({len(chosen)})\n\n" + parameter_table(chosen)


def not_yet_section(table: dict[str, Parameter]) -> str:
    names = [name for name, parameter in table.items() if parameter.status == NOT_YET]
    listing = ", ".join(code(name) for name in names)
    return (f"## Not yet ({len(names)})\n\n"
            "Their defaults and kinds are in the full table below.\n\n"
            + textwrap.fill(listing, width=79, break_long_words=False, break_on_hyphens=False))


def differences_section() -> str:
    table = parameters()
    rows = [
        [code(name), default_cell(theirs), default_cell(table[name].default), why]
        for name, (theirs, why) in parameters_data.POSTFIX_DEFAULTS_WHERE_DIFFERENT.items()
    ]
    return ("## Defaults that differ from Postfix\n\n"
            "The defaults that depend on `compatibility_level` follow it as Postfix's do; "
            "unset, mailferry's level is 3.6 where Postfix's is 0 (docs/validation.md).\n\n"
            + markdown_table(["parameter", "Postfix default", "mailferry default", "why"], rows))


def computed_section() -> str:
    rows = [[code(name), COMPUTED_RULES[name]] for name in sorted(COMPUTED)]
    return ("## Computed defaults\n\n"
            "These defaults depend on the host or on the running process; "
            "mailferry computes them when it starts.\n\n"
            + markdown_table(["parameter", "default"], rows))


def per_transport_section() -> str:
    rows = [
        [code(suffix), default_cell(default), kind_cell(kind, unit), ", ".join(commands)]
        for suffix, kind, unit, default, commands in parameters_data.PER_TRANSPORT
    ]
    stock = ", ".join(code(service) for service in parameters_data.STOCK_DELIVERY_SERVICES)
    return ("## Per-transport parameters\n\n"
            "For a service named in master.cf, Postfix also accepts "
            "`<service>_<suffix>`: a service `relay` gives "
            "`relay_destination_concurrency_limit`. Which suffixes apply depends "
            "on the command the service runs. The full table below includes them "
            f"for the services of Postfix's stock master.cf ({stock}).\n\n"
            + markdown_table(["suffix", "default", "kind", "for services running"], rows))


def parameter_table(chosen: Iterable[Parameter]) -> str:
    rows = [parameter_row(parameter) for parameter in chosen]
    return markdown_table(["parameter", "Postfix default", "mailferry default", "status", "kind"], rows)


def parameter_row(parameter: Parameter) -> list[str]:
    theirs = postfix_default(parameter)
    ours = "" if parameter.default == theirs else default_cell(parameter.default)
    return [
        code(parameter.name),
        default_cell(theirs),
        ours,
        STATUS_LABELS[parameter.status],
        kind_cell(parameter.kind, parameter.time_unit),
    ]


def default_cell(default: str | None) -> str:
    if default is None:
        return "*computed*"
    if default == "":
        return "*empty*"
    return code(default)


def kind_cell(kind: str, time_unit: str) -> str:
    return f"{kind} ({time_unit})" if time_unit else kind


def code(text: str) -> str:
    """A Markdown code span that survives backticks, and pipes in tables."""
    longest_run = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest_run + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}".replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
