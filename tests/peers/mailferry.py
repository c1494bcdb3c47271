"""The real mailferry daemon, `mailferry -c DIR/etc start-fg`, with its own config, queue and log.

Layout under `directory`: etc/ (main.cf, master.cf), queue/, mailferry.log, stderr.log (start-fg's
own output). The integration tests make one per test (tests/integration/conftest.py); bench/relay
and bench/intake make one per bench and restart it for every round.

Its environment is the caller's, scrubbed: MAILFERRY_QUEUE_BACKEND is removed (the queue is always
the durable SQLite one, whatever the caller's shell says), and MAILFERRY_NAMESERVERS is set to
`nameservers`, "none" (DNS turned off) unless a test runs its own DNS server, so that nothing the
daemon resolves reaches the real network. `settings()` records what it ran with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.peers import PeerError, check_loopback, progress, stop_process, tail_file, wait_for_port
from tests.peers.postfix import parse_queue_summary

NO_DNS = "none"  # MAILFERRY_NAMESERVERS=none: DNS is off, every lookup fails at once (temporarily)
# Removed from the daemon's environment: a RAM queue would make every figure and crash test a lie.
SCRUBBED_VARIABLES = ("MAILFERRY_QUEUE_BACKEND",)


def main_cf_text(settings: dict[str, str]) -> str:
    """main.cf from {name: value}; an empty value is written `name =`."""
    return "".join(f"{name} = {value}\n" if value else f"{name} =\n" for name, value in settings.items())


def private_settings(directory: Path, mail_owner: str, **settings: str) -> dict[str, str]:
    """main.cf settings every private daemon here starts from: loopback only, IPv4, its own queue
    and log under `directory` (the layout MailferryDaemon expects), `mail_owner`; then `settings`,
    which may override them."""
    directory = Path(directory)
    return {"inet_interfaces": "loopback-only", "inet_protocols": "ipv4",
            "queue_directory": str(directory / "queue"), "maillog_file": str(directory / "mailferry.log"),
            "mail_owner": mail_owner, **settings}


class MailferryDaemon:
    """`mailferry -c DIR/etc start-fg` listening on 127.0.0.1:`port`.

    `program` is how to run mailferry (default: this interpreter's `-m mailferry`; the benches
    give the console script). `banner=True` waits for the 220 greeting at start, not only for the
    listening socket: a bench must not start its clock before a worker answers, while a test that
    counts sessions in the log must not see the probe's.
    """

    def __init__(self, directory: Path, main_cf: str, master_cf: str, port: int, nameservers: str = "",
                 program: list[str] | None = None, banner: bool = False):
        self.directory = Path(directory)
        # Never the machine's resolver: a DNS server the test runs, or none at all.
        self.nameservers = nameservers or NO_DNS
        for server in self.nameservers.replace(",", " ").split():
            if server.lower() != NO_DNS:
                check_loopback(server.strip("[").split("]")[0].rsplit(":", 1)[0])
        self.program = list(program or [sys.executable, "-m", "mailferry"])
        self.banner = banner
        self.config_dir = self.directory / "etc"
        self.queue_directory = self.directory / "queue"
        self.log_path = self.directory / "mailferry.log"
        self.stderr_path = self.directory / "stderr.log"
        self.port = port
        self.process: subprocess.Popen | None = None
        self.config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.write_config(main_cf, master_cf)

    @property
    def env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in SCRUBBED_VARIABLES}
        env["MAILFERRY_NAMESERVERS"] = self.nameservers
        return env

    def write_config(self, main_cf: str, master_cf: str) -> None:
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(master_cf)

    def command(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run `mailferry -c DIR/etc ARGS...` to completion (text output captured)."""
        kwargs.setdefault("env", self.env)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([*self.program, "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, **kwargs)

    def start(self, timeout: float = 20.0) -> "MailferryDaemon":
        """start-fg in its own session; return once the port answers and the pid file exists."""
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen([*self.program, "-c", str(self.config_dir), "start-fg"],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                            env=self.env, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", self.port, timeout, process=self.process, log=self.stderr_path,
                          banner=self.banner, what="mailferry start-fg")
            # The port answers as soon as it is bound; the daemon is ready once its pid file is written.
            deadline = time.monotonic() + timeout
            while not (self.queue_directory / "pid" / "master.pid").exists():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise PeerError("no pid file")
                time.sleep(0.02)
        except PeerError as error:
            self.stop()
            raise PeerError(f"mailferry did not start: {error}\n{self.log_tail(6)}") from None
        return self

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM start-fg and wait (SIGKILL after `timeout`); its exit status."""
        if self.process is None:
            return 0
        running = self.process.poll() is None
        status = stop_process(self.process, timeout)
        if running and status not in (0, None):
            progress(f"mailferry start-fg exited with status {status} on SIGTERM")
        return status

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def fresh_queue(self) -> None:
        """Delete the queue directory and the logs (the daemon must be stopped)."""
        if self.process is not None and self.process.poll() is None:
            raise PeerError("fresh_queue: mailferry is running")
        for path in (self.log_path, self.stderr_path):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.queue_directory, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_tail(self, lines: int = 4) -> str:
        return "\n".join(text for text in (tail_file(self.stderr_path, lines), tail_file(self.log_path, lines))
                         if text)

    def wait_for_log(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} not in the log after {timeout} s:\n{self.log()[-3000:]}\n"
                             f"stderr:\n{tail_file(self.stderr_path, 40)}")

    def mailq(self) -> str:
        return self.command("mailq").stdout

    def queue_summary(self) -> tuple[int, str]:
        """`mailferry mailq`: the message count and its last line."""
        out = self.command("mailq", timeout=120)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise PeerError(f"mailferry mailq exited {out.returncode}: "
                            f"{(out.stderr or out.stdout).strip()[-400:]}")
        return parse_queue_summary(lines[-1]), lines[-1]

    def settings(self) -> dict:
        """What it runs with: `mailferry postconf -n` and `-M`, as it reads its configuration, and
        the environment it was given (the variables set and the ones scrubbed)."""
        def run(*flags: str) -> list[str]:
            out = self.command("postconf", *flags, timeout=120)
            return (out.stdout or out.stderr).strip().splitlines()
        return {"postconf_n": run("-n"), "postconf_M": run("-M"),
                "environment": {"MAILFERRY_NAMESERVERS": self.nameservers},
                "environment_removed": list(SCRUBBED_VARIABLES)}

    def version(self, repo: Path | None = None) -> str:
        return mailferry_version(self.program, repo)


def mailferry_version(program: list[str], repo: Path | None = None) -> str:
    """mailferry.__version__ through the interpreter that runs `program` (a console script's
    #! line, or the interpreter itself), plus the repository's commit and "+uncommitted changes in
    src/" when its work tree differs from it (read-only git)."""
    version = "unknown"
    interpreter = program[0]
    try:
        first = Path(program[0]).read_bytes()[:200].split(b"\n")[0]
        if first.startswith(b"#!"):
            interpreter = first[2:].decode().strip()
        out = subprocess.run([interpreter, "-c", "import mailferry; print(mailferry.__version__)"],
                             capture_output=True, text=True, timeout=30)
        version = out.stdout.strip() or version
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        pass
    if repo is None:
        return version
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:
        return version
    return f"{version} ({commit}{' +uncommitted changes in src/' if dirty else ''})"
