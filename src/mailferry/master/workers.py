"""smtpd worker processes: more cores for intake.

Measured with bench/intake: one process ran one core flat out while the
other idled, so intake was bound by the event loop. Like Postfix's master,
which runs many smtpd processes, mailferry forks smtpd workers after
binding the listeners and giving up root; all of them accept on the same
sockets. Each worker has its own event loop and its own connection to the
queue (SQLite serialises their commits), and tells the master's queue
manager about new mail through a pipe. The master runs everything else.

How many: master.cf's maxproc of the smtpd services (`-` meaning
default_process_limit), but never more processes than CPUs.

A worker must not outlive the master: the kernel kills it when the master
dies (PR_SET_PDEATHSIG), even by kill -9, so a restart can bind the ports
again. Nothing acknowledged is lost that way: a 250 follows the commit.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def worker_count(master, config) -> int:
    """Processes that serve smtpd, the master included."""
    limits = []
    for service in master.services:
        if service.command == "smtpd" and service.type == "inet":
            limits.append(service.maxproc if service.maxproc is not None
                          else config.integer("default_process_limit"))
    if not limits:
        return 1
    wanted = max(limits) if 0 not in limits else os.cpu_count() or 1
    return max(1, min(wanted, os.cpu_count() or 1))


def spawn_workers(count: int, run_worker) -> tuple[list[int], int | None]:
    """Fork `count` workers, each running `run_worker(notify_fd, index)` and exiting.

    Returns their pids and the fd on which the master hears them (None if none)."""
    if count <= 0:
        return [], None
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    pids = []
    for index in range(1, count + 1):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _die_with_parent()
            code = 1
            try:
                code = run_worker(write_fd, index)
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(write_fd)
    return pids, read_fd


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def signal_workers(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


async def wait_for_workers(pids: list[int], timeout: float, log) -> None:
    """Reap the workers after SIGTERM; kill those that do not finish in time."""
    remaining = set(pids)
    deadline = asyncio.get_running_loop().time() + timeout
    while remaining and asyncio.get_running_loop().time() < deadline:
        for pid in list(remaining):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                remaining.discard(pid)
                if status:
                    log.warning("master", f"process smtpd pid {pid} exit status {os.waitstatus_to_exitcode(status)}")
        await asyncio.sleep(0.05)
    for pid in remaining:
        log.warning("master", f"process smtpd pid {pid} did not stop in {timeout:.0f} s: killed")
        signal_workers([pid], signal.SIGKILL)
        os.waitpid(pid, 0)


def reap_exited(pids: list[int], log, forget=lambda pid: None) -> list[int]:
    """Workers that died on their own are logged and forgotten (the master keeps serving);
    `forget(pid)` runs first, so whatever the log line tells has already been done."""
    alive = []
    for pid in pids:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            forget(pid)
            continue
        if done:
            forget(pid)
            log.warning("master", f"process smtpd pid {pid} exit status "
                                  f"{os.waitstatus_to_exitcode(status)}; the other processes keep serving")
        else:
            alive.append(pid)
    return alive
