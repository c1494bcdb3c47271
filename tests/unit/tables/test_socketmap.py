"""socketmap: tables against the test's own socketmap server (tests/peers/socketmap.py), and side by
side with Postfix's postmap asking the same server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.tables import TableError, open_table
from tests.peers import free_port
from tests.peers.socketmap import SocketmapServer

MAPS = {"aliases": {"info@example.com": "alice@example.com", "list@example.com": "a@x, b@y",
                    "spaced@example.com": "value with  spaces"},
        "domains": {"example.com": "OK"}}


@pytest.fixture
def server():
    running = SocketmapServer(MAPS).start()
    yield running
    running.stop()


def ask(spec: str, *keys: str):
    async def lookups():
        table = open_table(spec)
        try:
            return [await table.lookup(key) for key in keys]
        finally:
            table.close()
    return asyncio.run(lookups())


def test_found_and_not_found_answer_from_the_server(server):
    found, missing, spaced = ask(f"socketmap:{server.endpoint}:aliases",
                                 "info@example.com", "nobody@example.com", "spaced@example.com")
    assert (found.found, found.value) == (True, "alice@example.com")
    assert missing.not_found
    assert spaced.value == "value with  spaces"
    assert server.requests == [("aliases", "info@example.com"), ("aliases", "nobody@example.com"),
                               ("aliases", "spaced@example.com")]


def test_keys_are_sent_as_they_are_not_folded(server):
    (result,) = ask(f"socketmap:{server.endpoint}:aliases", "Info@Example.COM")
    assert result.not_found
    assert server.requests == [("aliases", "Info@Example.COM")]


def test_one_connection_carries_every_lookup_and_is_shared_by_tables_naming_the_server(server):
    async def lookups():
        first = open_table(f"socketmap:{server.endpoint}:aliases")
        second = open_table(f"socketmap:{server.endpoint}:domains")
        try:
            return [await first.lookup("info@example.com"), await second.lookup("example.com"),
                    await first.lookup("list@example.com")]
        finally:
            first.close()
            second.close()
    results = asyncio.run(lookups())
    assert [result.value for result in results] == ["alice@example.com", "OK", "a@x, b@y"]
    assert server.connections == 1


@pytest.mark.parametrize("status", ["temp", "perm", "timeout"])
def test_temp_perm_and_timeout_replies_are_temporary_failures(server, status):
    (result,) = ask(f"socketmap:{server.endpoint}:aliases", f"{status}@example.com")
    assert result.tempfail
    error_class = {"temp": "temporary", "perm": "permanent", "timeout": "timeout"}[status]
    assert f"socketmap server {error_class} error: the test server says {status}" in result.reason


def test_an_unknown_map_name_is_the_servers_perm_reply_so_a_temporary_failure(server):
    (result,) = ask(f"socketmap:{server.endpoint}:nosuchmap", "x")
    assert result.tempfail and "no such map" in result.reason


def test_a_server_that_is_down_is_a_temporary_failure_not_a_miss():
    (result,) = ask(f"socketmap:inet:127.0.0.1:{free_port()}:aliases", "info@example.com")
    assert result.tempfail and "connect to inet:127.0.0.1:" in result.reason


def test_a_reply_cut_off_by_the_server_is_a_temporary_failure(server):
    (result, after) = ask(f"socketmap:{server.endpoint}:aliases", "close@example.com", "info@example.com")
    assert result.tempfail
    assert after.value == "alice@example.com"  # the next lookup opens a new connection


def test_a_restarted_server_costs_no_failure_the_closed_connection_is_retried_once(server):
    async def lookups():
        table = open_table(f"socketmap:{server.endpoint}:aliases")
        try:
            before = await table.lookup("info@example.com")
            server.stop()
            restarted = SocketmapServer(MAPS)
            restarted.port = server.port
            restarted.start()
            try:
                return before, await table.lookup("info@example.com"), restarted.connections
            finally:
                restarted.stop()
        finally:
            table.close()
    before, after, connections = asyncio.run(lookups())
    assert before.value == after.value == "alice@example.com"
    assert connections == 1


def test_a_unix_socket_server_answers(tmp_path):
    running = SocketmapServer(MAPS, unix_path=tmp_path / "socketmap.sock").start()
    try:
        (result,) = ask(f"socketmap:{running.endpoint}:aliases", "info@example.com")
    finally:
        running.stop()
    assert result.value == "alice@example.com"


def test_a_key_over_postfixs_query_limit_is_not_found_without_asking(server):
    (result,) = ask(f"socketmap:{server.endpoint}:aliases", "x" * 10_001)
    assert result.not_found and server.requests == []


@pytest.mark.parametrize("name, message", [
    ("nocolon", "socketmap requires server:socketmap argument"),
    ("unix:/only-a-path", 'need service transport:endpoint instead of "unix"'),
    ("tcp:host:25:map", 'need service transport:endpoint instead of "tcp:host:25"'),
    ("inet:host:notaport:map", "bad inet endpoint"),
])
def test_a_bad_name_is_refused_when_the_table_is_opened(name, message):
    with pytest.raises(TableError, match=message):
        open_table(f"socketmap:{name}")


def test_it_is_a_pattern_table_that_keeps_keys_as_they_are():
    table = open_table(f"socketmap:inet:127.0.0.1:{free_port()}:aliases")
    assert (table.is_pattern, table.folds_keys) == (True, False)
    table.close()


def _mailferry_postmap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("mailferry")), "postmap", *args],
                          capture_output=True, text=True, timeout=60)


def test_postmap_q_asks_the_server(server):
    found = _mailferry_postmap("-q", "info@example.com", f"socketmap:{server.endpoint}:aliases")
    missing = _mailferry_postmap("-q", "nobody@example.com", f"socketmap:{server.endpoint}:aliases")
    assert (found.stdout, found.returncode) == ("alice@example.com\n", 0)
    assert (missing.stdout, missing.returncode) == ("", 1)


def test_postmap_q_dash_asks_the_server_for_each_key_on_stdin(server):
    process = subprocess.run([str(Path(sys.executable).with_name("mailferry")), "postmap", "-q", "-",
                              f"socketmap:{server.endpoint}:aliases"],
                             input="info@example.com\nnobody@example.com\nlist@example.com\n",
                             capture_output=True, text=True, timeout=60)
    assert process.stdout == "info@example.com\talice@example.com\nlist@example.com\ta@x, b@y\n"
    assert server.connections == 1


@pytest.mark.integration
def test_postfix_and_mailferry_get_the_same_answers_from_the_server(server, tmp_path):
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("")
    os.utime(main_cf, (0, 0))
    spec = f"socketmap:{server.endpoint}:aliases"
    for key in ("info@example.com", "nobody@example.com", "list@example.com", "spaced@example.com"):
        theirs = subprocess.run(["/usr/sbin/postmap", "-c", str(tmp_path), "-q", key, spec],
                                capture_output=True, text=True, timeout=60)
        ours = _mailferry_postmap("-q", key, spec)
        assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), (key, theirs.stderr)
    theirs = subprocess.run(["/usr/sbin/postmap", "-c", str(tmp_path), "-q", "temp@example.com", spec],
                            capture_output=True, text=True, timeout=60)
    ours = _mailferry_postmap("-q", "temp@example.com", spec)
    assert theirs.stdout == ours.stdout == "" and "temporary error" in theirs.stderr
    assert ours.returncode == 2 and "temporary error" in ours.stderr
