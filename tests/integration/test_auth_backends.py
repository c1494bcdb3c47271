"""The AUTH backends against real peers, without the daemon: Dovecot's auth protocol (real
Dovecot, passwd-file) and LDAP bind (real slapd)."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.auth.dovecot import DovecotBackend
from mailferry.auth.ldap_bind import LdapBindBackend
from mailferry.auth.mechanisms import Credentials
from mailferry.auth.verdict import FAIL, OK, TEMPFAIL, ClientContext
from tests.integration.auth_peers import (  # noqa: F401 (dovecot_auth, auth_slapd are fixtures)
    PASSWORD, STAR_LOGIN, STAR_PASSWORD, auth_slapd, dovecot_auth, start_auth_slapd, start_dovecot_auth, stop_peer,
    write_ldap_sasl_cf,
)
from tests.peers import free_port, peer_tempdir

pytestmark = pytest.mark.integration

# Dovecot penalises failures per remote IP (auth_penalty): each test that fails uses its own.
CLIENT = ClientContext("127.0.0.20", "127.0.0.1", False)


def verify(backend, user, password, client=CLIENT, authzid=""):
    return asyncio.run(backend.verify(Credentials(authzid, user, password), client))


@pytest.mark.parametrize("path", ["inet", "unix"])
def test_dovecot_accepts_the_right_password(dovecot_auth, path):
    backend = DovecotBackend(dovecot_auth.sasl_path if path == "inet" else str(dovecot_auth.unix_path),
                             "/nonexistent")
    verdict = verify(backend, "user1", PASSWORD)
    assert (verdict.outcome, verdict.username) == (OK, "user1")


def test_dovecot_refuses_a_wrong_password_and_an_unknown_user(dovecot_auth):
    backend = DovecotBackend(dovecot_auth.sasl_path, "/nonexistent")
    assert verify(backend, "user1", "wrong", ClientContext("127.0.0.21", "127.0.0.1", False)).outcome == FAIL
    assert verify(backend, "nobody", PASSWORD, ClientContext("127.0.0.22", "127.0.0.1", False)).outcome == FAIL


def test_dovecot_relative_path_is_under_queue_directory(dovecot_auth):
    backend = DovecotBackend("run/auth-client", str(dovecot_auth.directory))
    assert backend.target == str(dovecot_auth.unix_path)
    assert verify(backend, "user2", PASSWORD).outcome == OK


def test_dovecot_requests_share_one_connection(dovecot_auth):
    backend = DovecotBackend(dovecot_auth.sasl_path, "/nonexistent")

    async def many():
        users = ["user1", "user2", "user3", "user4"] * 5
        verdicts = await asyncio.gather(*(backend.verify(Credentials("", user, PASSWORD), CLIENT) for user in users))
        return users, verdicts, backend._connection
    users, verdicts, connection = asyncio.run(many())
    assert [(v.outcome, v.username) for v in verdicts] == [(OK, user) for user in users]
    assert connection._next_id == len(users)
    assert "PLAIN" in connection.mechanisms and "LOGIN" in connection.mechanisms


def test_dovecot_down_is_a_temporary_failure():
    backend = DovecotBackend(f"inet:127.0.0.1:{free_port()}", "/nonexistent")
    verdict = verify(backend, "user1", PASSWORD)
    assert verdict.outcome == TEMPFAIL and verdict.reason.startswith("Can't connect to authentication server")


def test_dovecot_restarted_between_logins_is_reconnected():
    server = start_dovecot_auth()
    try:
        backend = DovecotBackend(server.sasl_path, "/nonexistent")

        async def twice():
            first = await backend.verify(Credentials("", "user1", PASSWORD), CLIENT)
            server.stop()
            server.start()
            second = await backend.verify(Credentials("", "user1", PASSWORD), CLIENT)
            return first, second
        first, second = asyncio.run(twice())
        assert first.outcome == OK and second.outcome == OK
    finally:
        stop_peer(server)


def test_dovecot_never_sees_a_tab_in_a_login_name(dovecot_auth):
    backend = DovecotBackend(dovecot_auth.sasl_path, "/nonexistent")
    assert verify(backend, "user1\tuser=admin", PASSWORD).outcome == FAIL
    assert backend._connection is None   # refused before anything was sent


# --- LDAP bind -----------------------------------------------------------------------------------

@pytest.fixture
def ldap_backend(auth_slapd):
    directory = peer_tempdir("mailferry-ldap-sasl-")
    backend = LdapBindBackend(str(write_ldap_sasl_cf(directory, auth_slapd)), "", 0.0)
    yield backend
    backend.close()


def test_ldap_bind_accepts_the_right_password(ldap_backend):
    verdict = verify(ldap_backend, "user1", PASSWORD)
    assert (verdict.outcome, verdict.username) == (OK, "user1")


def test_ldap_bind_login_names_fold_case_as_ldap_table_keys(ldap_backend):
    assert verify(ldap_backend, "USER3", PASSWORD) .username == "user3"


@pytest.mark.parametrize("user, password", [("user1", "wrong"), ("user1", ""), ("nobody", PASSWORD)])
def test_ldap_bind_refuses(ldap_backend, user, password):
    assert verify(ldap_backend, user, password).outcome == FAIL


@pytest.mark.parametrize("login", ["*", "user*", ")(uid=*", "*)(uid=*", "user1)(|(uid=*", "\\2A"])
def test_ldap_bind_wildcards_and_filter_injection_match_nothing(ldap_backend, login):
    # With a search widened by the login name, these would find user1..user4 (PASSWORD).
    assert verify(ldap_backend, login, PASSWORD).outcome == FAIL


def test_ldap_bind_a_literal_star_matches_only_itself(ldap_backend):
    assert verify(ldap_backend, STAR_LOGIN, STAR_PASSWORD).outcome == OK
    assert verify(ldap_backend, STAR_LOGIN, PASSWORD).outcome == FAIL


def test_ldap_bind_with_the_directory_down_is_a_temporary_failure():
    server = start_auth_slapd()
    directory = peer_tempdir("mailferry-ldap-sasl-")
    backend = LdapBindBackend("ldap:" + str(write_ldap_sasl_cf(directory, server)), "", 0.0)
    try:
        assert verify(backend, "user2", PASSWORD).outcome == OK
        server.stop()
        assert verify(backend, "user2", PASSWORD).outcome == TEMPFAIL
    finally:
        backend.close()
        server.stop()


def test_ldap_bind_local_domain_is_appended_to_bare_names(auth_slapd):
    directory = peer_tempdir("mailferry-ldap-sasl-")
    path = write_ldap_sasl_cf(directory, auth_slapd)
    path.write_text(path.read_text().replace("(uid=%s)", "(uid=%u)"))
    backend = LdapBindBackend(str(path), "example.com", 0.0)
    try:
        verdict = verify(backend, "user4", PASSWORD)
        assert (verdict.outcome, verdict.username) == (OK, "user4@example.com")
    finally:
        backend.close()
