"""`mailferry postqueue`: list or flush the mail queue, as Postfix's postqueue.

  postqueue -p           the mailq listing
  postqueue -j           the listing as JSON lines (Postfix 3.1+ members)
  postqueue -f           make all deferred mail due now, then wake the daemon
  postqueue -i QUEUE_ID  the same for one message
  postqueue -s SITE      not supported: mailferry has no per-site "fast flush"

The queue is changed directly, so a flush is not lost while the daemon is
down; but as Postfix does, postqueue then says that the mail system is down
and exits 69 (EX_UNAVAILABLE), since nothing is delivered now.
"""

from __future__ import annotations

from mailferry.cli.options import UsageError, parse_options
from mailferry.cli.output import Reporter
from mailferry.cli.queue_listing import (QueueUnavailable, existing_queue_directory, load_tool_config,
                                         open_existing_queue, print_queue)

USAGE = "usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site"
EX_UNAVAILABLE = 69
MODES = ("-f", "-i", "-j", "-p", "-s")


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    try:
        options, rest, config_dir = parse_options(argv, "fi:jps:", config_dir, USAGE, reporter)
    except UsageError as exc:
        reporter.fatal(str(exc))
        return EX_UNAVAILABLE
    modes = [flag for flag in options if flag in MODES]
    if len(modes) != 1 or rest:
        reporter.fatal(USAGE)
        return EX_UNAVAILABLE
    mode = modes[0]
    if mode in ("-p", "-j"):
        return print_queue(config_dir, reporter, as_json=mode == "-j", failure_exit=EX_UNAVAILABLE)
    if mode == "-s":
        reporter.fatal(f'Cannot flush mail queue for "{options["-s"]}": mailferry has no per-site '
                       f'"fast flush" service (ETRN, sendmail -qR); use postqueue -f')
        return EX_UNAVAILABLE
    return flush(config_dir, reporter, [options["-i"]] if mode == "-i" else None)


def flush(config_dir: str, reporter: Reporter, queue_ids: list[str] | None) -> int:
    """postqueue -f (queue_ids None: every deferred message) and -i; sendmail -q and -qI."""
    from mailferry import control
    from mailferry.queue import QueueError
    try:
        queue_directory = existing_queue_directory(load_tool_config(config_dir))
        store = open_existing_queue(queue_directory)
        if store is not None:
            try:
                store.flush(queue_ids)
            finally:
                store.close()
    except (QueueUnavailable, QueueError) as exc:
        reporter.fatal(str(exc))
        return EX_UNAVAILABLE
    if not control.notify(queue_directory, "flush"):
        reporter.warning("the queued mail is due now and goes out when the mail system starts")
        reporter.fatal("Cannot flush mail queue - mail system is down")
        return EX_UNAVAILABLE
    return 0
