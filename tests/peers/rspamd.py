"""Real rspamd (Debian's `rspamd` 3.4) as a milter on loopback, with rules a test triggers at will.

    spam = Rspamd(private_directory("rspamd-")).start()
    ...  # smtpd_milters = spam.milter   (inet:127.0.0.1:PORT, the proxy worker with milter = yes)
    spam.stop()

One `rspamd -f -c DIR/rspamd.conf` process (its main process in the foreground; it forks the
proxy worker) with its own config, database, run and log directories under `directory`. The
config is written here whole: it takes rspamd's rule files and plugins from /usr/share/rspamd
and /etc/rspamd ($CONFDIR's metrics, actions and groups) but no worker, module or option from
/etc/rspamd, so only the modules configured here run and nothing needs redis:

- one proxy worker, `milter = yes`, scanning itself (`self_scan`: no normal worker, no
  controller);
- `multimap` rules on the Subject (regexp maps in DIR): a subject with REJECT_WORD gets
  the `reject` action (rspamd answers the end of data with 554 5.7.1 and `message`), one with
  TEMPFAIL_WORD the `soft reject` action (451 4.7.1);
- `milter_headers` adds X-Spamd-Result and X-Spam-Status to every message it passes, local or
  not;
- DNS goes to 127.0.0.1:9 (nothing answers): no rule here needs DNS, and nothing may leave
  loopback.

rspamd logs to DIR/log/rspamd.log (`log()`). Its public-suffix list is a short one written here
(TEST_TLDS): with the system's, startup takes rspamd about 25 s of compiling on this machine.
It runs in a session of its own, so that `stop()` can kill its workers with it if the main
process does not end on SIGTERM (it waits up to 16 s for a worker that is compiling).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers import PeerError, free_port, require_tool, stop_process, tail_file, wait_for_port

RSPAMD_USER = "_rspamd"
REJECT_WORD = "rspamd-reject-me"
TEMPFAIL_WORD = "rspamd-tempfail-me"
REJECT_MESSAGE = "Rejected by the mailferry test rule"
TEMPFAIL_MESSAGE = "Try again later, mailferry test rule"
ADDED_HEADERS = ("X-Spamd-Result", "X-Spam-Status")
TEST_TLDS = ("test", "example", "invalid", "localhost", "com", "net", "org")


class Rspamd:
    def __init__(self, directory: Path, port: int = 0):
        if os.geteuid() != 0:
            raise PeerError("a private rspamd needs root (it switches to the _rspamd user)")
        self.directory = Path(directory)
        self.port = port or free_port()
        self.config_path = self.directory / "rspamd.conf"
        self.log_path = self.directory / "log" / "rspamd.log"
        self.stderr_path = self.directory / "stderr.log"
        self.process: subprocess.Popen | None = None

    @property
    def milter(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.directory
        return f"""\
lua = "$RULESDIR/rspamd.lua"
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
modules {{ path = "${{PLUGINSDIR}}"; }}
options {{
  pidfile = "{d}/run/rspamd.pid";
  filters = "";
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 1s; retransmits = 1; }}
  cache_file = "{d}/db/symbols.cache";
  hs_cache_dir = "{d}/db/";
  control_socket = "{d}/db/rspamd.sock mode=0600";
  tempdir = "{d}/tmp";
  local_addrs = [127.0.0.0/8];
  task_timeout = 8s;
  url_tld = "{d}/tld.dat";
}}
logging {{ type = "file"; filename = "{self.log_path}"; level = "info"; }}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{self.port}";
  milter = yes;
  timeout = 120s;
  upstream "local" {{ default = yes; self_scan = yes; }}
  count = 1;
  spam_header = "X-Spam";
}}
multimap {{
  MAILFERRY_TEST_REJECT {{ type = "header"; header = "Subject"; regexp = true; map = "{d}/reject.map";
    action = "reject"; message = "{REJECT_MESSAGE}"; score = 0.0; }}
  MAILFERRY_TEST_TEMPFAIL {{ type = "header"; header = "Subject"; regexp = true; map = "{d}/tempfail.map";
    action = "soft reject"; message = "{TEMPFAIL_MESSAGE}"; score = 0.0; }}
}}
milter_headers {{ use = ["x-spamd-result", "x-spam-status"]; skip_local = false; skip_authenticated = false; }}
"""

    def write_config(self) -> None:
        try:
            user = pwd.getpwnam(RSPAMD_USER)
        except KeyError:
            raise PeerError(f"no {RSPAMD_USER} user: install Debian's rspamd (scripts/setup --test)") from None
        for name in ("db", "run", "log", "tmp"):
            path = self.directory / name
            path.mkdir(mode=0o755, exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        # A short public-suffix list: rspamd's own (9,628 suffixes) takes it 25 s to compile here.
        (self.directory / "tld.dat").write_text("".join(f"{tld}\n" for tld in TEST_TLDS))
        (self.directory / "reject.map").write_text(f"/{REJECT_WORD}/i\n")
        (self.directory / "tempfail.map").write_text(f"/{TEMPFAIL_WORD}/i\n")
        self.config_path.write_text(self.config())

    def start(self, timeout: float = 60.0) -> "Rspamd":
        self.write_config()
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen([require_tool("rspamd"), "-f", "-u", RSPAMD_USER, "-g", RSPAMD_USER,
                                             "-c", str(self.config_path)],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                            start_new_session=True)  # stop() can kill its workers too
        try:
            wait_for_port("127.0.0.1", self.port, timeout, process=self.process, log=self.log_path,
                          what=f"rspamd -c {self.config_path}")
            # The main process binds the socket; the proxy worker it forks then takes the connections.
            self.wait_for_log("starting rspamd_proxy process", timeout)
        except AssertionError as error:
            self.stop()
            raise PeerError(f"rspamd did not start: {error}\n--- stderr ---\n"
                            f"{tail_file(self.stderr_path, 20)}") from None
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if self.process is not None and self.process.poll() is not None:
                raise PeerError(f"rspamd exited with {self.process.returncode}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise PeerError(f"{text!r} not in {self.log_path} after {timeout} s:\n{log[-3000:]}")
            time.sleep(0.05)
        return log

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
