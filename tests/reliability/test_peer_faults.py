"""Peer faults through the REAL daemon, each with its expected outcome: deferred and later delivered,
or a 4xx to the client; never a bounce, never a loss, never a second copy.

- The relay destination down (nothing on its port), then up: deferred (4.4.1), then delivered.
- A slow destination: smtp-sink -w (it waits before answering DATA) past smtp_data_init_timeout,
  and one that never answers the final dot (past smtp_data_done_timeout): deferred, then
  delivered once when it answers in time.
- A destination that drops the connection in the middle of DATA: deferred, delivered once later.
- LDAP (virtual_alias_maps on two slapd peers, server_host listing both): both frozen (SIGSTOP)
  past the table's `timeout` -> 451 4.3.0 at RCPT, not a hang and not "unknown"; thawed, mail
  flows. (Primary down -> failover, and both stopped -> 4xx, are
  tests/integration/test_ldap_routing.py's.)
- Dovecot LMTP down: deferred, delivered when it is back.
- Dovecot auth down during submission: AUTH gets 454 4.7.0; back, AUTH works and mail goes.

Retry schedules are short (1-2 s, RETRY_FAST); every wait is on an event with a generous bound.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import shutil
import smtplib
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.auth_peers import PASSWORD, client, plain, start_dovecot_auth, stop_peer
from tests.peers import peer_tempdir
from tests.peers.dovecot import LmtpServer
from tests.peers.fault_scenarios import Scenario
from tests.peers.processes import children_map
from tests.peers.scripted_smtp import ScriptedSmtpServer
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS

pytest_plugins = ["tests.peers.conftest_plugin"]


@pytest.fixture
def scenario():
    with contextlib.ExitStack() as stack:
        yield Scenario(stack)


def test_relay_destination_down_then_up_is_deferred_then_delivered_once(scenario):
    daemon = scenario.make_daemon().start()
    for _ in range(3):
        scenario.send(expect=250)
    # Tried and deferred, more than once each: the retries really happen while it is down.
    log = daemon.wait_for_log("status=deferred", count=6, timeout=60)
    assert re.search(r"dsn=4\.4\.1, status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: "
                     r"Connection refused\)", log)
    scenario.sink_up()
    scenario.assert_everything_acknowledged_delivered_once()


def test_a_destination_slow_to_answer_data_past_smtp_data_init_timeout_defers_then_delivers(scenario):
    daemon = scenario.make_daemon(smtp_data_init_timeout="2s").start()
    # -w: answers DATA after 8 s; -p: no PIPELINING, so DATA's reply is awaited alone (pipelined,
    # smtp-sink holds the MAIL and RCPT replies back with it, and smtp_mail_timeout would apply).
    slow = scenario.sink_up(extra_args=("-p", "-w", "8"))
    scenario.send(expect=250)
    log = daemon.wait_for_log("status=deferred", timeout=60)
    assert "timed out" in log.split("status=deferred", 1)[1].splitlines()[0], log[-2000:]
    slow.stop()
    assert not any(b"X-Test-Id" in path.read_bytes() for path in slow.paths())   # no message got there
    scenario.sink_up()                                         # the same port, answering at once
    scenario.assert_everything_acknowledged_delivered_once()


def test_a_destination_silent_after_the_final_dot_defers_then_delivers_once(scenario):
    server = ScriptedSmtpServer(mode="stall_after_dot", port=scenario.relay_port).start()
    scenario.stack.callback(server.stop)
    daemon = scenario.make_daemon(smtp_data_done_timeout="2s").start()
    scenario.send(expect=250)
    server.wait_for("stalled")
    log = daemon.wait_for_log("status=deferred", timeout=60)
    assert "timed out" in log.split("status=deferred", 1)[1].splitlines()[0], log[-2000:]
    server.mode = "accept"
    delivered = server.wait_for_messages(1)
    scenario.assert_everything_acknowledged_delivered_once(x_test_ids(delivered))
    assert len(server.accepted) == 1


def test_a_destination_that_drops_the_connection_mid_data_defers_then_delivers_once(scenario):
    server = ScriptedSmtpServer(mode="drop_mid_data", port=scenario.relay_port).start()
    scenario.stack.callback(server.stop)
    daemon = scenario.make_daemon().start()
    scenario.send(body_bytes=20_000, expect=250)
    scenario.send(body_bytes=20_000, expect=250)
    server.wait_for("dropped", 2)
    daemon.wait_for_log("status=deferred", count=2, timeout=60)
    server.mode = "accept"
    delivered = server.wait_for_messages(2)
    scenario.assert_everything_acknowledged_delivered_once(x_test_ids(delivered))
    assert len(server.accepted) == 2


def test_dovecot_lmtp_down_defers_and_delivers_when_it_is_back(scenario):
    user = "alice@example.test"
    lmtp = LmtpServer(peer_tempdir("mailferry-lmtp-"), users=(user,))
    scenario.stack.callback(shutil.rmtree, lmtp.directory, True)
    daemon = scenario.make_daemon(local_transport=f"lmtp:inet:{lmtp.nexthop}").start()
    acknowledged = []
    for _ in range(2):
        test_id = uuid.uuid4().hex
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as smtp:
            smtp.sendmail("sender@example.test", [user], f"Subject: lmtp\r\nX-Test-Id: {test_id}\r\n\r\nhi\r\n")
        acknowledged.append(test_id)
    log = daemon.wait_for_log("status=deferred", count=2, timeout=60)
    assert "relay=none" in log and "Connection refused" in log
    lmtp.start()
    scenario.stack.callback(lmtp.stop)
    delivered = lmtp.wait_for_messages(user, 2, timeout=60)
    assert sorted(message.email["X-Test-Id"] for message in delivered) == sorted(acknowledged)
    log = daemon.wait_for_log("removed", count=2)
    assert "status=bounced" not in log and "non-delivery notification" not in log
    assert len(lmtp.messages(user)) == 2


def test_dovecot_auth_down_during_submission_is_454_then_works_when_back(scenario):
    auth = start_dovecot_auth()
    scenario.stack.callback(stop_peer, auth)
    daemon = scenario.make_daemon(smtpd_sasl_auth_enable="yes", smtpd_sasl_type="dovecot",
                                  smtpd_sasl_path=auth.sasl_path).start()
    sink = scenario.sink_up()
    login = "AUTH", "PLAIN " + plain("user1", PASSWORD)

    with client(daemon.port, "127.0.0.5") as smtp:
        assert smtp.docmd(*login)[0] == 235
    stop_entirely(auth)
    with client(daemon.port, "127.0.0.5") as smtp:
        code, reply = smtp.docmd(*login)
        assert code == 454 and reply.startswith(b"4.7.0 "), reply
        # Not logged in: relaying is refused, and nothing is queued.
        assert smtp.mail("user1@example.com")[0] == 250
        assert smtp.rcpt("rcpt@remote.test")[0] >= 400
    auth.start()
    deadline = time.monotonic() + 30
    with client(daemon.port, "127.0.0.5") as smtp:
        while (answer := smtp.docmd(*login))[0] != 235 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer[0] == 235, answer
        smtp.sendmail("user1@example.com", ["rcpt@remote.test"], b"Subject: after\r\nX-Test-Id: after\r\n\r\nhi\r\n")
    [message] = sink.wait_for_messages(1, timeout=60)
    assert message.email["X-Test-Id"] == "after"


def test_ldap_both_servers_frozen_past_timeout_is_451_at_rcpt_then_mail_flows(scenario, slapd_pair_restored):
    first, second = slapd_pair_restored
    table = ldap_aliases(scenario.directory, [first, second], timeout=3)
    daemon = scenario.make_daemon(virtual_alias_domains="example.com", virtual_alias_maps=f"ldap:{table}").start()
    sink = scenario.sink_up()
    with client(daemon.port, "127.0.0.1") as smtp:
        assert smtp.mail("sender@example.test")[0] == 250
        assert smtp.rcpt(SEED_ADDRESSES[0])[0] == 250               # the directory answers
    first.freeze()
    second.freeze()
    with client(daemon.port, "127.0.0.1") as smtp:
        assert smtp.mail("sender@example.test")[0] == 250
        code, reply = smtp.rcpt(SEED_ADDRESSES[1])                  # a key no earlier step cached
    assert (code, reply) == (451, f"4.3.0 <{SEED_ADDRESSES[1]}>: Temporary lookup failure".encode())
    first.thaw()
    second.thaw()
    deadline = time.monotonic() + 60
    while True:
        with client(daemon.port, "127.0.0.1") as smtp:
            assert smtp.mail("sender@example.test")[0] == 250
            code, reply = smtp.rcpt(SEED_ADDRESSES[2])
            if code == 250:
                assert smtp.data(b"Subject: after the thaw\r\nX-Test-Id: thaw\r\n\r\nhi\r\n")[0] == 250
                break
        assert code == 451 and time.monotonic() < deadline, (code, reply)
        time.sleep(0.5)
    [message] = sink.wait_for_messages(1, timeout=60)
    assert message.recipients == [SEED_ROUTING_ADDRESS] and message.email["X-Test-Id"] == "thaw"


def stop_entirely(server) -> None:
    """Stop a Dovecot and its children: its auth process outlives the master by many seconds and
    keeps answering the connections it has, so the service is not down until it goes too."""
    children = children_map().get(server.process.pid, [])
    server.stop()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, f"Dovecot's processes {children} still run after 60 s"
        time.sleep(0.1)


def ldap_aliases(directory: Path, servers, timeout: int) -> Path:
    """The seed's ldap-aliases.cf, with our servers and a short `timeout`."""
    path = directory / "ldap-aliases.cf"
    path.write_text(f"bind = no\nversion = 3\ntimeout = {timeout}\nsize_limit = 1\nexpansion_limit = 0\n"
                    f"server_host = {' '.join(server.url for server in servers)}\n"
                    "search_base = dc=example,dc=com\nscope = sub\n"
                    "query_filter = (&(objectclass=mailRecipient)(mail=%s))\n"
                    "result_attribute = mailRoutingAddress\nspecial_result_filter = %s@%d\n")
    path.chmod(0o644)
    return path


def x_test_ids(messages: list[bytes]) -> list[str]:
    ids = []
    for content in messages:
        match = re.search(rb"^X-Test-Id: (\w+)\r?$", content, re.MULTILINE)
        assert match, content[:500]
        ids.append(match.group(1).decode())
    return ids

