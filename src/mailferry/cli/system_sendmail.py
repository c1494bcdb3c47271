"""`mailferry system-sendmail install|remove|status`: mailferry-sendmail as the system's
/usr/sbin/sendmail, mailq and newaliases (mailferry's own command; docs/migration.md).

So that `mail`, cron, and every program that runs /usr/sbin/sendmail hand their mail to
mailferry. It is reversible, and it uses what the system offers for replacing a file
another package owns:

- alternatives, where the system manages /usr/sbin/sendmail through them (the `mta`
  group of Red Hat-style systems): mailferry-sendmail is added to that group and set;
  `remove` takes it out again and the group returns to automatic mode;
- otherwise, on Debian (where every MTA package ships /usr/sbin/sendmail itself and the
  packages conflict, so there is no alternative for it), a local dpkg diversion per
  file: `dpkg-divert --local --rename --divert PATH.before-mailferry --add PATH` moves the
  packaged file aside (and keeps package upgrades there), then PATH becomes a symbolic
  link to mailferry-sendmail. `remove` deletes the link and removes the diversion,
  which moves the packaged file back.

mailferry-sendmail knows by the name it was run as whether to act as sendmail, mailq
or newaliases. The configuration it reads: -C, else MAIL_CONFIG, else
MAILFERRY_CONFIG_DIR, else /etc/mailferry.

    system-sendmail install [--program PATH]   PATH: default, the mailferry-sendmail beside this
                                                interpreter (the one scripts/setup installed)
    system-sendmail remove
    system-sendmail status                      exit 0 when every link is mailferry's, 1 if not

Needs root for install and remove.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry system-sendmail install [--program PATH] | remove | status"
# The programs Postfix's package (and every Debian MTA) provides, and the alternatives
# slave names Red Hat's `mta` group gives them.
LINKS = (("/usr/sbin/sendmail", "mta"), ("/usr/bin/mailq", "mta-mailq"), ("/usr/bin/newaliases", "mta-newaliases"))
DIVERTED_SUFFIX = ".before-mailferry"
ALTERNATIVES_GROUP = "mta"
ALTERNATIVES_PRIORITY = "90"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    options, rest, _ = parse_options(argv, "", config_dir, USAGE, reporter, ("program=",))
    if len(rest) != 1 or rest[0] not in ("install", "remove", "status"):
        return reporter.fatal(USAGE)
    program = os.path.abspath(options.get("--program") or os.path.join(os.path.dirname(sys.executable),
                                                                        "mailferry-sendmail"))
    action = rest[0]
    if action == "status":
        return status(program, reporter)
    if os.geteuid() != 0:
        return reporter.fatal(f"system-sendmail {action} changes /usr/sbin/sendmail: run it as root")
    if action == "install":
        if not os.access(program, os.X_OK):
            return reporter.fatal(f"{program}: not an executable mailferry-sendmail; give --program PATH")
        return install(program, reporter)
    return remove(program, reporter)


def _uses_alternatives() -> bool:
    """Does the system manage /usr/sbin/sendmail through an `mta` alternatives group?"""
    tool = shutil.which("update-alternatives") or shutil.which("alternatives")
    if tool is None:
        return False
    query = subprocess.run([tool, "--query", ALTERNATIVES_GROUP], capture_output=True, text=True)
    return query.returncode == 0 and "Link: /usr/sbin/sendmail" in query.stdout


def install(program: str, reporter: Reporter) -> int:
    if _uses_alternatives():
        command = ["update-alternatives", "--install", "/usr/sbin/sendmail", ALTERNATIVES_GROUP, program,
                   ALTERNATIVES_PRIORITY]
        for path, slave in LINKS[1:]:
            command += ["--slave", path, slave, program]
        _run(command)
        _run(["update-alternatives", "--set", ALTERNATIVES_GROUP, program])
        reporter.info(f"alternatives group {ALTERNATIVES_GROUP}: {program} installed and selected")
        return 0
    if shutil.which("dpkg-divert") is None:
        return reporter.fatal("neither an mta alternatives group nor dpkg-divert exists here: link "
                              f"/usr/sbin/sendmail to {program} yourself (docs/migration.md)")
    for path, _ in LINKS:
        if _is_our_link(path, program):
            reporter.info(f"{path}: already {program}")
            continue
        _run(["dpkg-divert", "--local", "--rename", "--divert", path + DIVERTED_SUFFIX, "--add", path])
        if os.path.lexists(path):
            # Not a packaged file (a diversion moved that): something else put it there.
            return reporter.fatal(f"{path} is still there after the diversion and belongs to no package; "
                                  "move it away yourself and run install again")
        os.symlink(program, path)
        reporter.info(f"{path} -> {program} (the packaged file, if any, is kept as {path}{DIVERTED_SUFFIX})")
    return 0


def remove(program: str, reporter: Reporter) -> int:
    if _uses_alternatives():
        _run(["update-alternatives", "--remove", ALTERNATIVES_GROUP, program])
        reporter.info(f"alternatives group {ALTERNATIVES_GROUP}: {program} removed")
        return 0
    for path, _ in LINKS:
        if os.path.islink(path) and "mailferry" in os.path.basename(os.readlink(path)):
            os.unlink(path)
        if _diverted_by_us(path):
            _run(["dpkg-divert", "--local", "--rename", "--divert", path + DIVERTED_SUFFIX, "--remove", path])
            reporter.info(f"{path}: restored" + ("" if os.path.lexists(path) else " (no packaged file)"))
    return 0


def status(program: str, reporter: Reporter) -> int:
    ours = 0
    for path, _ in LINKS:
        target = os.path.realpath(path) if os.path.lexists(path) else "(missing)"
        mine = _is_our_link(path, program) or "mailferry" in os.path.basename(target)
        ours += mine
        diverted = " (packaged file diverted to " + path + DIVERTED_SUFFIX + ")" if _diverted_by_us(path) else ""
        print(f"{path}: {'mailferry' if mine else 'not mailferry'}: {target}{diverted}")
    return 0 if ours == len(LINKS) else 1


def _is_our_link(path: str, program: str) -> bool:
    return os.path.islink(path) and os.path.realpath(path) == os.path.realpath(program)


def _diverted_by_us(path: str) -> bool:
    if shutil.which("dpkg-divert") is None:
        return False
    found = subprocess.run(["dpkg-divert", "--truename", path], capture_output=True, text=True)
    return found.stdout.strip() == path + DIVERTED_SUFFIX


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
