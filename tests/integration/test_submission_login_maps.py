"""Issue 11, "Done when" 1: the seed's "Block sender address spoofing with SMTP AUTH" recipe,
through the real daemon, with each AUTH backend: real Dovecot auth (passwd-file), mailferry's
password table, and LDAP bind against real slapd.

The configuration is the seed's (mydomain = example.com, myorigin = $mydomain, mydestination =
empty, reject_sender_login_mismatch in smtpd_recipient_restrictions, its login table), plus what
a test needs: a relay domain for the recipient (so an unauthenticated client passes relay
control and meets the sender check), and clients from 127.0.0.2 (outside mynetworks).
"""

from __future__ import annotations

import shutil
import smtplib

import pytest

from mailferry.auth.passwords import make
from tests.integration.auth_peers import (
    PASSWORD, USERS, client, plain, start_auth_slapd, start_dovecot_auth, stop_peer, write_ldap_sasl_cf,
    write_password_table,
)
from tests.integration.conftest import Daemon, base_main_cf, smtpd_master_cf
from tests.peers import free_port, peer_tempdir

pytestmark = pytest.mark.integration

SEED_LOGIN_TABLE = """\
user1@example.com user1
user2@example.com user1
user3@example.com user3
@example.com user4
"""
RECIPIENT = "friend@example.net"     # relay_domains: any client may send to it
OUTSIDE = "127.0.0.2"


def not_owned(sender: str, user: str) -> str:
    return f"553 5.7.1 <{sender}>: Sender address rejected: not owned by user {user}"


def not_logged_in(sender: str) -> str:
    return f"553 5.7.1 <{sender}>: Sender address rejected: not logged in"


@pytest.fixture(scope="module", params=["dovecot", "table", "ldap"])
def submission(request):
    """The daemon with the seed's recipe and one AUTH backend (module-wide: one start per backend)."""
    directory = peer_tempdir("mailferry-login-maps-")
    peers = []
    if request.param == "dovecot":
        dovecot = start_dovecot_auth()
        peers.append(lambda: stop_peer(dovecot))
        sasl = {"smtpd_sasl_type": "dovecot", "smtpd_sasl_path": dovecot.sasl_path}
    elif request.param == "table":
        hashes = {user: make(PASSWORD, scheme) for user, scheme in
                  zip(USERS, ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID"))}
        table = write_password_table(directory, hashes)
        sasl = {"smtpd_sasl_type": "table", "smtpd_sasl_path": f"texthash:{table}"}
    else:
        slapd = start_auth_slapd()
        peers.append(slapd.stop)
        sasl = {"smtpd_sasl_type": "ldap", "smtpd_sasl_path": str(write_ldap_sasl_cf(directory, slapd))}
    login_maps = directory / "smtpd_sender_login_maps"
    login_maps.write_text(SEED_LOGIN_TABLE)
    login_maps.chmod(0o644)
    port = free_port()
    main_cf = base_main_cf(
        directory,
        # The seed's recipe, as printed:
        mydomain="example.com", myorigin="$mydomain", mydestination="",
        smtpd_recipient_restrictions="reject_sender_login_mismatch, permit_sasl_authenticated, "
                                     "permit_mynetworks, reject_unauth_destination",
        smtpd_sender_login_maps=f"texthash:{login_maps}",
        # What the test adds:
        relay_domains="example.net", default_transport="smtp", relay_transport="smtp",
        smtpd_sasl_auth_enable="yes", **sasl)
    daemon = Daemon(directory, main_cf, smtpd_master_cf(port), port).start()
    yield daemon
    try:
        daemon.stop()
    finally:
        for stop in peers:
            stop()
        shutil.rmtree(directory, ignore_errors=True)


def send_as(daemon, login: str | None, sender: str) -> str:
    """The reply to RCPT (or to MAIL, if MAIL is refused) for `sender`, after AUTH as `login`."""
    with client(daemon.port, OUTSIDE) as smtp:
        if login is not None:
            smtp.login(login, PASSWORD)
        code, reply = smtp.mail(sender)
        if code == 250:
            code, reply = smtp.rcpt(RECIPIENT)
        smtp.rset()
    return f"{code} {reply.decode()}"


OK = "250 2.1.5 Ok"

SEED_CASES = [
    # user1 owns user1@ and user2@, nothing else
    ("user1", "user1@example.com", OK),
    ("user1", "user2@example.com", OK),
    ("user1", "user3@example.com", not_owned("user3@example.com", "user1")),
    ("user1", "other@example.com", not_owned("other@example.com", "user1")),
    # user3 owns user3@ only
    ("user3", "user3@example.com", OK),
    ("user3", "user1@example.com", not_owned("user1@example.com", "user3")),
    ("user3", "other@example.com", not_owned("other@example.com", "user3")),
    # user4 owns every other @example.com address, not the three listed ones
    ("user4", "other@example.com", OK),
    ("user4", "anyone.else@example.com", OK),
    ("user4", "user1@example.com", not_owned("user1@example.com", "user4")),
    ("user4", "user2@example.com", not_owned("user2@example.com", "user4")),
    ("user4", "user3@example.com", not_owned("user3@example.com", "user4")),
    # not logged in: an owned address is refused
    (None, "user1@example.com", not_logged_in("user1@example.com")),
    (None, "other@example.com", not_logged_in("other@example.com")),
    # an address nobody owns: reject_sender_login_mismatch refuses it to a logged-in client too
    # (Postfix's FORBID_UNKNOWN_SENDER; reject_known_sender_login_mismatch would let it through)
    ("user1", "someone@elsewhere.example", not_owned("someone@elsewhere.example", "user1")),
    (None, "someone@elsewhere.example", OK),     # ... and not logged in, no owner: no refusal
    # Case: table keys and login names compare without case, as Postfix's strcasecmp_utf8
    ("user1", "User2@EXAMPLE.com", OK),
    ("user3", "USER1@example.com", not_owned("USER1@example.com", "user3")),
    ("USER1", "user2@example.com", OK),
    # user3%example.com@example.com: example.com is not ours (mydestination is empty), so no
    # percent hack rewrites it; the lookup finds only @example.com, which user4 owns.
    ("user3", "user3%example.com@example.com", not_owned("user3%example.com@example.com", "user3")),
    ("user4", "user3%example.com@example.com", OK),
]


@pytest.mark.parametrize("login, sender, expected", SEED_CASES)
def test_seed_sender_login_table(submission, login, sender, expected):
    assert send_as(submission, login, sender) == expected


def test_the_log_names_the_login_and_never_the_password(submission):
    assert send_as(submission, "user1", "user3@example.com") == not_owned("user3@example.com", "user1")
    with client(submission.port, OUTSIDE) as smtp:
        smtp.login("user1", PASSWORD)
        smtp.sendmail("user2@example.com", [RECIPIENT], b"Subject: seed\r\n\r\nbody\r\n")
    log = submission.wait_for_log("client=unknown[127.0.0.2], sasl_method=PLAIN, sasl_username=user1")
    assert PASSWORD not in log
    assert "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 553 5.7.1 <user3@example.com>" in log


@pytest.mark.parametrize("number, login", enumerate(["*", ")(uid=*", "user*", "user1)(uid=*"]))
def test_wildcard_login_names_do_not_log_in(submission, number, login):
    # A source address each: Dovecot's auth_penalty slows down repeated failures per address.
    with client(submission.port, f"127.0.0.{30 + number}") as smtp:
        code, _ = smtp.docmd("AUTH", "PLAIN " + plain(login, PASSWORD))
    assert code == 535
