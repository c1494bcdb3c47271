"""The seed's directory routing moved from LDAP to SQL, end to end through the real daemon
(issue 15, "Done when" 2): `virtual_alias_maps = proxy:mysql:/…/aliases.cf` (MariaDB) and
`virtual_alias_maps = pgsql:/…/aliases.cf` (PostgreSQL) route John Smith's five addresses to his
routing address, as test_ldap_routing.py does with the two slapd; a key built to break out of
the query's quotes is an unknown user (550), not a match; the database stopped gives 451 and
nothing accepted is lost, and mail flows again once it is back; a proxy: table that
proxy_read_maps does not list is refused, as Postfix's proxymap refuses it.

The host relays the rewritten mail to smtp-sink (relayhost), which records each recipient.
"""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from tests.integration.conftest import world_readable_tempdir
from tests.integration.test_delivery import wait_for_line
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS, SHARED_ADDRESS, SHARED_ROUTING_ADDRESSES
from tests.peers.sql_server import PASSWORD

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

SENDER = "alice@example.test"
QUERY = "SELECT goto FROM aliases WHERE address='%s' AND active = 1"
INJECTION = "x' OR 'x'='x@example.com"


def aliases_cf(server) -> str:
    directory = world_readable_tempdir("mailferry-sql-aliases-")
    path = directory / "aliases.cf"
    path.write_text(f"hosts = inet:127.0.0.1:{server.port}\nuser = postfix\npassword = {PASSWORD}\n"
                    f"dbname = mail\nquery = {QUERY}\n")
    path.chmod(0o644)    # the daemon reads it as mail_owner
    return str(path)


@pytest.fixture(params=["proxy:mysql", "pgsql"])
def routed(request, daemon_factory, smtp_sink):
    """(daemon, database server): a host relaying to smtp-sink, aliases from the SQL server."""
    kind = request.param
    server = request.getfixturevalue("mariadb_restored" if kind == "proxy:mysql" else "postgresql_restored")
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            virtual_alias_domains="example.com",
                            virtual_alias_maps=f"{kind}:{aliases_cf(server)}").start()
    return daemon, server


def message_to(address: str, subject: str) -> str:
    return f"From: {SENDER}\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nHello.\r\n"


def session(daemon) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=60)
    client.ehlo("client.test")
    return client


def test_each_seed_address_is_routed_to_the_routing_address(routed, smtp_sink):
    daemon, _ = routed
    with session(daemon) as client:
        for number, address in enumerate(SEED_ADDRESSES):
            assert client.sendmail(SENDER, [address], message_to(address, f"seed {number}")) == {}
        assert client.sendmail(SENDER, [SHARED_ADDRESS], message_to(SHARED_ADDRESS, "shared")) == {}
    sunk = smtp_sink.wait_for_messages(len(SEED_ADDRESSES) + 1, timeout=60)
    by_to = {message.email["To"]: sorted(message.recipients) for message in sunk}
    assert by_to == {**{address: [SEED_ROUTING_ADDRESS] for address in SEED_ADDRESSES},
                     SHARED_ADDRESS: sorted(SHARED_ROUTING_ADDRESSES)}
    log = daemon.wait_for_log("status=sent", count=len(SEED_ADDRESSES) + 2)
    for address in SEED_ADDRESSES:
        assert re.search(rf"to=<{re.escape(SEED_ROUTING_ADDRESS)}>, orig_to=<{re.escape(address)}>, "
                         r".*status=sent", log), address


def test_a_quote_breaking_key_is_an_unknown_user_not_a_match(routed, smtp_sink):
    daemon, _ = routed
    with session(daemon) as client:
        assert client.mail(SENDER)[0] == 250
        code, reply = client.rcpt(f'"{INJECTION.split("@")[0]}"@example.com')
        assert code == 550 and b"User unknown in virtual alias table" in reply, (code, reply)
        code, reply = client.rcpt("%@example.com")
        assert code == 550 and b"User unknown in virtual alias table" in reply, (code, reply)


def test_database_down_is_451_nothing_accepted_is_lost_and_mail_flows_when_back(routed, smtp_sink):
    daemon, server = routed
    with session(daemon) as client:            # connected and answered: the connection is kept
        assert client.sendmail(SENDER, [SEED_ADDRESSES[0]], message_to(SEED_ADDRESSES[0], "before")) == {}
    # RCPT answered while the database was up; it stops before the end of DATA: cleanup's own
    # lookup fails, so the message is refused (451), not accepted and lost or sent unrewritten.
    with session(daemon) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SEED_ADDRESSES[1])[0] == 250
        server.stop()
        reply = client.data(message_to(SEED_ADDRESSES[1], "during").encode())
    assert reply[0] == 451, reply
    with session(daemon) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SEED_ADDRESSES[2]) == (451, f"4.3.0 <{SEED_ADDRESSES[2]}>: Temporary lookup "
                                                       f"failure".encode())
    wait_for_line(daemon, r"warning: .*(connect to|query failed).*127\.0\.0\.1:" + str(server.port))
    server.start()
    deadline = time.monotonic() + 60
    while True:
        with session(daemon) as client:
            assert client.mail(SENDER)[0] == 250
            code, reply = client.rcpt(SEED_ADDRESSES[2])
            if code == 250:
                assert client.data(message_to(SEED_ADDRESSES[2], "after").encode())[0] == 250
                break
        assert code == 451 and time.monotonic() < deadline, (code, reply)
        time.sleep(0.5)
    sunk = smtp_sink.wait_for_messages(2, timeout=60)
    assert sorted(message.email["Subject"] for message in sunk) == ["after", "before"]
    assert all(message.recipients == [SEED_ROUTING_ADDRESS] for message in sunk)


def test_a_proxy_table_missing_from_proxy_read_maps_is_refused_as_proxymap_does(daemon_factory, mariadb_restored):
    spec = f"proxy:mysql:{aliases_cf(mariadb_restored)}"
    daemon = daemon_factory(virtual_alias_domains="example.com", virtual_alias_maps=spec,
                            proxy_read_maps="$local_recipient_maps").start()
    with session(daemon) as client:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(SEED_ADDRESSES[0]) == (451, f"4.3.0 <{SEED_ADDRESSES[0]}>: Temporary lookup "
                                                       f"failure".encode())
    inner = spec.removeprefix("proxy:")
    wait_for_line(daemon, rf'proxymap\[\d+\]: warning: request for unapproved table: "{re.escape(inner)}"')
    wait_for_line(daemon, rf"proxymap\[\d+\]: warning: to approve this table for read-only access, list "
                          rf"{re.escape(spec)} in main.cf:proxy_read_maps")
