"""Real OpenDKIM (Debian's `opendkim`, keys from `opendkim-tools`) as a signing milter on loopback.

    dkim = OpenDkim(private_directory("opendkim-"), domain="example.test").start()
    ...  # smtpd_milters = dkim.milter   (inet:127.0.0.1:PORT)
    dkim.verify(raw_message)             # dkimpy, against the key made here, no DNS
    dkim.stop()

One `opendkim -x CONF -f` process (foreground, so the fixture owns its pid) with its own config,
key directory and pid file under `directory`; nothing from /etc/opendkim* is read. It runs as the
`opendkim` user (UserID), which reads the key. Mode `sv`: it signs mail for `domain` from
InternalHosts (127.0.0.0/8, so every loopback client and mailferry's non-SMTP mail, which a
Postfix-style client reports as coming from 127.0.0.1, is signed) and verifies the rest.

Traps found while building this (shared/notes/test-peers.md has more):
- OpenDKIM refuses a key below a directory other users can write, /tmp included ("can be read
  or written by other users"): `private_directory()` makes the directory in /run (root's, 0755),
  the key directory is the opendkim user's, mode 0700, the key 0600.
- OpenDKIM logs only through syslog(3), and there is no /dev/log here: with `Syslog no` it writes
  nothing at run time. What it prints to stderr (a bad config, a key it will not read) goes to
  DIR/stderr.log, and `start()` puts it in the failure. What it did to a message shows in the
  message: the DKIM-Signature header, and the Authentication-Results it adds to mail it verified.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.peers import PeerError, free_port, require_tool, stop_process, wait_for_port

OPENDKIM_USER = "opendkim"
SELECTOR = "mferry"


def private_directory(prefix: str) -> Path:
    """A fresh directory under /run that only root can write (0755), for peers that refuse
    their files below a world-writable directory such as /tmp."""
    parent = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=f"mailferry-{prefix}", dir=parent))
    path.chmod(0o755)
    return path


def txt_record_value(zone_text: str) -> bytes:
    """The TXT record of an `opendkim-genkey` SELECTOR.txt file: its quoted pieces, joined."""
    pieces = re.findall(r'"([^"]*)"', zone_text)
    if not pieces:
        raise PeerError(f"no quoted TXT pieces in opendkim-genkey's output: {zone_text[:200]!r}")
    return "".join(pieces).encode("ascii")


class OpenDkim:
    """A private OpenDKIM signing `domain` with a key it generates at start (RSA 2048).

    `milter` is the value for smtpd_milters / non_smtpd_milters. `txt_record` is the public key's
    TXT record (what DNS would publish at SELECTOR._domainkey.DOMAIN), `verify()` checks a message
    with dkimpy against it."""

    def __init__(self, directory: Path, domain: str = "example.test", selector: str = SELECTOR,
                 port: int = 0, canonicalization: str = "relaxed/simple"):
        if os.geteuid() != 0:
            raise PeerError("a private OpenDKIM needs root (it switches to the opendkim user)")
        self.directory = Path(directory)
        self.domain = domain
        self.selector = selector
        self.port = port or free_port()
        self.canonicalization = canonicalization
        self.config_path = self.directory / "opendkim.conf"
        self.key_directory = self.directory / "keys"
        self.key_path = self.key_directory / f"{selector}.private"
        self.stderr_path = self.directory / "stderr.log"
        self.txt_record = b""
        self.process: subprocess.Popen | None = None

    @property
    def milter(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def dns_name(self) -> bytes:
        return f"{self.selector}._domainkey.{self.domain}.".encode("ascii")

    def generate_key(self) -> None:
        try:
            user = pwd.getpwnam(OPENDKIM_USER)
        except KeyError:
            raise PeerError(f"no {OPENDKIM_USER} user: install Debian's opendkim (scripts/setup --test)") from None
        self.key_directory.mkdir(mode=0o700, exist_ok=True)
        out = subprocess.run([require_tool("opendkim-genkey"), "-b", "2048", "-D", str(self.key_directory),
                              "-d", self.domain, "-s", self.selector],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise PeerError(f"opendkim-genkey exited {out.returncode}: {out.stderr.strip()[-800:]}")
        self.txt_record = txt_record_value((self.key_directory / f"{self.selector}.txt").read_text())
        for path in (self.key_directory, *self.key_directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.key_path.chmod(0o600)
        self.key_directory.chmod(0o700)

    def config(self) -> str:
        return (f"Mode sv\n"
                f"Domain {self.domain}\n"
                f"Selector {self.selector}\n"
                f"KeyFile {self.key_path}\n"
                f"Canonicalization {self.canonicalization}\n"
                "SignatureAlgorithm rsa-sha256\n"
                f"Socket inet:{self.port}@127.0.0.1\n"
                "InternalHosts 127.0.0.0/8\n"
                f"UserID {OPENDKIM_USER}\n"
                f"PidFile {self.directory / 'opendkim.pid'}\n"
                "Background no\n"
                "Syslog no\n"
                "UMask 022\n")

    def start(self, timeout: float = 20.0) -> "OpenDkim":
        self.generate_key()
        self.config_path.write_text(self.config())
        self.config_path.chmod(0o644)
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen([require_tool("opendkim"), "-x", str(self.config_path), "-f"],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        try:
            wait_for_port("127.0.0.1", self.port, timeout, process=self.process, log=self.stderr_path,
                          what=f"opendkim -x {self.config_path}")
        except PeerError as error:
            self.stop()
            raise PeerError(f"OpenDKIM did not start: {error}\n--- {self.config_path} ---\n{self.config()}") \
                from None
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's DNS lookup, answered from the key made here: only our selector's name has a
        record."""
        if name.rstrip(b".").lower() == self.dns_name.rstrip(b".").lower():
            return self.txt_record
        return None

    def verify(self, message: bytes) -> bool:
        """dkimpy's verdict on the first DKIM-Signature of `message` (CRLF or LF line ends),
        with this instance's public key standing in for DNS."""
        import dkim  # dkimpy, a test extra

        return bool(dkim.verify(message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), dnsfunc=self.dnsfunc))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
