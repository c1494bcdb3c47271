"""`mailferry [-c CONFIG_DIR] COMMAND [ARGS...]`.

Each command lives in its own module and is imported only when it runs, so
that quick commands such as `postmap -q` start fast.
"""

from __future__ import annotations

import os
import sys

from mailferry.cli.options import UsageError, default_config_dir
from mailferry.cli.output import Reporter

# command name → (module under mailferry.cli, one-line help)
COMMANDS = {
    "check": ("check", "check main.cf, master.cf and the files they name; exit 1 on errors"),
    "postconf": ("postconf", "show parameters: -n (set in main.cf), -d (defaults), -M (master.cf), NAME..."),
    "postmap": ("postmap", "build an indexed table, or query one with -q KEY; -s dumps it"),
    "newaliases": ("newaliases", "build the alias_database tables from their aliases(5) files"),
    "sendmail": ("sendmail", "submit a message from standard input (as mailferry-sendmail); -bp lists the queue"),
    "mailq": ("mailq", "list the mail queue, as Postfix's mailq"),
    "postqueue": ("postqueue", "-p list the queue, -j as JSON, -f flush it, -i QUEUE_ID flush one message"),
    "postsuper": ("postsuper", "-d/-h/-H/-r QUEUE_ID|ALL|- [queue...]: delete, hold, release, requeue"),
    "pw": ("pw", "make a password hash for smtpd_sasl_type = table (-s SCHEME -p PASSWORD -u USER; -t HASH checks)"),
    "relay-check": ("relay_check", "[NEXTHOP]: connect and authenticate to relayhost as delivery would, and explain (mailferry's own)"),
    "oauth2": ("oauth2", "get an OAuth2 refresh token (device or loopback flow) and write the XOAUTH2 entry"),
    "trace": ("trace", "ADDRESS [--sender S] [--client ADDR] [--mx] [--json]: where would it go, and why"),
    "import-postfix": ("import_postfix", "[--force] [POSTFIX_DIR]: copy a Postfix configuration here, "
                       "rebuild its tables, report (mailferry's own)"),
    "system-sendmail": ("system_sendmail", "install | remove | status: mailferry-sendmail as /usr/sbin/sendmail, "
                        "mailq, newaliases (mailferry's own)"),
    "start": ("lifecycle", "check the configuration and start the mail system in the background"),
    "start-fg": ("lifecycle", "the same, in the foreground (for systemd and tests)"),
    "stop": ("lifecycle", "stop the mail system: open sessions get 421, the queue stays intact"),
    "reload": ("lifecycle", "re-read main.cf, master.cf and tables without dropping connections"),
    "status": ("lifecycle", "is the mail system running? exit 0 if so"),
}

USAGE = "usage: mailferry [-c CONFIG_DIR] [-v] COMMAND [ARGS...]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config_dir = default_config_dir()
    verbose = 0
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "-c" and args:
            config_dir = args.pop(0)
        elif option.startswith("-c") and len(option) > 2:
            config_dir = option[2:]
        elif option == "-v":
            verbose += 1
        elif option in ("-h", "--help"):
            print(_help())
            return 0
        else:
            print(f"mailferry: unknown option {option}\n{USAGE}", file=sys.stderr)
            return 2
    if not args:
        print(_help(), file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    # The daemon and the files main.cf names ($config_directory/queue) must not depend on the cwd.
    config_dir = os.path.abspath(config_dir)
    if command in COMMANDS:
        # __import__, not importlib.import_module: importing importlib (and warnings) would cost
        # `postmap -q` about half a millisecond more of start-up.
        name = f"mailferry.cli.{COMMANDS[command][0]}"
        __import__(name)
        module = sys.modules[name]
        reporter = Reporter(f"mailferry/{command}", verbose)
        try:
            # A module serving several commands has run_<command> (lifecycle: run_start, run_stop...).
            runner = getattr(module, "run_" + command.replace("-", "_"), module.run)
            return runner(rest, config_dir, reporter)
        except UsageError as exc:
            return reporter.fatal(str(exc))
    print(f"mailferry: unknown command {command!r}\n{_help()}", file=sys.stderr)
    return 2


def _help() -> str:
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "CONFIG_DIR (main.cf, master.cf): -c, else $MAIL_CONFIG, else $MAILFERRY_CONFIG_DIR, "
              "else /etc/mailferry."]
    return "\n".join(lines)
