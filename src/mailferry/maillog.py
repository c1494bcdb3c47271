"""Postfix-format log lines: `Nov 25 02:05:09 host mailferry/smtpd[123]: text`.

Written to `maillog_file` when it is set, else to syslog for a daemon in the
background (as Postfix logs by default) or standard error in the foreground,
so that `pflogsumm --syslog-name=mailferry` and every grep an administrator
knows keep working. Lines are collected in memory and written a few times a
second (and at once for warnings, reopen and close), each batch in a single
write() to a file opened with O_APPEND: several processes (the smtpd
workers) share one log without ever splitting a line. Formatting and
writing one line must stay cheap, since each message logs about six.
"""

from __future__ import annotations

import os
import socket
import sys
import syslog
import time
from typing import Protocol


# syslog_facility's names, as Postfix's msg_syslog.c knows them on Linux (LOG_FTP is 11 there;
# Python's syslog module does not name it). BSD's "security" has no Linux facility.
FACILITIES = {
    "auth": syslog.LOG_AUTH, "authpriv": syslog.LOG_AUTHPRIV, "cron": syslog.LOG_CRON,
    "daemon": syslog.LOG_DAEMON, "ftp": 11 << 3, "kern": syslog.LOG_KERN, "lpr": syslog.LOG_LPR,
    "mail": syslog.LOG_MAIL, "news": syslog.LOG_NEWS, "syslog": syslog.LOG_SYSLOG, "user": syslog.LOG_USER,
    "uucp": syslog.LOG_UUCP, **{f"local{n}": getattr(syslog, f"LOG_LOCAL{n}") for n in range(8)},
}


def facility(name: str) -> int | None:
    """syslog_facility's value as a syslog facility; None for a name Linux does not have."""
    return FACILITIES.get(name.strip().lower())


class Log(Protocol):
    """What a service needs of the log: Postfix's `program[pid]: text` lines."""

    def line(self, program: str, text: str) -> None: ...

    def warning(self, program: str, text: str) -> None: ...


class MailLog:
    def __init__(self, path: str = "", syslog_name: str = "mailferry", hostname: str | None = None,
                 to_syslog: bool = False, syslog_facility: int = syslog.LOG_MAIL):
        self.path = path
        self.syslog_facility = syslog_facility
        self.to_syslog = to_syslog and not path
        self._syslog_ident = ""
        self.syslog_name = syslog_name
        self.hostname = (hostname or socket.gethostname()).split(".")[0]
        self.pid = os.getpid()
        self._fd = self._open()
        self._pending: list[str] = []
        self._second = -1
        self._prefix = ""

    def _open(self) -> int:
        if not self.path:
            return sys.stderr.fileno()
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def after_fork(self) -> None:
        """A forked worker logs under its own pid."""
        self.pid = os.getpid()
        self._pending = []

    def reopen(self) -> None:
        """After logrotate moved the file away (and on reload)."""
        self.flush()
        if self.path:
            try:
                fd = self._open()
            except OSError:
                return  # keep writing where we can
            os.close(self._fd)
            self._fd = fd

    def line(self, program: str, text: str) -> None:
        self.line_as(self.syslog_name, program, text)

    def line_as(self, syslog_name: str, program: str, text: str) -> None:
        """A line under another syslog_name: a master.cf service's `-o syslog_name=...`."""
        if "\n" in text or "\r" in text:
            # One event, one line: a line end inside an address or a peer's text must not
            # forge a log line of its own (syslog writes them as #012 and #015).
            text = text.replace("\r", "#015").replace("\n", "#012")
        if self.to_syslog:
            self._syslog(syslog_name, program, text)
            return
        now = int(time.time())
        if now != self._second:
            self._second = now
            stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
            self._prefix = f"{stamp[:4]}{int(stamp[4:6]):>2}{stamp[6:]} {self.hostname} "
        self._pending.append(f"{self._prefix}{syslog_name}/{program}[{self.pid}]: {text}\n")

    def _syslog(self, syslog_name: str, program: str, text: str) -> None:
        ident = f"{syslog_name}/{program}"
        if ident != self._syslog_ident:
            syslog.openlog(ident, syslog.LOG_PID, self.syslog_facility)
            self._syslog_ident = ident
        syslog.syslog(syslog.LOG_INFO, text)

    def warning(self, program: str, text: str) -> None:
        self.line(program, f"warning: {text}")
        self.flush()

    def error(self, program: str, text: str) -> None:
        self.line(program, f"error: {text}")
        self.flush()

    def fatal(self, program: str, text: str) -> None:
        self.line(program, f"fatal: {text}")
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8", "surrogateescape")
        self._pending = []
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a full disk must not stop mail; the queue's own errors are reported to clients

    def close(self) -> None:
        self.flush()
        if self.path:
            os.close(self._fd)


class MemoryLog:
    """A Log kept in memory: (program, text) for each line, the text as MailLog would write it
    after `program[pid]: ` (a warning's with its "warning: "). For what reads back what a service
    logged, such as postconf's relay check, and for the tests."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def line(self, program: str, text: str) -> None:
        self.lines.append((program, text))

    def warning(self, program: str, text: str) -> None:
        self.lines.append((program, f"warning: {text}"))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def warnings(self) -> list[str]:
        return [text for text in self.texts() if text.startswith("warning: ")]


class ServiceLog:
    """The log as one master.cf service writes it: under the service's own syslog_name
    (`-o syslog_name=postfix/submission` gives `postfix/submission/smtpd[pid]`)."""

    def __init__(self, log: MailLog, syslog_name: str):
        self.log = log
        self.syslog_name = syslog_name

    def line(self, program: str, text: str) -> None:
        self.log.line_as(self.syslog_name, program, text)

    def warning(self, program: str, text: str) -> None:
        self.line(program, f"warning: {text}")
        self.log.flush()


def for_service(log: Log, syslog_name: str) -> Log:
    """`log` itself unless the service logs under a syslog_name of its own."""
    if isinstance(log, MailLog) and syslog_name and syslog_name != log.syslog_name:
        return ServiceLog(log, syslog_name)
    return log
