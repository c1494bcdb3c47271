"""Private Dovecot 2.3 instances: a submission server standing in for smtp.gmail.com, and LMTP.

Each instance is one `dovecot -F -c FILE` process (foreground, so the fixture owns its pid) with
its own base_dir, state_dir and log_path under a fresh directory; nothing from /etc/dovecot is read.
Stopping it (SIGTERM to the master) stops all its children.

Traps found while building these (see also /work/shared/notes/test-peers.md):
- Dovecot counts a connection whose remote IP equals its local IP as secured, so plaintext AUTH is
  offered and accepted without STARTTLS on 127.0.0.1 -> 127.0.0.1 even with `ssl = required`.
  The submission stand-in therefore listens on 127.0.0.2: a client connecting from the default
  127.0.0.1 is then really "outside", AUTH is only advertised after STARTTLS, and MAIL before AUTH
  gets "530 5.7.0 Authentication required.".
- The submission service needs a mail_location (for BURL) even though it stores nothing: without
  one, AUTH succeeds and the session dies with "451 4.7.0 Internal error occurred".
- Dovecot's smtp client logs "Received invalid EHLO response line: Parameter is empty" against
  smtp-sink (its EHLO reply ends with a bare "250 "). It is only a warning; relaying works.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.peers import give_to_peer, free_port, require_tool, stop_process, unprivileged_ids, wait_for_port
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import CA

GMAIL_USER = "user.name@gmail.com"  # the seed's sasl_passwd account
GMAIL_PASSWORD = "password"
SUBMISSION_HOSTNAME = "smtp.gmail.test"
SUBMISSION_HOST = "127.0.0.2"       # not 127.0.0.1: see the first trap above


class Dovecot:
    """One private Dovecot master process; subclasses write the protocol part of the config."""

    protocols = ""

    def __init__(self, directory: Path, hostname: str = "dovecot.test"):
        if os.geteuid() != 0:
            raise AssertionError("private Dovecot peers need root (they switch to nobody and dovenull)")
        self.directory = Path(directory)
        self.hostname = hostname
        self.config_path = self.directory / "dovecot.conf"
        self.log_path = self.directory / "dovecot.log"
        self.base_dir = self.directory / "run"
        self.process: subprocess.Popen | None = None
        self.listeners: list[tuple[str, int]] = []
        _, self.uid, self.gid = unprivileged_ids()

    def common_config(self, listen: str) -> str:
        return (f"protocols = {self.protocols}\n"
                f"listen = {listen}\n"
                f"base_dir = {self.base_dir}\n"
                f"state_dir = {self.directory / 'state'}\n"
                f"log_path = {self.log_path}\n"
                f"info_log_path = {self.log_path}\n"
                f"hostname = {self.hostname}\n"
                "shutdown_clients = yes\n")

    def config(self) -> str:
        raise NotImplementedError

    def password_auth_config(self, passwd: Path, home: str) -> str:
        """PLAIN and LOGIN against a passwd-file, every user mapped to the unprivileged peer user."""
        return (f"auth_failure_delay = {self.auth_failure_delay}\n"
                "auth_mechanisms = plain login\n"
                f"passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n"
                f"userdb {{\n  driver = static\n  args = uid={self.uid} gid={self.gid} home={home}\n}}\n")

    def write_passwd(self, fields: dict[str, str]) -> Path:
        """A passwd-file `user:field` a line, readable by Dovecot's unprivileged auth process."""
        passwd = self.directory / "passwd"
        passwd.write_text("".join(f"{user}:{field}\n" for user, field in fields.items()))
        os.chmod(passwd, 0o644)
        return passwd

    def start(self, timeout: float = 10.0) -> "Dovecot":
        self.config_path.write_text(self.config())
        stderr = open(self.directory / "stderr.log", "ab")
        with stderr:
            self.process = subprocess.Popen([require_tool("dovecot"), "-F", "-c", str(self.config_path)],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=subprocess.STDOUT)
        try:
            for host, port in self.listeners:
                wait_for_port(host, port, timeout, process=self.process)
        except AssertionError as error:
            self.stop()
            stderr = (self.directory / "stderr.log").read_text(errors="replace")
            raise AssertionError(f"Dovecot ({self.config_path}) did not start: {error}\n"
                                 f"--- stderr ---\n{stderr[-2000:]}\n--- {self.log_path} ---\n"
                                 f"{self.log()[-2000:]}") from None
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in {self.log_path} after {timeout} s:\n{log[-3000:]}")
            time.sleep(0.02)
        return log


def issue_submission_certificate(ca: CA, directory: Path, hostname: str = SUBMISSION_HOSTNAME,
                                 host: str = SUBMISSION_HOST) -> tuple[Path, Path]:
    return ca.issue(hostname, directory, ips=("127.0.0.1", host))


class SubmissionRelay(Dovecot):
    """Dovecot submission on SUBMISSION_HOST:port standing in for [smtp.gmail.com]:587.

    STARTTLS is required (certificate for `hostname` from `ca`), AUTH PLAIN and LOGIN check a
    passwd-file, and accepted mail is relayed, transaction by transaction, to `sink` (an SMTP
    smtp-sink): RCPT and DATA replies come from the sink, so sink refusals show through.
    A wrong password gets "535 5.7.8 Authentication failed." at once (auth_failure_delay = 0,
    where Dovecot's default is 2 s).
    """

    protocols = "submission"

    def __init__(self, directory: Path, ca: CA, sink: SmtpSink, *, hostname: str = SUBMISSION_HOSTNAME,
                 host: str = SUBMISSION_HOST, port: int = 0,
                 users: dict[str, str] | None = None, certificate: tuple[Path, Path] | None = None,
                 auth_failure_delay: str = "0"):
        super().__init__(directory, hostname)
        self.ca = ca
        self.sink = sink
        self.host = host
        self.port = port or free_port(host)
        self.users = dict(users or {GMAIL_USER: GMAIL_PASSWORD})
        self.username, self.password = next(iter(self.users.items()))
        # certificate: (cert_path, key_path) issued by `ca` for `hostname`, e.g. one made per session.
        self.cert_path, self.key_path = certificate or issue_submission_certificate(ca, self.directory / "tls",
                                                                                     hostname, host)
        self.auth_failure_delay = auth_failure_delay
        self.listeners = [(host, self.port)]

    @property
    def nexthop(self) -> str:
        """[host]:port, e.g. `relayhost = [127.0.0.2]:PORT` (verify the certificate as `hostname`)."""
        return f"[{self.host}]:{self.port}"

    def config(self) -> str:
        passwd = self.write_passwd({user: "{PLAIN}" + password for user, password in self.users.items()})
        home = give_to_peer(self.directory / "home")
        return self.common_config(self.host) + f"""\
ssl = required
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
disable_plaintext_auth = yes
{self.password_auth_config(passwd, f"{home}/%u")}mail_location = maildir:~/Maildir
submission_relay_host = {self.sink.host}
submission_relay_port = {self.sink.port}
submission_relay_ssl = no
service submission-login {{
  inet_listener submission {{
    address = {self.host}
    port = {self.port}
  }}
}}
"""


@dataclass
class DeliveredMessage:
    path: Path
    raw: bytes

    @property
    def email(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)

    @property
    def return_path(self) -> str | None:
        """The envelope sender that Dovecot wrote in Return-Path:, without <>."""
        value = self.email["Return-Path"]
        return None if value is None else str(value).strip().strip("<>")

    @property
    def delivered_to(self) -> str | None:
        """Delivered-To:, which Dovecot LMTP adds only when the transaction had a single recipient."""
        value = self.email["Delivered-To"]
        return None if value is None else str(value).strip().strip("<>")


class LmtpServer(Dovecot):
    """Dovecot LMTP on host:port delivering into DIR/mail/<user>/Maildir for each user in `users`.

    Users are full addresses (the RCPT TO address is the user name); anyone else gets
    "550 5.1.1 <x> User doesn't exist". After DATA there is one reply per accepted recipient.
    """

    protocols = "lmtp"

    def __init__(self, directory: Path, users: tuple[str, ...] = ("alice@example.test", "bob@example.test"),
                 *, host: str = "127.0.0.1", port: int = 0, hostname: str = "lmtp.example.test"):
        super().__init__(directory, hostname)
        self.users = tuple(user.lower() for user in users)
        self.host = host
        self.port = port or free_port(host)
        self.mail_root = self.directory / "mail"
        self.listeners = [(host, self.port)]

    @property
    def nexthop(self) -> str:
        """[host]:port, as in `lmtp:inet:[127.0.0.1]:PORT`."""
        return f"[{self.host}]:{self.port}"

    def home(self, user: str) -> Path:
        return self.mail_root / user.lower()

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    def config(self) -> str:
        give_to_peer(self.mail_root)
        users = self.directory / "users"
        users.write_text("".join(f"{user}:{{PLAIN}}secret:{self.uid}:{self.gid}::{self.home(user)}::\n"
                                 for user in self.users))
        return self.common_config(self.host) + f"""\
ssl = no
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.port}
  }}
}}
"""

    def messages(self, user: str) -> list[DeliveredMessage]:
        """Messages delivered to `user`'s INBOX (new/ and cur/), oldest first."""
        maildir = self.maildir(user)
        paths = [path for sub in ("new", "cur") if (maildir / sub).is_dir() for path in (maildir / sub).iterdir()]
        paths.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [DeliveredMessage(path, path.read_bytes()) for path in paths]

    def wait_for_messages(self, user: str, count: int = 1, timeout: float = 10.0) -> list[DeliveredMessage]:
        deadline = time.monotonic() + timeout
        while len(found := self.messages(user)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages for {user} after {timeout} s:\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.02)
        return found


class AuthServer(Dovecot):
    """Dovecot's auth service only, for `smtpd_sasl_type = dovecot`: an inet listener on
    host:port (`smtpd_sasl_path = inet:host:port`) and a UNIX socket `unix_path` (mode 0666, so a
    daemon that dropped root may use it). `users` maps a login to its passwd-file password field:
    "{PLAIN}secret", or a hash from `doveadm pw`. auth_failure_delay is Dovecot's own wait before
    FAIL (its default is 2 s); `disable_plaintext_auth = no` lets PLAIN work without TLS, as
    many Postfix+Dovecot sites on a trusted network have it.
    """

    protocols = ""

    def __init__(self, directory: Path, users: dict[str, str], *, host: str = "127.0.0.1", port: int = 0,
                 auth_failure_delay: str = "0"):
        super().__init__(directory, "auth.test")
        self.users = dict(users)
        self.host = host
        self.port = port or free_port(host)
        self.unix_path = self.base_dir / "auth-client"
        self.auth_failure_delay = auth_failure_delay
        self.listeners = [(host, self.port)]

    @property
    def sasl_path(self) -> str:
        return f"inet:{self.host}:{self.port}"

    def config(self) -> str:
        passwd = self.write_passwd(self.users)
        return self.common_config(self.host) + f"""\
ssl = no
disable_plaintext_auth = no
{self.password_auth_config(passwd, "/nonexistent")}service auth {{
  inet_listener {{
    address = {self.host}
    port = {self.port}
  }}
  unix_listener auth-client {{
    mode = 0666
  }}
}}
"""


class OAuth2SubmissionRelay(SubmissionRelay):
    """SubmissionRelay whose AUTH is XOAUTH2 and OAUTHBEARER only, checked by Dovecot's oauth2
    passdb against a token endpoint's introspection URL (RFC 7662, introspection_mode = post),
    e.g. tests/peers/oauth2_endpoint.py's. Each AUTH is introspected (no auth cache), so a token
    the endpoint expires or revokes is refused at the next AUTH: Dovecot then sends XOAUTH2's
    334 JSON error and, after the client's empty answer, "535 5.7.8 Authentication failed.".
    """

    def __init__(self, directory: Path, ca: CA, sink: SmtpSink, *, introspection_url: str,
                 user: str = GMAIL_USER, **options):
        super().__init__(directory, ca, sink, users={user: "unused"}, **options)
        self.introspection_url = introspection_url

    def password_auth_config(self, passwd: Path, home: str) -> str:
        settings = self.directory / "dovecot-oauth2.conf.ext"
        settings.write_text(f"introspection_mode = post\n"
                            f"introspection_url = {self.introspection_url}\n"
                            "force_introspection = yes\n"
                            "username_attribute = username\n"
                            "active_attribute = active\n"
                            "active_value = true\n")
        os.chmod(settings, 0o644)
        return (f"auth_failure_delay = {self.auth_failure_delay}\n"
                "auth_mechanisms = xoauth2 oauthbearer\n"
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {settings}\n}}\n"
                f"userdb {{\n  driver = static\n  args = uid={self.uid} gid={self.gid} home={home}\n}}\n")
