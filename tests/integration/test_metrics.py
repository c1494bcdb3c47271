"""Prometheus metrics through the real daemon (docs/metrics.md): known traffic, then a scrape.

The daemon runs its usual two processes (the master and one smtpd worker: the machine's two
CPUs), so connections land in either and the scrape must add both up. The traffic:

  SINK     messages to sink.test, relayed to smtp-sink                        status=sent
  CLOSED   messages to closed.test, whose next hop is a closed port           status=deferred
  REJECTED messages to reject.test, whose next hop is this daemon itself: the delivery comes
           back over STARTTLS (outbound and inbound TLS), and RCPT is refused for the HELO
           name the daemon's own smtp client says (check_helo_access)         status=bounced,
           and its bounce notice goes to sender@example.test (local: discard) status=sent
  one AUTH PLAIN that fails, after STARTTLS
  one message from mailferry-sendmail (pickup) to sink.test                   status=sent

Every wait is on the daemon's log lines; the scrape comes after them, and each value is
compared exactly.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.auth_peers import make_certificate
from tests.integration.conftest import base_main_cf, free_port, world_readable_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.processes import socket_inodes

pytestmark = pytest.mark.integration

SINK, CLOSED, REJECTED = 3, 2, 1
HELO_OF_OUR_CLIENT = "mx.example.test"     # smtp_helo_name = $myhostname


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def send(port: int, recipient: str, tls_ca: Path | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.sendmail("sender@example.test", [recipient], b"Subject: metrics\r\n\r\nbody\r\n")


def fail_auth(port: int, ca: Path) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False
        smtp.starttls(context=context)
        smtp.ehlo("client.example")
        credentials = base64.b64encode(b"\0nobody-here\0wrong password").decode()
        code, _ = smtp.docmd("AUTH", "PLAIN " + credentials)
        assert code == 535


@pytest.fixture(scope="module")
def metered(smtp_sink_module):
    """The daemon with metrics on, after the known traffic; (daemon, metrics port, smtpd service)."""
    directory = world_readable_tempdir("mailferry-metrics-")
    ca, cert, key = make_certificate()
    port, metrics_port, closed_port = free_port(), free_port(), free_port()
    (directory / "transport").write_text(f"sink.test smtp:{smtp_sink_module.nexthop}\n"
                                         f"closed.test smtp:[127.0.0.1]:{closed_port}\n"
                                         f"reject.test smtp:[127.0.0.1]:{port}\n")
    (directory / "helo_access").write_text(f"{HELO_OF_OUR_CLIENT} REJECT no mail from myself\n")
    (directory / "sasl_users").write_text("user1 {SHA512-CRYPT}$6$salt$notthepassword\n")
    main_cf = base_main_cf(
        directory, mailferry_metrics_listen=f"127.0.0.1:{metrics_port}",
        transport_maps=f"texthash:{directory}/transport",
        smtpd_recipient_restrictions=f"check_helo_access texthash:{directory}/helo_access, "
                                     "permit_mynetworks, reject_unauth_destination",
        smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key),
        smtpd_tls_loglevel="1", smtp_tls_security_level="may", smtp_tls_loglevel="1",
        smtpd_sasl_auth_enable="yes", smtpd_sasl_type="table", smtpd_sasl_path=f"texthash:{directory}/sasl_users")
    master_cf = (f"127.0.0.1:{port} inet n - n - - smtpd\n"
                 "pickup unix n - n 60 1 pickup\n"
                 "smtp unix - - n - - smtp\n"
                 "discard unix - - n - - discard\n")
    daemon = MailferryDaemon(directory, main_cf, master_cf, port)
    try:
        daemon.start()
        for _ in range(SINK):
            send(port, "someone@sink.test")
        for _ in range(CLOSED):
            send(port, "someone@closed.test")
        for _ in range(REJECTED):
            send(port, "someone@reject.test")
        fail_auth(port, ca)
        sendmail = Path(sys.executable).parent / "mailferry-sendmail"
        result = subprocess.run([str(sendmail), "-C", str(daemon.config_dir), "-f", "sender@example.test",
                                 "picked@sink.test"], input=b"Subject: pickup\n\nbody\n", capture_output=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        daemon.wait_for_log("status=sent", count=SINK + 1 + REJECTED)   # the sink's and the notices
        daemon.wait_for_log("status=deferred", count=CLOSED)
        daemon.wait_for_log("status=bounced", count=REJECTED)
        daemon.wait_for_log(": removed", count=SINK + 1 + REJECTED * 2)
        yield daemon, metrics_port, f"127.0.0.1:{port}"
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(ca.parent.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def smtp_sink_module():
    from tests.peers.smtp_sink import SmtpSink
    sink = SmtpSink(world_readable_tempdir("mailferry-metrics-sink-")).start()
    yield sink
    sink.stop()
    shutil.rmtree(sink.directory, ignore_errors=True)


def connections(daemon) -> int:
    """Every connection the daemon's smtpd saw: the clients', its own delivery's, and the
    start-up probe's (MailferryDaemon.start waits for the port by connecting)."""
    return SINK + CLOSED + REJECTED * 2 + 1 + 1


def test_the_daemon_runs_more_than_one_process(metered):
    daemon, _, _ = metered
    assert len(set(re.findall(r"smtpd\[(\d+)\]", daemon.log()))) >= 2 or os.cpu_count() == 1


def test_connections_and_sessions_match_the_traffic(metered):
    daemon, metrics_port, service = metered
    daemon.wait_for_log("disconnect from", count=connections(daemon))
    samples = scrape(metrics_port)
    assert value(samples, "mailferry_smtpd_connects_total", service=service) == connections(daemon)
    assert value(samples, "mailferry_smtpd_sessions", service=service) == 0


def test_messages_received_delivered_deferred_and_bounced_by_transport(metered):
    _, metrics_port, _ = metered
    samples = scrape(metrics_port)
    assert value(samples, "mailferry_messages_received_total", source="smtpd") == SINK + CLOSED + REJECTED
    assert value(samples, "mailferry_messages_received_total", source="pickup") == 1
    status = "mailferry_delivery_status_total"
    assert value(samples, status, transport="smtp", status="sent") == SINK + 1
    assert value(samples, status, transport="smtp", status="deferred") == CLOSED
    assert value(samples, status, transport="smtp", status="bounced") == REJECTED
    assert value(samples, status, transport="discard", status="sent") == REJECTED   # the bounce notices
    assert value(samples, "mailferry_delivery_delay_seconds_count", transport="smtp") == SINK + 1
    assert value(samples, "mailferry_delivery_delay_seconds_count", transport="discard") == REJECTED
    assert value(samples, "mailferry_delivery_delay_seconds_bucket", transport="smtp", le="+Inf") == SINK + 1


def test_queue_size_by_state(metered):
    _, metrics_port, _ = metered
    samples = scrape(metrics_port)
    assert {state: value(samples, "mailferry_queue_messages", queue=state)
            for state in ("incoming", "active", "deferred", "hold")} == {
        "incoming": 0, "active": 0, "deferred": CLOSED, "hold": 0}


def test_tls_outcomes_inbound_and_outbound(metered):
    daemon, metrics_port, _ = metered
    log = daemon.log()
    inbound = re.findall(r"Anonymous TLS connection established from \S+: (TLSv[\d.]+)", log)
    outbound = re.findall(r"Untrusted TLS connection established to \S+: (TLSv[\d.]+)", log)
    assert len(inbound) == REJECTED + 1 and len(outbound) == REJECTED     # the delivery's and the AUTH's
    samples = scrape(metrics_port)
    for protocol in set(inbound):
        assert value(samples, "mailferry_smtpd_tls_connections_total", trust="anonymous",
                     protocol=protocol) == inbound.count(protocol)
    assert value(samples, "mailferry_smtp_tls_connections_total", trust="untrusted",
                 protocol=outbound[0]) == REJECTED
    assert value(samples, "mailferry_smtpd_tls_connections_total", trust="failed", protocol="") == 0


def test_auth_failures_by_mechanism(metered):
    daemon, metrics_port, _ = metered
    daemon.wait_for_log("SASL PLAIN authentication failed")
    samples = scrape(metrics_port)
    assert value(samples, "mailferry_smtpd_sasl_authentication_failures_total", mechanism="PLAIN") == 1
    assert value(samples, "mailferry_smtpd_sasl_authentication_failures_total", mechanism="LOGIN") == 0


def test_lookups_are_timed_by_table(metered):
    daemon, metrics_port, _ = metered
    samples = scrape(metrics_port)
    directory = daemon.directory
    transport = value(samples, "mailferry_table_lookup_duration_seconds_count",
                      table=f"texthash:{directory}/transport")
    helo = value(samples, "mailferry_table_lookup_duration_seconds_count", table=f"texthash:{directory}/helo_access")
    # check_helo_access runs at each RCPT: the clients' "client.example" is looked up whole, then as its
    # parent domain "example" (smtpd_access_maps in parent_domain_matches_subdomains); the daemon's own
    # "mx.example.test" is found at once.
    assert helo == 2 * (SINK + CLOSED + REJECTED) + REJECTED
    assert transport >= SINK + CLOSED + REJECTED + 1
    assert value(samples, "mailferry_table_lookup_duration_seconds_sum",
                 table=f"texthash:{directory}/transport") > 0


def test_a_reload_keeps_the_counts(metered):
    daemon, metrics_port, service = metered
    before = scrape(metrics_port)
    assert daemon.command("reload").returncode == 0
    daemon.wait_for_log("reload -- version")
    after = scrape(metrics_port)
    kept = [key for key in before if key[0].endswith("_total")]
    assert kept and {key: after.get(key) for key in kept} == {key: before[key] for key in kept}
    send(daemon.port, "someone@sink.test")
    daemon.wait_for_log("status=sent", count=SINK + 1 + REJECTED + 1)
    after = scrape(metrics_port)
    assert value(after, "mailferry_messages_received_total", source="smtpd") == SINK + CLOSED + REJECTED + 1
    assert value(after, "mailferry_delivery_status_total", transport="smtp", status="sent") == SINK + 2
    assert (value(after, "mailferry_smtpd_connects_total", service=service)
            == value(before, "mailferry_smtpd_connects_total", service=service) + 1)


def listening_sockets(pid: int) -> int:
    """How many TCP sockets the process holds in LISTEN state."""
    inodes = {name[len("socket:["):-1] for name in socket_inodes(pid)}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                count += 1
    return count


def test_no_endpoint_when_the_parameter_is_empty(daemon_factory):
    daemon = daemon_factory(mailferry_metrics_listen="").start()
    assert listening_sockets(daemon.process.pid) == 1     # smtpd's listener alone
    assert not (daemon.queue_directory / "metrics").exists()
    assert "metrics: serving" not in daemon.log()


def test_a_non_loopback_address_is_refused_at_start(daemon_factory):
    daemon = daemon_factory(mailferry_metrics_listen=f"0.0.0.0:{free_port()}")
    result = daemon.command("start-fg", timeout=60)
    assert result.returncode == 1
    assert ("mailferry_metrics_listen = 0.0.0.0:" in result.stderr
            and "is not a loopback address" in result.stderr
            and "mailferry_metrics_allow_remote = yes" in result.stderr), result.stderr


def test_ldap_failovers_are_counted(daemon_factory):
    from tests.peers.slapd import SEED_ADDRESSES, SUFFIX, Slapd
    config = world_readable_tempdir("mailferry-metrics-ldap-") / "aliases.cf"
    slapd = Slapd(world_readable_tempdir("mailferry-metrics-slapd-"))
    try:
        slapd.start()
        dead = f"ldap://127.0.0.1:{free_port()}"
        config.write_text(f"server_host = {dead} {slapd.url}\nsearch_base = {SUFFIX}\nquery_filter = (mail=%s)\n"
                          "result_attribute = mailRoutingAddress\nversion = 3\ntimeout = 5\n")
        config.chmod(0o644)
        metrics_port = free_port()
        daemon = daemon_factory(mailferry_metrics_listen=f"127.0.0.1:{metrics_port}",
                                virtual_alias_maps=f"ldap:{config}").start()
        for _ in range(2):
            send(daemon.port, SEED_ADDRESSES[0])
        log = daemon.wait_for_log("status=sent", count=2)
        # Each process that looks up first finds the dead server, takes it out of rotation and
        # fails over to the live one: one warning each, and the metric counts those lines.
        failures = len(re.findall(rf"dict_ldap_lookup: {re.escape(str(config))}: server {re.escape(dead)}/? failed",
                                  log))
        assert failures >= 1, log[-2000:]
        assert "orig_to=<" in log     # the alias was found on the live server
        samples = scrape(metrics_port)
        counted = {dict(labels)["server"]: count for (name, labels), count in samples.items()
                   if name == "mailferry_ldap_server_failures_total" and dict(labels)["table"] == str(config)}
        assert list(counted.values()) == [failures] and next(iter(counted)).startswith(dead), counted
        assert value(samples, "mailferry_table_lookup_duration_seconds_count", table=f"ldap:{config}") >= 2
    finally:
        slapd.stop()
        shutil.rmtree(slapd.directory, ignore_errors=True)
        shutil.rmtree(config.parent, ignore_errors=True)
