"""cidr:, pcre: and socketmap: tables on the mail path of the real daemon, and the types mailferry
cannot serve refused at start with the parameter and its file:line.

- check_client_access cidr: decides per client address (127.0.0.2 and 127.0.0.3 are distinct
  loopback clients);
- virtual_alias_maps = pcre:, socketmap: rewrites recipients, what smtp-sink receives shows it;
- a socketmap server that is down makes RCPT a 451 (Postfix's "Temporary lookup failure"),
  and nothing is queued or lost.
"""

from __future__ import annotations

import re
import smtplib
import socket

import pytest

from tests.integration.conftest import world_readable_tempdir
from tests.integration.test_delivery import wait_for_line
from tests.peers import free_port
from tests.peers.socketmap import SocketmapServer

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

CLIENT_CIDR = ("# clients\n"
               "127.0.0.3                REJECT listed in our cidr table\n"
               "127.0.0.0/8              OK\n"
               "::/0                     DUNNO\n")
ALIAS_PCRE = ("/^(.+)\\+[^@]*@virtual\\.test$/   $1@mail1.internal\n"
              "/^sales@virtual\\.test$/          sales-team@mail1.internal\n")
SOCKETMAP_ALIASES = {"aliases": {"info@virtual.test": "alice@mail2.internal"},
                     "domains": {"relay.test": "OK"}}


def write_table(name: str, text: str) -> str:
    path = world_readable_tempdir("mailferry-tables-") / name
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def rcpt_from(port: int, source: str, recipient: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo("client.example.test")
        client.mail("sender@example.test")
        code, text = client.rcpt(recipient)
    return code, text.decode()


@pytest.fixture
def socketmap_server():
    server = SocketmapServer(SOCKETMAP_ALIASES).start()
    yield server
    server.stop()


@pytest.fixture
def routing_daemon(daemon_factory, smtp_sink, socketmap_server):
    return daemon_factory(
        relayhost=smtp_sink.nexthop, default_transport="smtp",
        smtpd_client_restrictions=f"check_client_access cidr:{write_table('clients.cidr', CLIENT_CIDR)}",
        virtual_alias_domains="virtual.test",
        virtual_alias_maps=(f"pcre:{write_table('virtual.pcre', ALIAS_PCRE)}, "
                            f"socketmap:{socketmap_server.endpoint}:aliases"),
        relay_domains=f"socketmap:{socketmap_server.endpoint}:domains",
    ).start()


def test_check_client_access_cidr_rejects_the_listed_client_and_accepts_its_network(routing_daemon):
    assert rcpt_from(routing_daemon.port, "127.0.0.3", "sales@virtual.test") == (
        554, "5.7.1 <unknown[127.0.0.3]>: Client host rejected: listed in our cidr table")
    wait_for_line(routing_daemon, r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.3\]: 554 5\.7\.1 "
                                  r"<unknown\[127\.0\.0\.3\]>: Client host rejected: listed in our cidr table;")
    assert rcpt_from(routing_daemon.port, "127.0.0.2", "sales@virtual.test")[0] == 250


def test_pcre_and_socketmap_virtual_aliases_route_the_mail(routing_daemon, smtp_sink, socketmap_server):
    message = "From: sender@example.test\r\nTo: friends\r\nSubject: aliases\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", routing_daemon.port, timeout=30) as client:
        refused = client.sendmail("sender@example.test",
                                  ["bob+news@virtual.test", "sales@virtual.test", "info@virtual.test"], message)
    assert refused == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=30)
    assert sorted(sunk.recipients) == ["alice@mail2.internal", "bob@mail1.internal", "sales-team@mail1.internal"]
    assert ("aliases", "info@virtual.test") in socketmap_server.requests
    routing_daemon.wait_for_log("status=sent", count=3)


def test_an_unknown_alias_is_refused_after_asking_the_socketmap_server(routing_daemon, socketmap_server):
    assert rcpt_from(routing_daemon.port, "127.0.0.1", "nobody@virtual.test") == (
        550, "5.1.1 <nobody@virtual.test>: Recipient address rejected: User unknown in virtual alias table")
    assert ("aliases", "nobody@virtual.test") in socketmap_server.requests


def test_relay_domains_on_a_socketmap_server_decide_what_an_outside_client_may_relay(routing_daemon,
                                                                                    socketmap_server):
    assert rcpt_from(routing_daemon.port, "127.0.0.2", "someone@relay.test")[0] == 250
    assert rcpt_from(routing_daemon.port, "127.0.0.2", "someone@elsewhere.test") == (
        454, "4.7.1 <someone@elsewhere.test>: Relay access denied")
    assert ("domains", "relay.test") in socketmap_server.requests


def test_relay_domains_on_a_socketmap_server_that_is_down_is_a_451(daemon_factory):
    daemon = daemon_factory(relay_domains=f"socketmap:inet:127.0.0.1:{free_port()}:domains").start()
    assert rcpt_from(daemon.port, "127.0.0.2", "someone@relay.test") == (
        451, "4.3.0 <someone@relay.test>: Temporary lookup failure")


def test_a_socketmap_server_that_is_down_gives_451_and_nothing_is_lost(daemon_factory, smtp_sink):
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            virtual_alias_domains="virtual.test",
                            virtual_alias_maps=f"socketmap:inet:127.0.0.1:{free_port()}:aliases").start()
    assert rcpt_from(daemon.port, "127.0.0.1", "info@virtual.test") == (
        451, "4.3.0 <info@virtual.test>: Temporary lookup failure")
    wait_for_line(daemon, r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 451 4\.3\.0 "
                          r"<info@virtual\.test>: Temporary lookup failure;")
    assert "Mail queue is empty" in daemon.mailq()
    assert smtp_sink.messages() == []


def test_a_table_type_mailferry_cannot_serve_stops_the_start_naming_parameter_and_line(daemon_factory):
    daemon = daemon_factory(virtual_alias_maps="memcache:/etc/postfix/memcache-aliases.cf")
    check = daemon.command("check")
    assert check.returncode == 1
    assert re.search(re.escape(str(daemon.config_dir / "main.cf")) + r", line \d+: parameter virtual_alias_maps: "
                     r"table memcache:\S+: memcache: table type not supported by mailferry", check.stderr)
    with pytest.raises(Exception):
        daemon.start(timeout=15)
    output = (daemon.directory / "stderr.log").read_text() + daemon.log()
    assert "memcache: table type not supported by mailferry" in output
    assert "Traceback" not in output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
