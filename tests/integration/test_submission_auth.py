"""SMTP AUTH through the real daemon with real Dovecot auth (smtpd_sasl_type = dovecot).

Clients connect from 127.0.0.x addresses other than 127.0.0.1 (mynetworks = 127.0.0.1/32), so
only AUTH lets them relay. Dovecot penalises failed logins per client address (its auth_penalty,
up to 15 s), so each test that fails a login uses an address of its own.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.integration.auth_peers import (  # noqa: F401 (dovecot_auth is a fixture)
    PASSWORD, REMOTE_RECIPIENT, client, dovecot_auth, make_certificate, plain, swaks,
)
from tests.integration.test_smtpd_security import queued_contents
from tests.peers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certificate():
    return make_certificate()


def submission_settings(sasl_path: str, **extra: str) -> dict[str, str]:
    settings = {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": sasl_path,
                # Mail stays queued (no route out), so its Received: header can be read.
                "default_transport": "smtp", "local_transport": "smtp"}
    settings.update(extra)
    return settings


@pytest.fixture
def mx(daemon_factory, dovecot_auth):
    return daemon_factory(**submission_settings(dovecot_auth.sasl_path)).start()


def test_auth_plain_with_dovecot_lets_smtplib_relay(mx):
    with client(mx.port, "127.0.0.2") as smtp:
        assert smtp.has_extn("auth") and smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))
        assert (code, reply) == (235, b"2.7.0 Authentication successful")
        smtp.sendmail("user1@example.com", [REMOTE_RECIPIENT], b"Subject: hi\r\n\r\nbody\r\n")
    log = mx.wait_for_log("sasl_username=user1")
    assert re.search(r"[0-9A-F]+: client=unknown\[127\.0\.0\.2\], sasl_method=PLAIN, sasl_username=user1\n", log)
    assert PASSWORD not in log
    [content] = queued_contents(mx)
    assert b") with ESMTPA id " in content


def test_auth_login_with_dovecot(mx):
    with client(mx.port, "127.0.0.2") as smtp:
        smtp.user, smtp.password = "user3", PASSWORD
        code, reply = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        smtp.sendmail("user3@example.com", [REMOTE_RECIPIENT], b"Subject: hi\r\n\r\nbody\r\n")
    assert "sasl_method=LOGIN, sasl_username=user3" in mx.wait_for_log("sasl_username=user3")


def test_swaks_submits_with_auth_plain_and_login(mx):
    for mechanism in ("PLAIN", "LOGIN"):
        result = swaks(mx.port, "127.0.0.2", "--auth", mechanism, "--auth-user", "user4",
                       "--auth-password", PASSWORD, "--from", "user4@example.com", "--to", REMOTE_RECIPIENT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0 Authentication successful" in result.stdout
        assert re.search(r"<[-~] +250 2\.0\.0 Ok: queued as", result.stdout)
    mx.wait_for_log(f"sasl_method=LOGIN, sasl_username=user4")


def test_without_auth_an_outside_client_cannot_relay(mx):
    with client(mx.port, "127.0.0.2") as smtp:
        smtp.mail("user1@example.com")
        code, reply = smtp.rcpt(REMOTE_RECIPIENT)
    # smtpd_relay_restrictions' default ends in defer_unauth_destination.
    assert code == 454 and b"Relay access denied" in reply


def test_wrong_password_is_535_and_logged_without_the_password(mx):
    with client(mx.port, "127.0.0.3") as smtp:
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", "wrong-guess"))
        assert code == 535 and reply.startswith(b"5.7.8 Error: authentication failed:")
        smtp.mail("user1@example.com")
        code, reply = smtp.rcpt(REMOTE_RECIPIENT)
        assert code == 454 and b"Relay access denied" in reply   # still not authenticated
    log = mx.wait_for_log("SASL PLAIN authentication failed")
    assert "warning: unknown[127.0.0.3]: SASL PLAIN authentication failed: " in log
    assert "sasl_username=user1" in log
    assert "wrong-guess" not in log


def test_auth_backend_down_is_454_never_535(daemon_factory):
    nothing_there = f"inet:127.0.0.1:{free_port()}"
    mx = daemon_factory(**submission_settings(nothing_there)).start()
    with client(mx.port, "127.0.0.2") as smtp:
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))
    assert code == 454 and reply.startswith(b"4.7.0 Temporary authentication failure: Can't connect"), reply


def test_dovecot_unix_socket_path(daemon_factory, dovecot_auth):
    mx = daemon_factory(**submission_settings(str(dovecot_auth.unix_path))).start()
    with client(mx.port, "127.0.0.2") as smtp:
        assert smtp.docmd("AUTH", "PLAIN " + plain("user2", PASSWORD))[0] == 235


def test_tls_auth_only_offers_auth_after_starttls_only(daemon_factory, dovecot_auth, certificate):
    ca, cert, key = certificate
    mx = daemon_factory(**submission_settings(
        dovecot_auth.sasl_path, smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert),
        smtpd_tls_key_file=str(key), smtpd_tls_auth_only="yes")).start()
    with client(mx.port, "127.0.0.2") as smtp:
        assert not smtp.has_extn("auth")
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))
        assert (code, reply) == (504, b"5.5.4 Encryption required for requested authentication mechanism")
    with client(mx.port, "127.0.0.2", tls_ca=ca) as smtp:
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        smtp.login("user1", PASSWORD)
        smtp.sendmail("user1@example.com", [REMOTE_RECIPIENT], b"Subject: tls\r\n\r\nbody\r\n")
    mx.wait_for_log("sasl_username=user1")
    [content] = queued_contents(mx)
    assert b") with ESMTPSA id " in content
    result = swaks(mx.port, "127.0.0.2", "--tls", "--auth", "LOGIN", "--auth-user", "user2",
                   "--auth-password", PASSWORD, "--from", "user2@example.com", "--to", REMOTE_RECIPIENT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_noplaintext_hides_plain_and_login_until_tls(daemon_factory, dovecot_auth, certificate):
    ca, cert, key = certificate
    mx = daemon_factory(**submission_settings(
        dovecot_auth.sasl_path, smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert),
        smtpd_tls_key_file=str(key), smtpd_sasl_security_options="noanonymous, noplaintext",
        smtpd_sasl_tls_security_options="noanonymous", broken_sasl_auth_clients="yes")).start()
    with client(mx.port, "127.0.0.2") as smtp:
        assert not smtp.has_extn("auth")
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))
        assert code == 535 and b"Invalid authentication mechanism: 'PLAIN'" in reply
    with client(mx.port, "127.0.0.2", tls_ca=ca) as smtp:
        ehlo = smtp.ehlo_resp.decode()
        assert "\nAUTH PLAIN LOGIN\n" in ehlo and "\nAUTH=PLAIN LOGIN\n" in ehlo
        smtp.login("user3", PASSWORD)


def test_sasl_exceptions_networks_hide_auth_from_those_clients(daemon_factory, dovecot_auth):
    mx = daemon_factory(**submission_settings(dovecot_auth.sasl_path,
                                              smtpd_sasl_exceptions_networks="127.0.0.4")).start()
    with client(mx.port, "127.0.0.4") as smtp:
        assert not smtp.has_extn("auth")
    with client(mx.port, "127.0.0.2") as smtp:
        assert smtp.has_extn("auth")


def test_authenticated_header_names_the_login(daemon_factory, dovecot_auth):
    mx = daemon_factory(**submission_settings(dovecot_auth.sasl_path,
                                              smtpd_sasl_authenticated_header="yes")).start()
    with client(mx.port, "127.0.0.2") as smtp:
        smtp.login("user2", PASSWORD)
        smtp.sendmail("user2@example.com", [REMOTE_RECIPIENT], b"Subject: hdr\r\n\r\nbody\r\n")
    mx.wait_for_log("sasl_username=user2")
    [content] = queued_contents(mx)
    assert b"\r\n\t(Authenticated sender: user2)\r\n\tby mx.example.test" in content


def test_auth_is_refused_when_not_enabled(daemon_factory):
    mx = daemon_factory().start()
    with client(mx.port, "127.0.0.2") as smtp:
        assert not smtp.has_extn("auth")
        assert smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD)) == (
            503, b"5.5.1 Error: authentication not enabled")


# --- the built-in backends through the daemon -----------------------------------------------------

def test_table_backend_with_doveadm_hashes(daemon_factory):
    from tests.integration.auth_peers import write_password_table
    from tests.peers import peer_tempdir
    import subprocess
    hashes = {user: subprocess.run(["doveadm", "pw", "-s", scheme, "-p", PASSWORD], capture_output=True,
                                   text=True, check=True).stdout.strip()
              for user, scheme in (("user1", "ARGON2ID"), ("user2", "BLF-CRYPT"), ("user3", "SHA512-CRYPT"))}
    table = write_password_table(peer_tempdir("mailferry-sasl-table-"), hashes)
    mx = daemon_factory(**submission_settings(f"texthash:{table}", smtpd_sasl_type="table")).start()
    for user in ("user1", "user2", "user3"):
        with client(mx.port, "127.0.0.2") as smtp:
            smtp.login(user, PASSWORD)
            smtp.sendmail(f"{user}@example.com", [REMOTE_RECIPIENT], b"Subject: t\r\n\r\nbody\r\n")
        mx.wait_for_log(f"sasl_method=PLAIN, sasl_username={user}")
    with client(mx.port, "127.0.0.6") as smtp:
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", "wrong"))
        assert (code, reply) == (535, b"5.7.8 Error: authentication failed: authentication failure")
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user4", PASSWORD))   # not in the table
        assert code == 535


def test_ldap_bind_backend_through_the_daemon(daemon_factory):
    from tests.integration.auth_peers import start_auth_slapd, write_ldap_sasl_cf
    from tests.peers import peer_tempdir
    slapd = start_auth_slapd()
    try:
        cf = write_ldap_sasl_cf(peer_tempdir("mailferry-ldap-sasl-"), slapd)
        mx = daemon_factory(**submission_settings(str(cf), smtpd_sasl_type="ldap")).start()
        with client(mx.port, "127.0.0.2") as smtp:
            assert smtp.docmd("AUTH", "PLAIN " + plain("*", PASSWORD))[0] == 535
            assert smtp.docmd("AUTH", "PLAIN " + plain(")(uid=*", PASSWORD))[0] == 535
            smtp.login("user3", PASSWORD)
            smtp.sendmail("user3@example.com", [REMOTE_RECIPIENT], b"Subject: t\r\n\r\nbody\r\n")
        mx.wait_for_log("sasl_method=PLAIN, sasl_username=user3")
        slapd.stop()
        with client(mx.port, "127.0.0.2") as smtp:
            code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user4", PASSWORD))
        assert code == 454 and reply.startswith(b"4.7.0 Temporary authentication failure")
    finally:
        slapd.stop()


# --- guessing passwords ---------------------------------------------------------------------------

def test_a_burst_of_auth_commands_is_throttled_per_client(daemon_factory):
    from tests.integration.auth_peers import write_password_table
    from tests.peers import peer_tempdir
    from mailferry.auth.passwords import make
    table = write_password_table(peer_tempdir("mailferry-sasl-table-"), {"user1": make(PASSWORD, "SHA512-CRYPT")})
    mx = daemon_factory(**submission_settings(f"texthash:{table}", smtpd_sasl_type="table",
                                              smtpd_client_auth_rate_limit="3", smtpd_error_sleep_time="0",
                                              smtpd_soft_error_limit="100", smtpd_hard_error_limit="100")).start()
    with client(mx.port, "127.0.0.7") as smtp:
        codes = [smtp.docmd("AUTH", "PLAIN " + plain("user1", f"guess{n}"))[0] for n in range(3)]
        assert codes == [535, 535, 535]
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))
        assert (code, reply) == (450, b"4.7.1 Error: too many AUTH commands from 127.0.0.7")
    with client(mx.port, "127.0.0.7") as smtp:    # a new session: the count is per client, not per session
        assert smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))[0] == 450
    with client(mx.port, "127.0.0.8") as smtp:    # another client is not held up
        assert smtp.docmd("AUTH", "PLAIN " + plain("user1", PASSWORD))[0] == 235
    log = mx.wait_for_log("AUTH command rate limit exceeded")
    assert "warning: AUTH command rate limit exceeded: 4 from unknown[127.0.0.7] for service 127.0.0.1:" in log


def test_wrong_passwords_count_toward_the_error_limits(daemon_factory):
    # smtpd_soft_error_limit: replies slow down by smtpd_error_sleep_time; the hard limit hangs up.
    # (The table backend: Dovecot's own auth_penalty would add up to 15 s a failure here.)
    from tests.integration.auth_peers import write_password_table
    from tests.peers import peer_tempdir
    from mailferry.auth.passwords import make
    table = write_password_table(peer_tempdir("mailferry-sasl-table-"), {"user1": make(PASSWORD, "BLF-CRYPT")})
    mx = daemon_factory(**submission_settings(f"texthash:{table}", smtpd_sasl_type="table",
                                              smtpd_soft_error_limit="1", smtpd_error_sleep_time="1s",
                                              smtpd_hard_error_limit="3")).start()
    with client(mx.port, "127.0.0.9") as smtp:
        assert smtp.docmd("AUTH", "PLAIN " + plain("user1", "guess1"))[0] == 535
        assert smtp.docmd("AUTH", "PLAIN " + plain("user1", "guess2"))[0] == 535
        code, reply = smtp.docmd("AUTH", "PLAIN " + plain("user1", "guess3"))
        assert code == 535
        code, reply = smtp.noop()   # already said, right after the third 535
        assert code == 421 and reply.endswith(b"Error: too many errors")
    log = mx.wait_for_log("too many errors after AUTH from unknown[127.0.0.9]")
    assert "auth=0/3" in log
