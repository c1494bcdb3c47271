"""`ldap:` tables against two real slapd, with Postfix's own `postmap -q` (postfix-ldap) as the
reference for every answer (issue 9, "Done when" 3 and 4 at the table level).

The table file is the seed's ldap-aliases.cf exactly as written, with only server_host pointed
at the two test directories. Note its last line, `special_result_filter = %s@%d`: Postfix reads
no such parameter (result_format, once result_filter, is the result template), so both Postfix
and mailferry answer the bare mailRoutingAddress, and `mailferry check` reports the line.

Exit codes: both tools print the value and exit 0 when found, print nothing and exit 1 when not
found. On a temporary failure Postfix's postmap dies with "fatal: ... query error" and exit 1,
the same code as "not found"; mailferry exits 2 (ERROR_EXIT) and names the servers it tried. So
for temporary failures the test compares what is comparable: no value on stdout from either,
Postfix's stderr says "query error", and mailferry's exit is non-zero and not 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.tables import open_table
from mailferry.tables.ldap import client as ldap_client
from tests.conftest import seed_file
from tests.peers import require_tool
from tests.peers.slapd import (GROUP_ADDRESS, SEED_ADDRESSES, SEED_ROUTING_ADDRESS, SHARED_ADDRESS, STAR_ADDRESS,
                               STAR_ROUTING_ADDRESS)

pytest_plugins = ["tests.peers.conftest_plugin"]
pytestmark = pytest.mark.integration

SEED_LDAP_ALIASES_CF = seed_file("ldap-aliases.cf")  # the seed's file, byte for byte

# Keys that must find nothing: wildcards and filter syntax in a key never widen the search.
WIDENING_KEYS = ("*@example.com", "a)(mail=*@example.com", '"a)(mail=*"@example.com', "star*@example.com",
                 "*", "sample*@example.com")


@pytest.fixture
def seed_file(slapd_pair_restored, tmp_path) -> Path:
    first, second = slapd_pair_restored
    path = tmp_path / "ldap-aliases.cf"
    path.write_text(SEED_LDAP_ALIASES_CF.replace("ldap://ldap1.internal/ ldap://ldap2.internal/",
                                                 f"{first.url} {second.url}"))
    return path


@pytest.fixture(scope="module")
def postfix_config(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("postfix")
    main_cf = directory / "main.cf"
    main_cf.write_text("")
    os.utime(main_cf, (0, 0))  # Postfix waits ~2 s before reading a main.cf changed just now
    return directory


def postfix_postmap(postfix_config: Path, key: str, table: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("postmap"), "-c", str(postfix_config), "-q", key, f"ldap:{table}"],
                          capture_output=True, text=True, timeout=timeout)


def mailferry_postmap(key: str, table: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("mailferry")), "postmap", "-q", key, f"ldap:{table}"],
                          capture_output=True, text=True, timeout=timeout)


def assert_same_answer(postfix_config: Path, key: str, table: Path, expected: str | None) -> None:
    theirs = postfix_postmap(postfix_config, key, table)
    ours = mailferry_postmap(key, table)
    assert (theirs.stdout, theirs.returncode) == ((f"{expected}\n", 0) if expected else ("", 1)), theirs.stderr
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), ours.stderr


def assert_both_tempfail(postfix_config: Path, key: str, table: Path) -> subprocess.CompletedProcess:
    theirs = postfix_postmap(postfix_config, key, table)
    ours = mailferry_postmap(key, table)
    assert theirs.stdout == "" and "query error" in theirs.stderr, theirs
    assert ours.stdout == "" and ours.returncode not in (0, 1), ours
    return ours


@pytest.mark.parametrize("address", SEED_ADDRESSES + ("Sample.User@Example.COM",))
def test_each_seed_address_gives_the_routing_address_as_postfix(seed_file, postfix_config, address):
    assert_same_answer(postfix_config, address, seed_file, SEED_ROUTING_ADDRESS)


@pytest.mark.parametrize("key", WIDENING_KEYS + ("nobody@example.com", "sample.user"))
def test_wildcards_and_filter_syntax_in_keys_match_nothing_as_postfix(seed_file, postfix_config, key):
    assert_same_answer(postfix_config, key, seed_file, None)


def test_an_entry_whose_mail_holds_a_star_matches_itself_exactly(seed_file, postfix_config):
    assert_same_answer(postfix_config, STAR_ADDRESS, seed_file, STAR_ROUTING_ADDRESS)


def test_an_address_on_two_entries_is_a_temporary_failure_under_size_limit_1(seed_file, postfix_config):
    ours = assert_both_tempfail(postfix_config, SHARED_ADDRESS, seed_file)
    assert "size limit (1) exceeded" in ours.stderr
    result = open_table(f"ldap:{seed_file}").lookup_now(SHARED_ADDRESS)
    assert result.tempfail and "size limit" in result.reason


def test_first_server_stopped_the_second_answers_as_postfix(seed_file, postfix_config, slapd_pair_restored):
    first, _ = slapd_pair_restored
    first.stop()
    assert_same_answer(postfix_config, "sample@example.com", seed_file, SEED_ROUTING_ADDRESS)


def test_both_servers_stopped_is_a_temporary_failure_naming_them(seed_file, postfix_config, slapd_pair_restored):
    for slapd in slapd_pair_restored:
        slapd.stop()
    ours = assert_both_tempfail(postfix_config, "sample@example.com", seed_file)
    for slapd in slapd_pair_restored:
        assert slapd.url in ours.stderr


def test_both_servers_back_and_lookups_answer_again(seed_file, slapd_pair_restored, monkeypatch):
    monkeypatch.setattr(ldap_client, "OUT_OF_ROTATION", 0.0)
    table = open_table(f"ldap:{seed_file}")
    for slapd in slapd_pair_restored:
        slapd.stop()
    assert table.lookup_now("sample@example.com").tempfail
    for slapd in slapd_pair_restored:
        slapd.start()
    assert table.lookup_now("sample@example.com").value == SEED_ROUTING_ADDRESS


def test_first_server_frozen_the_second_answers_within_5_seconds_without_blocking_the_loop(
        seed_file, slapd_pair_restored):
    first, _ = slapd_pair_restored
    warnings: list[str] = []
    table = open_table(f"ldap:{seed_file}")
    table.warn = warnings.append
    # An open connection to the first server, then freeze it: the worst case (no connect error).
    assert table.lookup_now("sample@example.com").value == SEED_ROUTING_ADDRESS
    first.freeze()

    async def lookup_while_ticking():
        ticks = 0
        stop = asyncio.Event()

        async def tick():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.05)
        ticker = asyncio.ensure_future(tick())
        try:
            # A key not in the cache: the lookup must go to a server. 5 s is the requirement;
            # mailferry's bound on the frozen server's first answer is FIRST_ANSWER_BOUND (2 s).
            result = await asyncio.wait_for(table.lookup("john.smith@example.com"), 5.0)
        finally:
            stop.set()
            await ticker
        return result, ticks

    try:
        result, ticks = asyncio.run(lookup_while_ticking())
    finally:
        table.close()
    assert result.value == SEED_ROUTING_ADDRESS
    assert ticks > 1, "the event loop was blocked during the lookup"
    assert any(first.url in text and "out of rotation" in text for text in warnings), warnings
    # Out of rotation now: the next lookup goes straight to the second server.
    assert table.directory.servers[0].resting_until > 0
    assert table.lookup_now("sample_user@example.com").value == SEED_ROUTING_ADDRESS


def test_first_server_frozen_mailferry_postmap_answers_where_postfix_gives_up(
        seed_file, postfix_config, slapd_pair_restored, tmp_path):
    first, _ = slapd_pair_restored
    first.freeze()
    ours = mailferry_postmap("sample@example.com", seed_file, timeout=30)
    assert (ours.stdout, ours.returncode) == (f"{SEED_ROUTING_ADDRESS}\n", 0), ours.stderr
    assert first.url in ours.stderr  # the warning about the hung server
    # Postfix waits the whole `timeout` on the frozen server and never tries the second (measured
    # in the issue with timeout = 20); shown here with timeout = 2 to keep the test short.
    short = tmp_path / "short-timeout.cf"
    short.write_text(seed_file.read_text().replace("timeout = 20", "timeout = 2"))
    theirs = postfix_postmap(postfix_config, "sample@example.com", short)
    assert theirs.stdout == "" and "query error" in theirs.stderr, theirs


# Other ldap_table files, each compared key by key with Postfix: multi-valued and multiple
# entries joined with ",", result_format, domain, %-expansions in the search base, DN recursion.
VARIANTS = {
    "defaults with simple bind": "result_attribute = mailRoutingAddress, uid\nquery_filter = (mail=%s)\n",
    "result format and domain": "bind = no\nquery_filter = (mail=%s)\ndomain = example.com\n"
                                "result_attribute = mailRoutingAddress, uid, cn\nresult_format = <%s|%u|%D>\n",
    "search base from the key": "bind = no\nsearch_base = ou=People,dc=%2,dc=%1\nquery_filter = (mail=%u@%d)\n"
                                "result_attribute = mailRoutingAddress\n",
    "dn recursion": "bind = no\nquery_filter = (mail=%s)\nresult_attribute = mailRoutingAddress\n"
                    "special_result_attribute = member\n",
    "terminal attribute": "bind = no\nquery_filter = (mail=%s)\nresult_attribute = mailRoutingAddress\n"
                          "terminal_result_attribute = uid\nspecial_result_attribute = member\n",
}
VARIANT_KEYS = ("sample@example.com", SHARED_ADDRESS, GROUP_ADDRESS, "sample", "x@example.com",
                "sample@other.example", "@example.com")


@pytest.mark.parametrize("variant", VARIANTS)
def test_other_table_files_answer_as_postfix(variant, slapd_pair_restored, postfix_config, tmp_path):
    first, second = slapd_pair_restored
    table = tmp_path / "variant.cf"
    base = "" if "search_base" in VARIANTS[variant] else "search_base = dc=example,dc=com\n"
    table.write_text(f"server_host = {first.url} {second.url}\n{base}{VARIANTS[variant]}")
    for key in VARIANT_KEYS:
        theirs = postfix_postmap(postfix_config, key, table)
        ours = mailferry_postmap(key, table)
        assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), (key, theirs, ours)


def test_many_concurrent_lookups_share_the_pool_and_all_answer_right(seed_file):
    """Lookups from the event loop run in the thread pool, each connection used by one thread
    at a time: 200 at once, with distinct keys (no cache), all get their own answer."""
    table = open_table(f"ldap:{seed_file}")
    keys = [f"{address.replace('@', f'+{n}@')}" for n in range(40) for address in SEED_ADDRESSES]
    keys[::7] = [STAR_ADDRESS] * len(keys[::7])

    async def all_at_once():
        return await asyncio.gather(*(table.lookup(key) for key in keys))
    try:
        results = asyncio.run(all_at_once())
        idle = sum(len(server.idle) for server in table.directory.servers)
    finally:
        table.close()
    assert 1 <= idle <= ldap_client_workers()  # connections are reused, one per worker at most
    for key, result in zip(keys, results):
        if key == STAR_ADDRESS:
            assert result.value == STAR_ROUTING_ADDRESS
        else:
            assert result.not_found, (key, result)  # user+n@ is not in the directory


def ldap_client_workers() -> int:
    from mailferry.tables.ldap import WORKERS
    return WORKERS


def test_a_directory_restart_costs_no_temporary_failure(seed_file, slapd_pair_restored):
    """Kept connections die with the server; the next lookup reconnects, as Postfix does,
    rather than calling the restarted server failed."""
    table = open_table(f"ldap:{seed_file}")
    warnings: list[str] = []
    table.warn = warnings.append
    assert table.lookup_now("sample@example.com").value == SEED_ROUTING_ADDRESS
    for slapd in slapd_pair_restored:
        slapd.stop()
        slapd.start()
    assert table.lookup_now("john.smith@example.com").value == SEED_ROUTING_ADDRESS
    assert warnings == []
    table.close()
