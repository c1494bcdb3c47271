"""`mailferry mailq`: list the mail queue, as Postfix's mailq (sendmail -bp, postqueue -p).

Exit status as Postfix's mailq: 0, or 75 (EX_TEMPFAIL) when the queue
cannot be read, since Postfix's mailq is its sendmail.
"""

from __future__ import annotations

import getopt

from mailferry.cli.output import Reporter
from mailferry.cli.queue_listing import print_queue

USAGE = "usage: mailferry mailq [-C CONFIG_DIR] [-v]"
EX_TEMPFAIL = 75


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    try:
        pairs, rest = getopt.getopt(argv, "C:c:v")
    except getopt.GetoptError as exc:
        reporter.fatal(f"{exc}\n{USAGE}")
        return EX_TEMPFAIL
    if rest:
        reporter.fatal(f"display queue mode requires no recipient\n{USAGE}")
        return EX_TEMPFAIL
    for flag, value in pairs:
        if flag in ("-C", "-c"):
            config_dir = value
        else:
            reporter.verbose += 1
    return print_queue(config_dir, reporter, as_json=False, failure_exit=EX_TEMPFAIL)
