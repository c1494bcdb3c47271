"""metrics/: the listen address, the hooks off and on, and counts added up over forked processes."""

from __future__ import annotations

import asyncio
import os

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from mailferry import metrics
from mailferry.metrics.endpoint import Endpoint, MetricsAddressError, bind, parse_listen
from mailferry.tables import open_table
from mailferry.tables.timing import TimedTable


@pytest.mark.parametrize("value, expected", [
    ("", None),
    ("  ", None),
    ("127.0.0.1:9154", ("127.0.0.1", 9154)),
    ("localhost:9154", ("127.0.0.1", 9154)),
    ("[::1]:9154", ("::1", 9154)),
    ("127.0.0.2:1", ("127.0.0.2", 1)),
])
def test_loopback_addresses_are_taken(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value, words", [
    ("9154", "expected host:port"),
    ("127.0.0.1:", "expected host:port"),
    ("127.0.0.1:70000", "expected host:port"),
    ("127.0.0.1:port", "expected host:port"),
    ("metrics.example:9154", "is not an IP address"),
    ("0.0.0.0:9154", "is not a loopback address"),
    ("[::]:9154", "is not a loopback address"),
    ("192.0.2.1:9154", "mailferry_metrics_allow_remote = yes"),
])
def test_other_addresses_are_refused_with_what_to_write(value, words):
    with pytest.raises(MetricsAddressError, match=words.replace(".", r"\.")):
        parse_listen(value)


def test_a_remote_address_when_allowed():
    assert parse_listen("0.0.0.0:9154", allow_remote=True) == ("0.0.0.0", 9154)


def test_with_metrics_off_the_hooks_keep_nothing_and_tables_are_not_wrapped(tmp_path):
    assert not metrics.enabled()
    metrics.connection_opened("smtp")
    metrics.delivery_outcome("smtp", "sent", 1.0)
    metrics.auth_failed("PLAIN")
    assert metrics._children == {}
    table = open_table("inline:{a=b}")
    assert not isinstance(table, TimedTable)


@pytest.fixture
def metrics_on(tmp_path):
    """Metrics on in this process, put back off afterwards (the test process is not a daemon)."""
    saved = (values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    (tmp_path / "counter_1.db").write_bytes(b"stale")       # a previous run's: removed at start
    metrics.enable(str(tmp_path))
    yield tmp_path
    metrics._enabled = False
    metrics._children.clear()
    values.ValueClass = saved[0]
    if saved[1] is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved[1]


def scrape(directory, counts=dict) -> dict:
    sock = bind("127.0.0.1", 0)
    try:
        text = Endpoint(sock, str(directory), counts).render().decode()
    finally:
        sock.close()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_counts_of_a_forked_process_are_added_to_the_parent(metrics_on):
    assert not (metrics_on / "counter_1.db").exists()
    metrics.connection_opened("smtp")
    metrics.message_received("smtp")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for _ in range(3):
                metrics.connection_opened("smtp")
            metrics.message_received("local")
            metrics.auth_failed("x-made-up")
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    metrics.connection_closed("smtp")
    samples = scrape(metrics_on)
    assert samples[("mailferry_smtpd_connects_total", (("service", "smtp"),))] == 4
    assert samples[("mailferry_messages_received_total", (("source", "smtpd"),))] == 1
    assert samples[("mailferry_messages_received_total", (("source", "pickup"),))] == 1
    # A mechanism a client made up is counted as "other": clients cannot add time series.
    assert samples[("mailferry_smtpd_sasl_authentication_failures_total", (("mechanism", "other"),))] == 1
    # The child's sessions are still open as far as its file says, until the master is told it is gone.
    assert samples[("mailferry_smtpd_sessions", (("service", "smtp"),))] == 3
    metrics.process_gone(pid)
    assert scrape(metrics_on)[("mailferry_smtpd_sessions", (("service", "smtp"),))] == 0
    assert scrape(metrics_on)[("mailferry_smtpd_connects_total", (("service", "smtp"),))] == 4


def test_lookups_are_timed_by_table_and_the_table_reads_through(metrics_on):
    table = open_table("inline:{a=b}")
    assert isinstance(table, TimedTable) and table.spec == "inline:{a=b}"
    assert asyncio.run(table.lookup("a")).value == "b"
    assert not table.lookup_now("c").found
    samples = scrape(metrics_on)
    assert samples[("mailferry_table_lookup_duration_seconds_count", (("table", "inline:{a=b}"),))] == 2


def test_delivery_delay_only_for_sent_and_the_queue_states(metrics_on):
    metrics.delivery_outcome("relay", "sent", 0.2)
    metrics.delivery_outcome("relay", "deferred", 30.0)
    samples = scrape(metrics_on, lambda: {"deferred": 4, "hold": 1})
    assert samples[("mailferry_delivery_delay_seconds_count", (("transport", "relay"),))] == 1
    assert samples[("mailferry_delivery_delay_seconds_bucket", (("le", "0.25"), ("transport", "relay")))] == 1
    assert samples[("mailferry_delivery_status_total", (("status", "deferred"), ("transport", "relay")))] == 1
    assert {state: samples[("mailferry_queue_messages", (("queue", state),))]
            for state in ("incoming", "active", "deferred", "hold")} == {
        "incoming": 0, "active": 0, "deferred": 4, "hold": 1}


def test_the_endpoint_answers_get_metrics_only(metrics_on):
    async def exchange(request: bytes) -> bytes:
        sock = bind("127.0.0.1", 0)
        endpoint = Endpoint(sock, str(metrics_on), dict)
        await endpoint.start()
        try:
            reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            writer.write(request)
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            await endpoint.stop()

    assert asyncio.run(exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4")
    assert asyncio.run(exchange(b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    assert asyncio.run(exchange(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
    head = asyncio.run(exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("main_cf, refused", [
    ("mailferry_metrics_listen = 0.0.0.0:9154\n", True),
    ("mailferry_metrics_listen = 0.0.0.0:9154\nmailferry_metrics_allow_remote = yes\n", False),
    ("mailferry_metrics_listen = 127.0.0.1:9154\n", False),
    ("", False),
])
def test_check_says_what_the_start_would_refuse(tmp_path, main_cf, refused):
    from mailferry.config.inspect import inspect_config
    (tmp_path / "main.cf").write_text("myhostname = mx.example.test\n" + main_cf)
    found = [item for item in inspect_config(str(tmp_path)) if item.parameter == "mailferry_metrics_listen"]
    if not refused:
        assert found == []
        return
    [item] = found
    assert item.severity == "error" and item.line == 2 and item.file.endswith("main.cf")
    assert "is not a loopback address" in item.message and "mailferry_metrics_allow_remote = yes" in item.message


def test_enabled_again_the_counts_go_to_the_new_directory(metrics_on, tmp_path_factory):
    metrics.connection_opened("smtp")
    again = tmp_path_factory.mktemp("again")
    metrics.enable(str(again))
    metrics.connection_opened("smtp")
    assert scrape(again)[("mailferry_smtpd_connects_total", (("service", "smtp"),))] == 1
