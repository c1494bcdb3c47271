"""`mysql:`, `pgsql:` and `sqlite:` tables against a real MariaDB, a real PostgreSQL and a real
SQLite file, with Postfix's own `postmap -q` (postfix-mysql, postfix-pgsql, postfix-sqlite) as
the reference for every answer (issue 15, "Done when" 2 at the table level).

The data is the seed's directory routing as rows (tests/peers/sql_server.py alias_rows): the five
addresses of John Smith, an address on two rows (joined with commas), and stored keys holding
`'`, `\\`, `%` and `_`. Quoting attacks in keys must match nothing in both programs.

Exit codes: both print the value and exit 0 when found, nothing and exit 1 when not found. On a
temporary failure Postfix's postmap dies ("fatal: ... lookup error", exit 1); mailferry exits 2.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import sys
from pathlib import Path

import pytest

from mailferry.tables import open_table
from tests.integration.test_ldap_table import postfix_config  # noqa: F401 - a fixture: an empty main.cf for Postfix
from tests.peers import free_port, require_tool
from tests.peers.slapd import SEED_ADDRESSES, SEED_ROUTING_ADDRESS, SHARED_ADDRESS, SHARED_ROUTING_ADDRESSES
from tests.peers.sql_server import PASSWORD, QUOTED_ROWS, alias_rows

pytest_plugins = ["tests.peers.conftest_plugin"]
pytestmark = pytest.mark.integration

QUERY = "SELECT goto FROM aliases WHERE address='%s' AND active = 1"

# Keys that try to leave the quoted literal or to be a pattern: none may match anything.
ATTACK_KEYS = ("' OR '1'='1", "x' OR 'x'='x@example.com", "%@example.com", "%", "_", "%%",
               "sample_user@example.co_", "_ample@example.com", "o\\'brien@example.com",
               "\\' OR 1=1 -- @example.com", "'; DROP TABLE aliases; --@example.com",
               "o''brien@example.com", "back\\\\slash@example.com", "per_cent@example.com",
               "under%@example.com", "sample@example.com' --", "inactive@example.com")


def table_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o640)
    return path


@pytest.fixture(scope="module")
def sqlite_database(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "aliases.db"
    with sqlite3.connect(path) as database:
        database.execute("CREATE TABLE aliases (address TEXT NOT NULL, goto TEXT NOT NULL, active INT NOT NULL)")
        database.executemany("INSERT INTO aliases VALUES (?, ?, ?)", alias_rows())
    database.close()
    return path


@pytest.fixture(params=["mysql", "pgsql", "sqlite"])
def aliases_cf(request, tmp_path) -> str:
    """`TYPE:FILE` for each kind of server, each file as an administrator would write it."""
    kind = request.param
    if kind == "mysql":
        server = request.getfixturevalue("mariadb_restored")
        text = (f"hosts = inet:127.0.0.1:{server.port}\nuser = postfix\npassword = {PASSWORD}\n"
                f"dbname = mail\nquery = {QUERY}\n")
    elif kind == "pgsql":
        server = request.getfixturevalue("postgresql_restored")
        text = (f"hosts = inet:127.0.0.1:{server.port}\nuser = postfix\npassword = {PASSWORD}\n"
                f"dbname = mail\nquery = {QUERY}\n")
    else:
        database = request.getfixturevalue("sqlite_database")
        text = f"dbpath = {database}\nquery = {QUERY}\n"
    return f"{kind}:{table_file(tmp_path, f'{kind}-aliases.cf', text)}"


def postfix_postmap(postfix_config: Path, key: str, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("postmap"), "-c", str(postfix_config), "-q", key, spec],
                          capture_output=True, text=True, timeout=60)


def mailferry_postmap(key: str, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("mailferry")), "postmap", "-q", key, spec],
                          capture_output=True, text=True, timeout=60)


def assert_same_answers(postfix_config: Path, keys, spec: str, expected: dict[str, str]) -> None:
    """Many keys in one run of each program (`postmap -q -`: "key<TAB>value" for each found)."""
    text = "".join(f"{key}\n" for key in keys)
    runs = [subprocess.run(command, input=text, capture_output=True, text=True, timeout=120) for command in (
        [require_tool("postmap"), "-c", str(postfix_config), "-q", "-", spec],
        [str(Path(sys.executable).with_name("mailferry")), "postmap", "-q", "-", spec])]
    theirs, ours = ({line.split("\t", 1)[0]: line.split("\t", 1)[1] for line in run.stdout.splitlines()}
                    for run in runs)
    assert theirs == expected, runs[0].stderr
    assert ours == theirs, runs[1].stderr
    assert runs[1].returncode == runs[0].returncode, runs


def assert_same_answer(postfix_config: Path, key: str, spec: str, expected: str | None) -> None:
    theirs = postfix_postmap(postfix_config, key, spec)
    ours = mailferry_postmap(key, spec)
    assert (theirs.stdout, theirs.returncode) == ((f"{expected}\n", 0) if expected else ("", 1)), theirs.stderr
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), ours.stderr


def test_each_seed_address_gives_the_routing_address_as_postfix(aliases_cf, postfix_config):
    addresses = (*SEED_ADDRESSES, "Sample.User@Example.COM")
    assert_same_answers(postfix_config, addresses, aliases_cf,
                        {address: SEED_ROUTING_ADDRESS for address in addresses})


def test_an_address_on_two_rows_gives_both_joined_with_a_comma_as_postfix(aliases_cf, postfix_config):
    theirs = postfix_postmap(postfix_config, SHARED_ADDRESS, aliases_cf)
    ours = mailferry_postmap(SHARED_ADDRESS, aliases_cf)
    assert sorted(theirs.stdout.strip().split(",")) == sorted(SHARED_ROUTING_ADDRESSES)
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode)


def test_stored_keys_with_quote_characters_are_found_exactly(aliases_cf, postfix_config):
    assert_same_answers(postfix_config, [address for address, _ in QUOTED_ROWS], aliases_cf, dict(QUOTED_ROWS))


def test_quoting_attacks_in_keys_match_nothing_as_postfix(aliases_cf, postfix_config):
    # The last key shows nothing was dropped: the table still answers.
    assert_same_answers(postfix_config, (*ATTACK_KEYS, SEED_ADDRESSES[0]), aliases_cf,
                        {SEED_ADDRESSES[0]: SEED_ROUTING_ADDRESS})


def test_the_key_is_a_bound_parameter_never_sql_text(aliases_cf):
    table = open_table(aliases_cf)
    key = "x' OR 'x'='x@example.com"
    assert key not in table._sql and "'%s'" not in table._sql
    assert table.parameters(key) == [key]
    table.close()


def test_expansion_limit_makes_two_rows_a_temporary_failure(aliases_cf, tmp_path):
    kind, path = aliases_cf.split(":", 1)
    limited = table_file(tmp_path, "limited.cf", Path(path).read_text() + "expansion_limit = 1\n")
    table = open_table(f"{kind}:{limited}")
    result = table.lookup_now(SHARED_ADDRESS)
    assert result.tempfail and "expansion_limit" in result.reason
    assert table.lookup_now(SEED_ADDRESSES[0]).value == SEED_ROUTING_ADDRESS
    table.close()


def test_domain_and_result_format_as_postfix(aliases_cf, postfix_config, tmp_path):
    kind, path = aliases_cf.split(":", 1)
    text = Path(path).read_text() + "domain = example.com\nresult_format = %u+routed@%d\n"
    spec = f"{kind}:{table_file(tmp_path, 'formatted.cf', text)}"
    # Outside the listed domain, or no domain: not even asked (no query), as Postfix.
    assert_same_answers(postfix_config, (SEED_ADDRESSES[0], "sample@example.org", "sample"), spec,
                        {SEED_ADDRESSES[0]: "john.smith+routed@mail1.internal"})


@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
def test_a_dead_first_host_fails_over_to_the_next_as_postfix(kind, request, postfix_config, tmp_path):
    server = request.getfixturevalue("mariadb_restored" if kind == "mysql" else "postgresql_restored")
    dead = free_port()
    text = (f"hosts = inet:127.0.0.1:{dead}, 127.0.0.1:{server.port}\nuser = postfix\npassword = {PASSWORD}\n"
            f"dbname = mail\nquery = {QUERY}\n")
    spec = f"{kind}:{table_file(tmp_path, 'failover.cf', text)}"
    for _ in range(3):     # random order: whichever comes first, the answer is there
        assert_same_answer(postfix_config, SEED_ADDRESSES[1], spec, SEED_ROUTING_ADDRESS)


def test_mysql_over_its_unix_socket(mariadb_restored, postfix_config, tmp_path):
    text = (f"hosts = unix:{mariadb_restored.socket}\nuser = postfix\npassword = {PASSWORD}\n"
            f"dbname = mail\nquery = {QUERY}\n")
    assert_same_answer(postfix_config, SEED_ADDRESSES[2], f"mysql:{table_file(tmp_path, 'unix.cf', text)}",
                       SEED_ROUTING_ADDRESS)


def test_pgsql_over_its_unix_socket_by_uri(postgresql_restored, postfix_config, tmp_path):
    """A bare /directory host means port 5432's socket; ours listens on a free port, so the
    connection URI form (pgsql_table(5)) names both."""
    uri = (f"postgresql://postfix:s3cret%27pw@/mail?host={postgresql_restored.directory}"
           f"&port={postgresql_restored.port}")
    text = f"hosts = {uri}\ndbname = mail\nquery = {QUERY}\n"     # Postfix 3.7 wants dbname even so
    spec = f"pgsql:{table_file(tmp_path, 'uri.cf', text)}"
    assert_same_answer(postfix_config, SEED_ADDRESSES[3], spec, SEED_ROUTING_ADDRESS)


@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
def test_server_down_is_a_temporary_failure_then_answers_when_back(kind, request, tmp_path):
    server = request.getfixturevalue("mariadb_restored" if kind == "mysql" else "postgresql_restored")
    text = (f"hosts = 127.0.0.1:{server.port}\nuser = postfix\npassword = {PASSWORD}\n"
            f"dbname = mail\nquery = {QUERY}\n")
    path = table_file(tmp_path, "down.cf", text)
    table = open_table(f"{kind}:{path}")
    warnings: list[str] = []
    table.warn = warnings.append
    assert table.lookup_now(SEED_ADDRESSES[0]).value == SEED_ROUTING_ADDRESS   # connected, kept open
    server.stop()
    result = table.lookup_now(SEED_ADDRESSES[0])
    assert result.tempfail and f"127.0.0.1:{server.port}" in result.reason
    assert warnings and f"127.0.0.1:{server.port}" in warnings[0]
    ours = mailferry_postmap(SEED_ADDRESSES[0], f"{kind}:{path}")
    assert ours.stdout == "" and ours.returncode == 2, ours
    assert "temporary failure" in ours.stderr
    server.start()
    assert table.lookup_now(SEED_ADDRESSES[0]).value == SEED_ROUTING_ADDRESS   # a lone host is retried
    table.close()


def test_a_query_error_is_a_temporary_failure(mariadb_restored, tmp_path):
    text = (f"hosts = 127.0.0.1:{mariadb_restored.port}\nuser = postfix\npassword = {PASSWORD}\n"
            f"dbname = mail\nquery = SELECT goto FROM no_such_table WHERE address='%s'\n")
    table = open_table(f"mysql:{table_file(tmp_path, 'broken.cf', text)}")
    table.warn = lambda text: None
    result = table.lookup_now(SEED_ADDRESSES[0])
    assert result.tempfail and "no_such_table" in result.reason
    table.close()


def test_lookups_run_off_the_event_loop_on_one_reused_connection(mariadb_restored, tmp_path):
    import asyncio
    text = (f"hosts = 127.0.0.1:{mariadb_restored.port}\nuser = postfix\npassword = {PASSWORD}\n"
            f"dbname = mail\nquery = {QUERY}\n")
    table = open_table(f"mysql:{table_file(tmp_path, 'async.cf', text)}")
    count = "SELECT COUNT(*) FROM information_schema.processlist WHERE user = 'postfix'"
    [(before,)] = mariadb_restored.execute(count)
    threads: list[str] = []
    parameters = table.parameters
    table.parameters = lambda key: (threads.append(threading.current_thread().name), parameters(key))[1]

    async def many():
        return await asyncio.gather(*(table.lookup(address) for address in SEED_ADDRESSES * 4))
    results = asyncio.run(many())
    assert [result.value for result in results] == [SEED_ROUTING_ADDRESS] * len(SEED_ADDRESSES) * 4
    assert mariadb_restored.execute(count) == [(before + 1,)]        # 20 lookups, one connection
    assert len(threads) == 20 and all(name.startswith("mysql") for name in threads), threads   # not the loop's
    table.close()


def test_legacy_select_field_form_as_postfix(mariadb_restored, postfix_config, tmp_path):
    text = (f"hosts = 127.0.0.1:{mariadb_restored.port}\nuser = postfix\npassword = {PASSWORD}\ndbname = mail\n"
            "table = aliases\nselect_field = goto\nwhere_field = address\nadditional_conditions = AND active = 1\n")
    spec = f"mysql:{table_file(tmp_path, 'legacy.cf', text)}"
    assert_same_answer(postfix_config, SEED_ADDRESSES[4], spec, SEED_ROUTING_ADDRESS)
    assert_same_answer(postfix_config, "inactive@example.com", spec, None)


def tls_table(tmp_path, server, ca: Path, user: str = "postfix_tls", extra: str = "") -> str:
    text = (f"hosts = 127.0.0.1:{server.port}\nuser = {user}\npassword = {PASSWORD}\ndbname = mail\n"
            f"query = {QUERY}\ntls_CAfile = {ca}\ntls_verify_cert = yes\n{extra}")
    return f"mysql:{table_file(tmp_path, 'tls.cf', text)}"


def test_mysql_tls_settings_reach_a_server_that_requires_tls_as_postfix(mariadb_restored, peer_ca,
                                                                          postfix_config, tmp_path):
    spec = tls_table(tmp_path, mariadb_restored, peer_ca.cert_path)
    assert_same_answer(postfix_config, SEED_ADDRESSES[0], spec, SEED_ROUTING_ADDRESS)
    # postfix_tls is REQUIRE SSL: the answer came over TLS, and the next test shows that the
    # certificate was checked against tls_CAfile.


def test_mysql_tls_with_a_certificate_from_another_ca_is_a_temporary_failure(mariadb_restored, untrusted_ca,
                                                                              tmp_path):
    table = open_table(tls_table(tmp_path, mariadb_restored, untrusted_ca.cert_path))
    warnings: list[str] = []
    table.warn = warnings.append
    result = table.lookup_now(SEED_ADDRESSES[0])
    assert result.tempfail and "certificate verify failed" in result.reason, result
    table.close()
