"""`mailferry start | start-fg | stop | reload | status`, as `postfix start` and friends.

start      checks the configuration, then runs the daemon in the background
start-fg   the same in the foreground (for systemd Type=simple, and tests)
stop       SIGTERM, then waits: open sessions get 421, the queue stays intact
reload     SIGHUP: re-read main.cf, master.cf and tables, keep connections; refused (exit 1,
           the errors printed, the daemon not signalled) when `check` finds an error
status     is it running? exit 0 if so, 1 if not
"""

from __future__ import annotations

import os
import signal
import sys
import time

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

STOP_WAIT_SECONDS = 60


def run_start(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    return run(argv, config_dir, reporter, "start")


def run_start_fg(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    return run(argv, config_dir, reporter, "start-fg")


def run_stop(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    return run(argv, config_dir, reporter, "stop")


def run_reload(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    return run(argv, config_dir, reporter, "reload")


def run_status(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    return run(argv, config_dir, reporter, "status")


def run(argv: list[str], config_dir: str, reporter: Reporter, command: str) -> int:
    _, rest, config_dir = parse_options(argv, "", config_dir, f"usage: mailferry [-c DIR] {command}", reporter)
    if rest:
        return reporter.fatal(f"{command} takes no arguments")
    if command == "start-fg":
        from mailferry.master.server import run_foreground
        return run_foreground(config_dir)
    queue_directory = _queue_directory(config_dir)
    from mailferry.master.pidfile import running_pid
    pid = running_pid(queue_directory)
    if command == "start":
        if pid:
            return reporter.fatal(f"the mail system is already running: PID: {pid}")
        return _start_background(config_dir, queue_directory, reporter)
    if command == "status":
        if pid:
            reporter.info(f"the mail system is running: PID: {pid}")
            return 0
        reporter.info("the mail system is not running")
        return 1
    if not pid:
        return reporter.fatal("the mail system is not running")
    if command == "reload":
        refused = _reload_refused(config_dir, reporter)
        if refused:
            return refused
        os.kill(pid, signal.SIGHUP)
        reporter.info("refreshing the mail system")
        return 0
    os.kill(pid, signal.SIGTERM)
    reporter.info("stopping the mail system")
    return 0 if _wait_for_exit(queue_directory, STOP_WAIT_SECONDS) else reporter.fatal(
        f"PID {pid} is still running after {STOP_WAIT_SECONDS} s")


def _reload_refused(config_dir: str, reporter: Reporter) -> int:
    """Exit status 1, with the errors, when the new configuration would not load: the daemon is
    not signalled, and the running configuration stays (the daemon refuses such a reload too)."""
    from mailferry.diagnostics import ERROR
    from mailferry.policy.check import configuration_problems
    problems = [item for item in configuration_problems(config_dir) if item.severity == ERROR]
    if not problems:
        return 0
    for item in problems:
        reporter.diagnostic(item)
    return reporter.fatal(f"reload refused: {config_dir} has {len(problems)} error(s) (mailferry -c {config_dir} "
                          "check); the running configuration stays, fix them and reload again")


def _queue_directory(config_dir: str) -> str:
    from mailferry.config.config import load
    return load(config_dir).get("queue_directory")


def _start_background(config_dir: str, queue_directory: str, reporter: Reporter) -> int:
    """Fork a daemon, and report success only once it has written its pid file."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _become_daemon(write_end)
        from mailferry.master.server import run_foreground
        os._exit(run_foreground(config_dir, background=True))
    os.close(write_end)
    errors = b""
    while chunk := os.read(read_end, 4096):
        errors += chunk  # the child's stderr until it detaches: start-up errors
    os.close(read_end)
    from mailferry.master.pidfile import running_pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if running_pid(queue_directory):
            reporter.info("starting the mail system")
            return 0
        if errors:
            break
        time.sleep(0.05)
    sys.stderr.write(errors.decode("utf-8", "replace"))
    return reporter.fatal("the mail system did not start")


def _become_daemon(error_pipe: int) -> None:
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    # Start-up errors go to the parent through the pipe; once the daemon runs, it logs to maillog_file.
    os.dup2(error_pipe, 2)
    os.close(error_pipe)


def _wait_for_exit(queue_directory: str, seconds: float) -> bool:
    from mailferry.master.pidfile import running_pid
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not running_pid(queue_directory):
            return True
        time.sleep(0.1)
    return False
