"""`mailferry relay-check [-f SENDER] [-t TRANSPORT] [NEXTHOP]`: mailferry's own addition (Postfix has none).

Connects to relayhost (or NEXTHOP, written as relayhost is: `[host]:port`, or `host` for an
MX lookup) exactly as delivery would, authenticates, says QUIT, and prints what it found:
the certificate and whether it verified, the AUTH mechanisms and which are allowed, the
password entry that matched (never the password), and, for each problem, the one change
to make. Exit status 0 when delivery through this relay would work, 1 when not, 2 on a
usage error. docs/relay-check.md.
"""

from __future__ import annotations

import asyncio
import os

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry [-c CONFIG_DIR] relay-check [-f SENDER] [-t TRANSPORT] [NEXTHOP]"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    options, rest, config_dir = parse_options(argv, "f:t:", config_dir, USAGE, reporter)
    if len(rest) > 1:
        return reporter.fatal(f"unexpected arguments {' '.join(rest[1:])}\n{USAGE}")
    from mailferry.config.config import load, master_cf_path
    from mailferry.config.mastercf import read_master_cf
    from mailferry.delivery.relay_check import relay_check
    try:
        config = load(config_dir)
        nexthop = rest[0] if rest else config.get("relayhost").strip()
    except (OSError, ValueError) as problem:
        return reporter.fatal(f"cannot read the configuration in {config_dir}: {problem}")
    if not nexthop:
        return reporter.fatal("relayhost is empty and no NEXTHOP was given: set e.g. "
                              "\"relayhost = [smtp.gmail.com]:587\" in main.cf, or name the next hop")
    path = master_cf_path(config_dir)
    master = read_master_cf(path) if os.path.exists(path) else None
    report = asyncio.run(relay_check(config, nexthop, sender=options.get("-f", ""),
                                     transport=options.get("-t", "smtp"), master=master))
    print(render(report))
    return 0 if report.ok else 1


def render(report) -> str:
    lines = [f"relay-check {report.nexthop}"]
    shown_certificates = False
    for topic, text in report.facts:
        if topic == "certificate" and not shown_certificates:
            shown_certificates = True
            for index, certificate in enumerate(report.certificates):
                lines.append(f"  certificate {index}: subject {certificate.subject}")
                lines.append(f"    issuer {certificate.issuer}")
                lines.append(f"    valid {certificate.not_before} to {certificate.not_after}")
                lines.append(f"    names {', '.join(certificate.names) or '(none)'}")
            if len(report.certificates) == 1:
                lines.append("    (the server's own certificate; Python's ssl shows the rest of the chain "
                             "only from 3.13 on)")
        lines.append(f"  {topic}: {text}")
    for problem in report.problems:
        lines.append(f"{problem.severity}: {problem.text}")
        lines.append(f"  fix: {problem.advice}")
    if report.ok:
        lines.append("result: OK, delivery through this relay would work"
                     + (" (authenticated)" if report.authenticated else ""))
    else:
        lines.append("result: FAILED, delivery through this relay would not work")
    return "\n".join(lines)
