"""auth/server.py: what EHLO offers, and a session's steps against a backend the test controls."""

from __future__ import annotations

import asyncio
import base64

import pytest

from mailferry.anvil import clients
from mailferry.auth.mechanisms import Challenge, Credentials
from mailferry.auth.server import Accepted, Refused, SaslServer, Verification, offered_mechanisms
from mailferry.auth.verdict import FAIL, OK, TEMPFAIL, Verdict
from mailferry.config.config import ConfigValueError
from mailferry.tables.match_lists import NetworkList


class FakeBackend:
    name = "fake"
    failure_delay = 0.0

    def __init__(self, verdict: Verdict):
        self.verdict = verdict
        self.seen: list = []

    async def verify(self, credentials, client):
        self.seen.append((credentials, client))
        return self.verdict

    def close(self):
        pass


def server(verdict=Verdict(OK, "user1"), rate_limit=0, service="smtp") -> SaslServer:
    return SaslServer(FakeBackend(verdict), service, "smtp", None, rate_limit, 60.0, NetworkList("127.0.0.1"),
                      False)


def plain(user="user1", password="pw") -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def run(step):
    assert isinstance(step, Verification), step
    return asyncio.run(step.run())


@pytest.mark.parametrize("options, offered", [
    ([], ("PLAIN", "LOGIN")), (["noanonymous"], ("PLAIN", "LOGIN")), (["noplaintext"], ()),
    (["noanonymous", "noactive"], ()), (["mutual_auth"], ()), (["nodictionary"], ("PLAIN", "LOGIN")),
])
def test_security_options_decide_what_is_offered(options, offered):
    assert offered_mechanisms(options, "main.cf: ") == offered


def test_an_unknown_security_option_is_a_configuration_error():
    with pytest.raises(ConfigValueError, match="unknown SASL security option 'noplain'"):
        offered_mechanisms(["noplain"], "main.cf, line 3: parameter smtpd_sasl_security_options: ")


def test_success_names_method_and_backend_username():
    session = server(Verdict(OK, "User1@Example.com")).session("192.0.2.1", "unknown[192.0.2.1]", "192.0.2.9")
    outcome = run(session.begin("PLAIN", plain(), ("PLAIN", "LOGIN"), tls_active=True))
    assert outcome == Accepted("PLAIN", "User1@Example.com")
    credentials, context = session.server.backend.seen[0]
    assert credentials == Credentials("", "user1", "pw")
    assert (context.address, context.local_address, context.tls_active) == ("192.0.2.1", "192.0.2.9", True)


def test_login_exchange_goes_through_challenges():
    session = server().session("192.0.2.1", "unknown[192.0.2.1]", "192.0.2.9")
    assert isinstance(session.begin("LOGIN", None, ("PLAIN", "LOGIN"), False), Challenge)
    assert isinstance(session.respond(base64.b64encode(b"user1").decode()), Challenge)
    assert run(session.respond(base64.b64encode(b"pw").decode())) == Accepted("LOGIN", "user1")


def test_failure_is_535_with_the_reason_and_a_warning_without_password():
    session = server(Verdict(FAIL, reason="authentication failure")).session("192.0.2.1", "unknown[192.0.2.1]", "")
    outcome = run(session.begin("PLAIN", plain(password="hunter2"), ("PLAIN",), False))
    assert isinstance(outcome, Refused)
    assert str(outcome.refusal.reply) == "535 5.7.8 Error: authentication failed: authentication failure"
    assert outcome.warning == ("unknown[192.0.2.1]: SASL PLAIN authentication failed: authentication failure, "
                               "sasl_username=user1")
    assert "hunter2" not in outcome.warning


def test_backend_down_is_454():
    session = server(Verdict(TEMPFAIL, reason="Can't connect to authentication server")).session("a", "c", "")
    outcome = run(session.begin("PLAIN", plain(), ("PLAIN",), False))
    assert str(outcome.refusal.reply) == ("454 4.7.0 Temporary authentication failure: "
                                          "Can't connect to authentication server")


def test_a_backend_that_raises_is_454_not_a_crash():
    class Broken(FakeBackend):
        async def verify(self, credentials, client):
            raise RuntimeError("bug")
    sasl = server()
    sasl.backend = Broken(Verdict(OK))
    outcome = run(sasl.session("a", "c", "").begin("PLAIN", plain(), ("PLAIN",), False))
    assert outcome.refusal.reply.code == 454


def test_a_mechanism_not_offered_now_is_refused_as_postfix_with_dovecot_does():
    outcome = server().session("a", "c", "").begin("PLAIN", plain(), (), False)
    assert str(outcome.refusal.reply) == ("535 5.7.8 Error: authentication failed: "
                                          "Invalid authentication mechanism: 'PLAIN'")


def test_malformed_response_is_535_without_asking_the_backend():
    sasl = server()
    outcome = sasl.session("a", "c", "").begin("PLAIN", "!!!", ("PLAIN",), False)
    assert outcome.refusal.reply.code == 535 and sasl.backend.seen == []


def test_auth_rate_limit_gives_postfixs_450(monkeypatch):
    monkeypatch.setattr(clients, "_table", clients.ClientTable())
    sasl = server(rate_limit=2, service="submission")
    session = sasl.session("192.0.2.7", "unknown[192.0.2.7]", "")
    for _ in range(2):
        assert isinstance(session.begin("PLAIN", plain(), ("PLAIN",), False), Verification)
    refused = session.begin("PLAIN", plain(), ("PLAIN",), False)
    assert str(refused.refusal.reply) == "450 4.7.1 Error: too many AUTH commands from 192.0.2.7"
    assert refused.warning == ("AUTH command rate limit exceeded: 3 from unknown[192.0.2.7] "
                               "for service submission")
    # smtpd_client_event_limit_exceptions (here 127.0.0.1) are never counted.
    trusted = sasl.session("127.0.0.1", "localhost[127.0.0.1]", "")
    for _ in range(5):
        assert isinstance(trusted.begin("PLAIN", plain(), ("PLAIN",), False), Verification)
