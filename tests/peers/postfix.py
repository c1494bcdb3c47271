"""A private Postfix instance: its own config, queue, data directory and log, on ports of your
choice, nothing chrooted, started with `postfix -c DIR start` (needs root). See
shared/notes/test-peers.md for the background.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.peers import PeerError, make_traversable
from tests.peers.processes import alive, descendants

POSTFIX = "/usr/sbin/postfix"
POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
POSTCONF = "/usr/sbin/postconf"

MASTER_CF_BASE = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
{qmgr}qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix instance under `root` (config in root/pf-etc, queue
    in root/pf-queue, data in root/pf-data, log in root/pf.log).

    `services` are extra master.cf lines, e.g.
    "127.0.0.1:2525 inet n - n - - smtpd". `main` overrides or adds main.cf
    parameters. `qmgr=False` leaves the queue manager out of master.cf, so
    that mail stays in the incoming queue: nothing is delivered or deferred.
    Nothing runs chrooted (Debian's own master.cf chroots most services;
    for loopback-only work it makes no difference but needs copies of /etc
    files in the queue directory).
    """

    def __init__(self, root: Path, services: list[str], main: dict[str, str] | None = None,
                 qmgr: bool = True, name: str = "pf"):
        self.root = Path(root)
        self.config_dir = self.root / f"{name}-etc"
        self.queue_dir = self.root / f"{name}-queue"
        self.data_dir = self.root / f"{name}-data"
        self.log_file = self.root / f"{name}.log"
        self.services = services
        self.qmgr = qmgr
        self.main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "bench.example.test",
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            # Nothing may leave loopback: a relayhost that is a closed
            # loopback port and no DNS, even if something tries to deliver.
            "relayhost": "[127.0.0.1]:9",
            "smtp_dns_support_level": "disabled",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "message_size_limit": "10240000",
            "biff": "no",
        }
        self.main.update(main or {})
        self.started = False

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)   # root's; postfix-script makes the rest
        self.data_dir.mkdir(exist_ok=True)
        shutil.chown(self.data_dir, self.main["mail_owner"])
        make_traversable(self.root)
        lines = [f"{k} = {v}" for k, v in self.main.items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        master = MASTER_CF_BASE.format(qmgr="" if self.qmgr else "#")
        (self.config_dir / "master.cf").write_text(
            "\n".join(self.services) + "\n" + master)
        # postfix-script's checks read these two from the config directory
        for extra in ("dynamicmaps.cf", "postfix-files"):
            src = Path("/etc/postfix") / extra
            if src.exists() and not (self.config_dir / extra).exists():
                shutil.copy(src, self.config_dir / extra)

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "MAIL_CONFIG": str(self.config_dir)})
        if check and proc.returncode != 0:
            raise PeerError(f"{' '.join(args)} exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def start(self) -> int:
        """`postfix start`; returns the master's PID once it is running."""
        self._run(POSTFIX, "-c", str(self.config_dir), "start")
        self.started = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid = self.master_pid()
            if pid:
                return pid
            time.sleep(0.05)
        raise PeerError(f"postfix started but wrote no pid file in {self.queue_dir}/pid")

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        """`postfix stop` and wait until the master and its children are gone."""
        pid = self.master_pid()
        if not pid:
            self.started = False
            return
        pids = descendants(pid)
        self._run(POSTFIX, "-c", str(self.config_dir), "stop", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        for p in pids:  # whatever is left: the stop did not work
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False

    def delete_all(self) -> None:
        """postsuper -d ALL (works whether Postfix runs or not)."""
        self._run(POSTSUPER, "-c", str(self.config_dir), "-d", "ALL", check=False)

    def fresh_queue(self) -> None:
        """Replace the queue directory by an empty one (Postfix must be
        stopped); `postfix start` recreates its subdirectories. Directories
        that once held many files stay large on ext4: a fresh one makes every
        run start alike."""
        if self.master_pid():
            raise PeerError("fresh_queue: Postfix is running")
        shutil.rmtree(self.queue_dir, ignore_errors=True)
        self.queue_dir.mkdir()

    def queue_files(self, queues=("incoming", "active", "deferred", "hold", "maildrop")) -> int:
        """Queue files on disk, counted directly (needs no running Postfix)."""
        n = 0
        for q in queues:
            d = self.queue_dir / q
            if d.is_dir():
                for _, _, files in os.walk(d):
                    n += len(files)
        return n

    def postqueue_count(self) -> tuple[int, str]:
        """Messages by `postqueue -p` (needs the showq service): the count and
        the summary line ("-- 20 Kbytes in 20 Requests." or
        "Mail queue is empty")."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-p").stdout
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return parse_queue_summary(last), last

    def version(self) -> str:
        out = subprocess.run([POSTCONF, "-c", str(self.config_dir), "-h", "mail_version"],
                             capture_output=True, text=True)
        return out.stdout.strip() or "unknown"

    def settings(self) -> dict:
        """What the instance really runs with: `postconf -n`, `postconf -M` and
        default_process_limit (what master.cf's maxproc '-' means)."""
        def run(*flags: str) -> list[str]:
            out = subprocess.run([POSTCONF, "-c", str(self.config_dir), *flags],
                                 capture_output=True, text=True)
            return out.stdout.strip().splitlines()
        return {"postconf_n": run("-n"), "postconf_M": run("-M"),
                "default_process_limit": run("-h", "default_process_limit")}


def parse_queue_summary(line: str) -> int:
    """The message count of a Postfix (or mailferry) mailq summary line."""
    line = line.strip()
    if "queue is empty" in line:
        return 0
    words = line.split()
    if "in" in words:
        try:
            return int(words[words.index("in") + 1])
        except (ValueError, IndexError):
            pass
    raise PeerError(f"unexpected mail queue summary line: {line!r}")
