"""smtpd's side of the client limits: what each event answers, in Postfix's words."""

import pytest

from mailferry.anvil import clients
from mailferry.anvil.limits import ClientLimits
from mailferry.smtpd.client_limits import SessionLimits
from mailferry.tables.match_lists import NetworkList


@pytest.fixture(autouse=True)
def fresh_table(monkeypatch):
    monkeypatch.setattr(clients, "_table", clients.ClientTable())


def limits(**values) -> ClientLimits:
    settings = dict(service="smtp", unit=60.0, connection_count=0, connection_rate=0, message_rate=0,
                    recipient_rate=0, new_tls_rate=0, auth_rate=0, exceptions=NetworkList("127.0.0.0/8"))
    settings.update(values)
    return ClientLimits(**settings)


def session(address="192.0.2.7", **values) -> SessionLimits:
    return SessionLimits(limits(**values), "mx.example.test", address)


def test_the_session_over_the_count_gets_421_and_each_disconnect_frees_a_place():
    first, second, third = (session(connection_count=2) for _ in range(3))
    assert first.connect("unknown[192.0.2.7]") is None and second.connect("unknown[192.0.2.7]") is None
    refusal = third.connect("unknown[192.0.2.7]")
    assert str(refusal.reply) == "421 4.7.0 mx.example.test Error: too many connections from 192.0.2.7"
    assert refusal.warning == "Connection concurrency limit exceeded: 3 from unknown[192.0.2.7] for service smtp"
    third.disconnect()
    first.disconnect()
    first.disconnect()              # once only
    assert session(connection_count=2).connect("unknown[192.0.2.7]") is None


def test_connection_rate():
    for _ in range(2):
        visit = session(connection_rate=2)
        assert visit.connect("c") is None
        visit.disconnect()
    refusal = session(connection_rate=2).connect("unknown[192.0.2.7]")
    assert str(refusal.reply) == "421 4.7.0 mx.example.test Error: too many connections from 192.0.2.7"
    assert refusal.warning == "Connection rate limit exceeded: 3 from unknown[192.0.2.7] for service smtp"


def test_message_and_recipient_rates_answer_450():
    limited = session(message_rate=1, recipient_rate=1)
    assert limited.mail("c") is None and limited.rcpt("c") is None
    assert str(limited.mail("unknown[192.0.2.7]").reply) == "450 4.7.1 Error: too much mail from 192.0.2.7"
    refusal = limited.rcpt("unknown[192.0.2.7]")
    assert str(refusal.reply) == "450 4.7.1 Error: too many recipients from 192.0.2.7"
    assert refusal.warning == "Recipient address rate limit exceeded: 2 from unknown[192.0.2.7] for service smtp"


def test_new_tls_sessions_resumed_ones_free():
    limited = session(new_tls_rate=1)
    assert limited.starttls("c") is None
    assert limited.tls_established("c", session_reused=False) is None
    assert limited.tls_established("c", session_reused=True) is None
    assert limited.starttls("c") is None        # at the limit, not over it
    refusal = limited.tls_established("unknown[192.0.2.7]", session_reused=False)
    assert str(refusal.reply) == ("421 4.7.0 mx.example.test Error: too many new TLS sessions from "
                                  "unknown[192.0.2.7]")
    refusal = limited.starttls("unknown[192.0.2.7]")
    assert str(refusal.reply) == "454 4.7.0 Error: too many new TLS sessions from unknown[192.0.2.7]"
    assert refusal.warning == "Refusing STARTTLS request from unknown[192.0.2.7] for service smtp"


def test_exceptions_are_neither_counted_nor_limited():
    trusted = [session("127.0.0.1", connection_count=1, message_rate=1) for _ in range(3)]
    assert all(one.connect("c") is None and one.mail("c") is None and one.mail("c") is None for one in trusted)
    assert clients.table().take_peaks(60) == ({}, 0)


def test_a_limit_of_zero_counts_nothing():
    unlimited = session()
    assert unlimited.mail("c") is None and unlimited.rcpt("c") is None
    assert "message" not in clients.table().take_peaks(60)[0]
