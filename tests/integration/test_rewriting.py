"""Address rewriting in the real daemon: virtual aliases and canonical maps.

The daemon relays everything to smtp-sink (relayhost), so what the sink
records is what mailferry sent on: the rewritten envelope and headers.
The expected replies are Postfix's (smtpd_check.c check_rcpt_maps; smtpd.c
for cleanup's CLEANUP_STAT_WRITE), and the NOQUEUE line is in its format.
"""

from __future__ import annotations

import shutil
import smtplib
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, world_readable_tempdir
from tests.integration.test_delivery import wait_for_line

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

ALIASES = ("info@virtual.test       john.smith@mail1.internal\n"
           "sales@virtual.test      info@virtual.test, archive@archive.test\n"
           "john@virtual.test       john.smith@mail1.internal\n")


def table(daemon_directory: Path, name: str, text: str) -> str:
    path = daemon_directory / name
    path.write_text(text)
    path.chmod(0o644)
    return f"texthash:{path}"


@pytest.fixture
def aliasing_daemon(daemon_factory, smtp_sink):
    directory = world_readable_tempdir("mailferry-rewrite-")
    daemon = daemon_factory(
        relayhost=smtp_sink.nexthop, default_transport="smtp",
        virtual_alias_domains="virtual.test",
        virtual_alias_maps=table(directory, "virtual", ALIASES),
        sender_canonical_maps=table(directory, "sender_canonical", "alice@example.test  Alice.Smith@example.test\n"),
        recipient_delimiter="+")
    return daemon.start()


def rcpt_reply(daemon, recipient: str) -> tuple[int, str]:
    """The reply to RCPT TO:<recipient> after EHLO client.test and MAIL FROM:<alice@example.test>."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.test")
        code, text = client.rcpt(recipient)
    return code, text.decode()


def test_an_unknown_address_in_a_virtual_alias_domain_is_rejected_at_rcpt(aliasing_daemon):
    assert rcpt_reply(aliasing_daemon, "nobody@virtual.test") == (
        550, "5.1.1 <nobody@virtual.test>: Recipient address rejected: User unknown in virtual alias table")
    wait_for_line(aliasing_daemon, r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 550 5\.1\.1 "
                                   r"<nobody@virtual\.test>: Recipient address rejected: User unknown in "
                                   r"virtual alias table; from=<alice@example\.test> to=<nobody@virtual\.test> "
                                   r"proto=ESMTP helo=<client\.test>")


def test_an_accepted_alias_is_delivered_rewritten(aliasing_daemon, smtp_sink):
    message = ("From: Alice <alice@example.test>\r\nTo: Sales <sales@virtual.test>\r\n"
               "Subject: aliases\r\n\r\nHello.\r\n")
    with smtplib.SMTP("127.0.0.1", aliasing_daemon.port, timeout=10) as client:
        refused = client.sendmail("alice@example.test", ["sales@virtual.test", "john+news@virtual.test"], message)
    assert refused == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sunk.sender == "Alice.Smith@example.test"
    assert sorted(sunk.recipients) == ["archive@archive.test", "john.smith+news@mail1.internal",
                                       "john.smith@mail1.internal"]
    # 127.0.0.1 is one of local_header_rewrite_clients (permit_inet_interfaces): its headers are
    # rewritten too; To: is not, as no recipient canonical map knows it (aliases are envelope only).
    assert sunk.email["From"] == "Alice <Alice.Smith@example.test>"
    assert sunk.email["To"] == "Sales <sales@virtual.test>"
    log = aliasing_daemon.wait_for_log("status=sent", count=3)
    assert ": to=<sales@virtual.test>" not in log                  # never delivered unrewritten
    assert ": to=<john.smith@mail1.internal>, orig_to=<sales@virtual.test>, relay=" in log


@pytest.fixture
def failing_directory_daemon(daemon_factory, smtp_sink):
    """virtual_alias_maps on an LDAP server that is not there: every lookup fails for now."""
    directory = world_readable_tempdir("mailferry-rewrite-")
    config = directory / "ldap-aliases.cf"
    config.write_text(f"server_host = ldap://127.0.0.1:{free_port()}\nsearch_base = dc=example,dc=test\n"
                      "query_filter = (mail=%s)\nresult_attribute = mailRoutingAddress\ntimeout = 2\n")
    config.chmod(0o644)

    def make(**extra):
        return daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                              virtual_alias_domains="virtual.test", virtual_alias_maps=f"ldap:{config}",
                              **extra).start()
    return make


def test_a_failed_lookup_at_rcpt_time_is_a_451_never_unknown(failing_directory_daemon, smtp_sink):
    daemon = failing_directory_daemon()
    assert rcpt_reply(daemon, "info@virtual.test") == (451, "4.3.0 <info@virtual.test>: Temporary lookup failure")
    wait_for_line(daemon, r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 451 4\.3\.0 "
                          r"<info@virtual\.test>: Temporary lookup failure;")
    assert smtp_sink.messages() == []


def test_a_failed_lookup_in_cleanup_queues_nothing(failing_directory_daemon, smtp_sink):
    # No RCPT-time check: the failure is cleanup's, after DATA, as Postfix's CLEANUP_STAT_WRITE.
    daemon = failing_directory_daemon(smtpd_reject_unlisted_recipient="no")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.test")
        assert client.rcpt("info@virtual.test")[0] == 250
        code, text = client.data(b"Subject: s\r\n\r\nbody\r\n")
    assert (code, text.decode()) == (451, "4.3.0 Error: queue file write error")
    wait_for_line(daemon, r"warning: \w+: virtual_alias_maps map lookup problem for info@virtual\.test: .* -- "
                          r"message not accepted, try again later")
    assert "Mail queue is empty" in daemon.mailq()
    assert smtp_sink.messages() == []


def test_smtp_generic_maps_rewrite_what_leaves_and_the_log_keeps_the_queued_address(daemon_factory, smtp_sink):
    directory = world_readable_tempdir("mailferry-rewrite-")
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            smtp_generic_maps=table(directory, "generic",
                                                    "alice@example.test  alice.smith@isp.example\n"
                                                    "@lan.test  @isp.example\n")).start()
    message = "From: Alice <alice@example.test>\r\nTo: carol@lan.test\r\nSubject: generic\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail("alice@example.test", ["carol@lan.test"], message) == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert (sunk.sender, sunk.recipients) == ("alice.smith@isp.example", ["carol@isp.example"])
    assert (sunk.email["From"], sunk.email["To"]) == ("Alice <alice.smith@isp.example>", "carol@isp.example")
    assert "to=<carol@lan.test>, relay=" in daemon.wait_for_log("status=sent")


PIPELINED = """\
S: 220
C: EHLO client.test
S: 250
S+ PIPELINING
C: MAIL FROM:<alice@example.test>
C: RCPT TO:<info@virtual.test>
C: RCPT TO:<nobody@virtual.test>
C: RCPT TO:<friend@elsewhere.test>
C: DATA
S: 250 2.1.0
S: 250 2.1.5
S: 550 5.1.1 <nobody@virtual.test>: Recipient address rejected: User unknown in virtual alias table
S: 250 2.1.5
S: 354
C: Subject: pipelined
C:
C: body
C: .
S: 250 2.0.0 Ok: queued as
C: QUIT
S: 221
"""


def test_pipelined_recipients_are_answered_in_order_while_lookups_wait(aliasing_daemon, smtp_sink):
    from tests.dialogs.script import SocketTransport, parse_script, run_script
    transport = SocketTransport("127.0.0.1", aliasing_daemon.port)
    try:
        run_script(parse_script(PIPELINED, "pipelined virtual aliases"), transport)
    finally:
        transport.close()
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ["friend@elsewhere.test", "john.smith@mail1.internal"]


# sender_bcc_maps, recipient_bcc_maps, always_bcc (Postfix's cleanup_addr.c): looked up after
# canonical rewriting, keys user@domain, user (our domains only), @domain; the copy gets no DSN.
@pytest.fixture
def tables_directory():
    """A directory for a test's tables, which the daemon can read; removed after the test."""
    directory = world_readable_tempdir("mailferry-tables-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def bcc_daemon(daemon_factory, smtp_sink, tables_directory):
    directory = tables_directory
    no_maps_port = free_port()
    daemon = daemon_factory(
        extra_listeners=(f"127.0.0.1:{no_maps_port} inet n - n - - smtpd"
                         " -o receive_override_options=no_address_mappings\n"),
        relayhost=smtp_sink.nexthop, default_transport="smtp", mydestination="localhost",
        # boss@localhost is ours (the bare `boss` key applies) yet goes to the sink too.
        local_transport=f"smtp:{smtp_sink.nexthop}", local_recipient_maps="",
        sender_canonical_maps=table(directory, "sender_canonical", "alice@example.test  Alice.Smith@example.test\n"),
        # Keyed by the canonical address: the unrewritten alice@example.test must not match.
        sender_bcc_maps=table(directory, "sender_bcc", "Alice.Smith@example.test  sent-archive@archive.test\n"
                                                       "alice@example.test  wrong@archive.test\n"),
        recipient_bcc_maps=table(directory, "recipient_bcc", "@sales.test  sales-archive@archive.test\n"
                                                             "boss  boss-copy@archive.test\n"),
        recipient_delimiter="+")
    daemon.no_maps_port = no_maps_port
    return daemon.start()


def test_bcc_maps_add_one_copy_each_and_the_original_arrives_once(bcc_daemon, smtp_sink):
    message = "From: alice@example.test\r\nTo: bob@sales.test\r\nSubject: bcc\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", bcc_daemon.port, timeout=10) as client:
        # Two recipients of sales.test: one BCC copy for both (the duplicate filter).
        assert client.sendmail("alice@example.test", ["bob@sales.test", "carol@sales.test"], message) == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sunk.sender == "Alice.Smith@example.test"
    assert sorted(sunk.recipients) == ["bob@sales.test", "carol@sales.test",
                                       "sales-archive@archive.test", "sent-archive@archive.test"]
    log = bcc_daemon.wait_for_log("status=sent", count=4)
    assert "wrong@archive.test" not in log


def test_recipient_bcc_maps_look_up_the_bare_user_only_in_our_domains(bcc_daemon, smtp_sink):
    with smtplib.SMTP("127.0.0.1", bcc_daemon.port, timeout=10) as client:
        assert client.sendmail("dave@example.test", ["boss@localhost"], b"Subject: 1\r\n\r\nx\r\n") == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ["boss-copy@archive.test", "boss@localhost"]
    with smtplib.SMTP("127.0.0.1", bcc_daemon.port, timeout=10) as client:
        assert client.sendmail("dave@example.test", ["boss@elsewhere.test"], b"Subject: 2\r\n\r\nx\r\n") == {}
    second = smtp_sink.wait_for_messages(2, timeout=20)[1]
    assert second.recipients == ["boss@elsewhere.test"]


def test_no_address_mappings_on_a_service_turns_the_bcc_maps_off(bcc_daemon, smtp_sink):
    with smtplib.SMTP("127.0.0.1", bcc_daemon.no_maps_port, timeout=10) as client:
        assert client.sendmail("alice@example.test", ["bob@sales.test"], b"Subject: nomap\r\n\r\nx\r\n") == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert (sunk.sender, sunk.recipients) == ("alice@example.test", ["bob@sales.test"])
    bcc_daemon.wait_for_log("status=sent")
    assert "archive.test" not in bcc_daemon.wait_for_log("removed")


def test_always_bcc_adds_one_copy_with_no_dsn_to_the_sender(daemon_factory, smtp_sink):
    daemon = daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp",
                            always_bcc="audit@archive.test").start()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail("dave@example.test", ["a@one.test", "b@one.test"], b"Subject: a\r\n\r\nx\r\n") == {}
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ["a@one.test", "audit@archive.test", "b@one.test"]
    parameters = {address: " ".join(given).upper() for address, given in zip(sunk.recipients, sunk.rcpt_parameters)}
    assert "NOTIFY=NEVER" in parameters["audit@archive.test"]
    assert "NOTIFY=NEVER" not in parameters["a@one.test"]


# allow_percent_hack and swap_bangpath (trivial-rewrite's rewrite.c and resolve.c): `user%host@ours`
# and `host!user@ours` are delivered to user@host, as Postfix's qmgr does after resolving them; a bare
# `user%host` or `host!user` is rewritten so in cleanup, and resolve_dequoted_address opens a quoted
# `"user@host"@ours`. With the three off, they stay as given: ours.test
# is local, and local_transport sends local mail to the sink too, so what arrives shows the address.
def routing_daemon(daemon_factory, smtp_sink, **extra):
    return daemon_factory(relayhost=smtp_sink.nexthop, default_transport="smtp", mydestination="ours.test",
                          local_transport=f"smtp:{smtp_sink.nexthop}", local_recipient_maps="",
                          mynetworks="127.0.0.0/8", **extra).start()


ROUTED = ["bob%remote.test@ours.test", "remote.test!carol@ours.test", "dave%remote.test", "other.test!erin",
          '"frank@remote.test"@ours.test']


def send_routed(daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("alice@example.test")[0] == 250
        for recipient in ROUTED:
            assert client.rcpt(f"<{recipient}>")[0] == 250, recipient
        assert client.data(b"Subject: routed\r\n\r\nx\r\n")[0] == 250


def test_the_percent_hack_and_bang_paths_are_resolved_by_default(daemon_factory, smtp_sink):
    daemon = routing_daemon(daemon_factory, smtp_sink)
    send_routed(daemon)
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ["bob@remote.test", "carol@remote.test", "dave@remote.test", "erin@other.test",
                                       "frank@remote.test"]   # resolve_dequoted_address = yes opens the quotes
    log = daemon.wait_for_log("status=sent", count=5)
    assert "to=<bob@remote.test>, orig_to=<bob%remote.test@ours.test>, relay=" in log


def test_with_all_three_off_the_addresses_stay_as_given(daemon_factory, smtp_sink):
    daemon = routing_daemon(daemon_factory, smtp_sink, allow_percent_hack="no", swap_bangpath="no",
                            resolve_dequoted_address="no", myorigin="ours.test")
    send_routed(daemon)
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ['"frank@remote.test"@ours.test', "bob%remote.test@ours.test",
                                       "dave%remote.test@ours.test", "other.test!erin@ours.test",
                                       "remote.test!carol@ours.test"]


# resolve_numeric_domain (resolve.c): `user@192.0.2.1` is refused as bad syntax by default (501 5.1.3,
# as Postfix's smtpd_check_addr); with yes it is resolved, and delivered, as `user@[192.0.2.1]`.
def test_a_numeric_domain_is_bad_syntax_unless_resolve_numeric_domain(daemon_factory, smtp_sink):
    refusing = routing_daemon(daemon_factory, smtp_sink)
    with smtplib.SMTP("127.0.0.1", refusing.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@example.test")
        assert client.rcpt("<u@127.0.0.1>") == (501, b"5.1.3 Bad recipient address syntax")
    daemon = routing_daemon(daemon_factory, smtp_sink, resolve_numeric_domain="yes")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("alice@example.test")[0] == 250
        assert client.rcpt("<u@127.0.0.1>")[0] == 250     # [127.0.0.1] is ours: local_transport
        assert client.rcpt("<v@192.0.2.1>")[0] == 250     # mynetworks may relay: relayhost
        assert client.data(b"Subject: numeric\r\n\r\nx\r\n")[0] == 250
    [sunk] = smtp_sink.wait_for_messages(1, timeout=20)
    assert sorted(sunk.recipients) == ["u@[127.0.0.1]", "v@[192.0.2.1]"]
    assert "to=<u@[127.0.0.1]>, orig_to=<u@127.0.0.1>" in daemon.wait_for_log("status=sent", count=2)
