"""Shared pieces of the SMTP AUTH integration tests: the users, Dovecot's auth server, a
certificate for STARTTLS, and clients bound to an outside address."""

from __future__ import annotations

import base64

import pytest
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

from tests.peers import peer_tempdir, require_tool
from tests.peers.dovecot import AuthServer
from tests.peers.tls import make_ca

PASSWORD = "s3cret pass"
# The seed's logins (the sender login table names them) and one more who owns nothing.
USERS = ("user1", "user2", "user3", "user4")
REMOTE_RECIPIENT = "someone@remote.example"   # not ours: relaying needs AUTH


def start_dovecot_auth(users: dict[str, str] | None = None, **options) -> AuthServer:
    directory = peer_tempdir("mailferry-dovecot-auth-")
    users = users if users is not None else {user: "{PLAIN}" + PASSWORD for user in USERS}
    return AuthServer(directory, users, **options).start()


def stop_peer(peer) -> None:
    peer.stop()
    shutil.rmtree(peer.directory, ignore_errors=True)


# Fixtures for the test modules that import them: one Dovecot auth server and one slapd a module.
@pytest.fixture(scope="module")
def dovecot_auth():
    server = start_dovecot_auth()
    yield server
    stop_peer(server)


@pytest.fixture(scope="module")
def auth_slapd():
    server = start_auth_slapd()
    yield server
    server.stop()


def make_certificate() -> tuple[Path, Path, Path]:
    """(ca_cert, cert, key) for mx.example.test, in a directory root reads at start."""
    directory = peer_tempdir("mailferry-auth-tls-")
    ca = make_ca(directory / "ca")
    cert, key = ca.issue("mx.example.test", directory / "server")
    return ca.cert_path, cert, key


def client(port: int, source: str, tls_ca: Path | None = None) -> smtplib.SMTP:
    """smtplib from `source` (an outside address: not in mynetworks), EHLO said; STARTTLS first
    when `tls_ca` is given."""
    smtp = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30)
    smtp.ehlo("client.example")
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=str(tls_ca))
        context.check_hostname = False
        smtp.starttls(context=context)
        smtp.ehlo("client.example")
    return smtp


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def swaks(port: int, source: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("swaks"), "--server", f"127.0.0.1:{port}", "--local-interface", source,
                           "--timeout", "30", "--helo", "client.example", *args],
                          capture_output=True, text=True, timeout=120)


# --- LDAP bind: a directory of the same users, their passwords as userPassword ---------------------

STAR_LOGIN, STAR_PASSWORD = "star*", "star password"   # a uid with a literal "*": it matches only itself


def auth_ldif() -> str:
    from tests.peers.slapd import SUFFIX
    entries = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
               f"dn: ou=People,{SUFFIX}\nobjectClass: organizationalUnit\nou: People\n"]
    for uid, password in [*((user, PASSWORD) for user in USERS), (STAR_LOGIN, STAR_PASSWORD)]:
        rdn = uid.replace("*", r"\2A")
        entries.append(f"dn: uid={rdn},ou=People,{SUFFIX}\nobjectClass: account\n"
                       f"objectClass: simpleSecurityObject\nuid: {uid}\nuserPassword: {password}\n")
    return "\n".join(entries)


def start_auth_slapd():
    from tests.peers.slapd import Slapd
    return Slapd(peer_tempdir("mailferry-auth-slapd-"), ldif=auth_ldif()).start()


def write_ldap_sasl_cf(directory: Path, slapd) -> Path:
    """The ldap_table(5) file for smtpd_sasl_type = ldap (readable by the daemon's mail_owner)."""
    from tests.peers.slapd import SUFFIX
    path = Path(directory) / "ldap-sasl.cf"
    path.write_text(f"server_host = {slapd.url}\nsearch_base = ou=People,{SUFFIX}\n"
                    "query_filter = (uid=%s)\nresult_attribute = uid\nversion = 3\ntimeout = 5\n")
    path.chmod(0o644)
    return path


def write_password_table(directory: Path, users: dict[str, str]) -> Path:
    """A texthash table `user {SCHEME}hash` for smtpd_sasl_type = table."""
    path = Path(directory) / "sasl_users"
    path.write_text("".join(f"{user} {stored}\n" for user, stored in users.items()))
    path.chmod(0o644)
    return path
