"""mysql:, pgsql:, sqlite: tables without a server: the file, the query translation, db_common's
key rules, and sqlite: lookups on a real SQLite file. (Against real MariaDB and PostgreSQL, and
Postfix's postmap: tests/integration/test_sql_tables.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mailferry.tables import TableError, open_table
from mailferry.tables.sql.query import PLACEHOLDER, QueryTranslationError, translate
from mailferry.tables.sql.settings import MYSQL_DEFAULT_SOCKET, Host, load_config


@pytest.mark.parametrize("template, dialect, sql, parameters", [
    ("SELECT goto FROM alias WHERE address='%s' AND active = '1'", "mysql",
     "SELECT goto FROM alias WHERE address=%s AND active = '1'", ("%s",)),
    ("SELECT goto FROM alias WHERE address='%u@%d'", "pgsql", "SELECT goto FROM alias WHERE address=%s", ("%u@%d",)),
    ("SELECT 1 FROM d WHERE name LIKE '%%.%d' AND x = '100%%'", "mysql",
     "SELECT 1 FROM d WHERE name LIKE %s AND x = '100%%'", ("%%.%d",)),
    ("SELECT a FROM t WHERE id=%s", "sqlite", "SELECT a FROM t WHERE id=?", ("%s",)),
    ('SELECT a FROM t WHERE b="%s"', "mysql", "SELECT a FROM t WHERE b=%s", ("%s",)),   # a string in MySQL
    ("SELECT a FROM t WHERE b='it''s %s'", "pgsql", "SELECT a FROM t WHERE b=%s", ("it's %s",)),
    ("SELECT a FROM t WHERE b='%1' AND c='%2.%1'", "mysql", "SELECT a FROM t WHERE b=%s AND c=%s", ("%1", "%2.%1")),
    ("SELECT 'fixed'", "sqlite", "SELECT 'fixed'", ()),
])
def test_a_postfix_query_becomes_a_parameterised_query(template, dialect, sql, parameters):
    query = translate(template, dialect)
    style = "qmark" if dialect == "sqlite" else "format"
    assert query.render(style) == sql
    assert query.parameters == parameters
    assert query.pieces.count(PLACEHOLDER) == len(parameters)


@pytest.mark.parametrize("template, dialect, message", [
    ('SELECT a FROM "%s"', "pgsql", "quoted name"),
    ("SELECT a FROM `%d`", "mysql", "quoted name"),
    ("SELECT a FROM t WHERE b='x\\'%s'", "mysql", "backslash"),
    ("SELECT a FROM t WHERE b='%s", "mysql", "unterminated"),
    ("SELECT a FROM t WHERE b='%x'", "sqlite", None),       # invalid code inside a literal: Templates
    ("SELECT a FROM t WHERE b=%q", "sqlite", "%q is not one of"),
])
def test_what_cannot_be_parameterised_is_an_error(template, dialect, message):
    if message is None:
        translate(template, dialect)           # the literal is one parameter; its code is checked at open
        return
    with pytest.raises(QueryTranslationError, match=message):
        translate(template, dialect)


def write(tmp_path: Path, text: str, name: str = "table.cf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, line, message", [
    ("hosts = localhost\nuser x\n", 2, "missing '='"),
    ("dbname = m\nquery = SELECT a FROM t WHERE b='%x'\n", 2, "invalid query template"),
    ("dbname = m\n\nquery = SELECT a FROM `%s`\n", 3, "quoted name"),
    ("dbname = m\nquery = SELECT a FROM t WHERE b='%s'\nexpansion_limit = many\n", 3, "bad numerical"),
    ("dbname = m\nquery = SELECT a FROM t WHERE b='%s'\nhosts = db:port\n", 3, "unknown service port/tcp"),
    ("dbname = m\nquery = q\ntls_verify_cert = maybe\n", 3, "bad boolean"),
    ("dbname = m\nquery = SELECT a FROM t WHERE b='%s'\nresult_format = %s%q\n", 3, "invalid result template"),
])
def test_config_errors_name_the_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(TableError, match=message) as raised:
        open_table(f"mysql:{path}")
    assert (raised.value.file, raised.value.line) == (str(path), line)
    assert str(raised.value).startswith(f"{path}, line {line}: ")


def test_missing_settings_and_files_are_errors(tmp_path):
    with pytest.raises(TableError, match="dbname is not set"):
        open_table(f"pgsql:{write(tmp_path, 'query = SELECT 1')}")
    with pytest.raises(TableError, match="neither query nor the older table, select_field"):
        open_table(f"mysql:{write(tmp_path, 'dbname = m')}")
    with pytest.raises(TableError, match="dbpath is not set"):
        open_table(f"sqlite:{write(tmp_path, 'query = SELECT 1')}")
    with pytest.raises(TableError, match="cannot open this mysql_table"):
        open_table(f"mysql:{tmp_path / 'missing.cf'}")
    with pytest.raises(TableError, match="from a file only"):
        open_table("pgsql:virtual_alias")     # Postfix's main.cf-parameter form


def test_legacy_fields_build_postfix_query(tmp_path):
    path = write(tmp_path, "dbname = m\ntable = aliases\nselect_field = goto\nwhere_field = address\n"
                           "additional_conditions = AND active = 1\n")
    config = load_config("mysql", str(path))
    assert config.query_text == "SELECT goto FROM aliases WHERE address='%s' AND active = 1"
    pgsql = load_config("pgsql", str(write(tmp_path, "dbname = m\nselect_function = lookup\n", "f.cf")))
    assert pgsql.query_text == "SELECT lookup('%s')"


def test_hosts_forms_as_postfix_reads_them(tmp_path):
    path = write(tmp_path, "dbname = m\nquery = SELECT 1\nhosts = unix:/run/my.sock, inet:db1:3307 db2 "
                           "localhost [::1]:3308\n")
    assert load_config("mysql", str(path)).hosts == [
        Host("unix:/run/my.sock", "unix", "/run/my.sock", None), Host("inet:db1:3307", "inet", "db1", 3307),
        Host("db2", "inet", "db2", None), Host("localhost", "unix", MYSQL_DEFAULT_SOCKET, None),
        Host("[::1]:3308", "inet", "::1", 3308)]
    pg = write(tmp_path, "dbname = m\nquery = SELECT 1\nhosts = /run/postgresql postgresql://u@h/db "
                         "inet:h:5433\n", "pg.cf")
    assert [(host.kind, host.address, host.port) for host in load_config("pgsql", str(pg)).hosts] == [
        ("unix", "/run/postgresql", None), ("uri", "postgresql://u@h/db", None), ("inet", "h", 5433)]
    ordered = load_config("mysql", str(path)).ordered_hosts()
    assert {host.kind for host in ordered[:2]} == {"unix"}       # unix sockets first, as Postfix


def test_unknown_names_are_problems_for_check_not_errors(tmp_path):
    from mailferry.tables.sql import file_problems
    path = write(tmp_path, "dbname = m\nquery = SELECT 1\nhost = db\npassword = p\n")
    path.chmod(0o644)
    open_table(f"mysql:{path}")
    problems = file_problems("mysql", str(path))
    assert [(problem.line, "hosts" in problem.message or "readable" in problem.message)
            for problem in problems] == [(3, True), (4, True)]


# --- sqlite: lookups on a real file ---------------------------------------------------------------

ROWS = [("a@example.com", "b@example.org"), ("a@example.com", "c@example.org"), ("n@example.com", None),
        ("e@example.com", ""), ("o'brien@example.com", "quote@example.org"), ("user", "bare@example.org"),
        ("x@sub.example.com", "deep@example.org")]


@pytest.fixture
def database(tmp_path) -> Path:
    path = tmp_path / "aliases.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE alias (address TEXT, goto TEXT)")
        connection.executemany("INSERT INTO alias VALUES (?, ?)", ROWS)
    connection.close()
    return path


def sqlite_table(tmp_path, database, extra: str = "", query: str = "SELECT goto FROM alias WHERE address='%s'"):
    path = write(tmp_path, f"dbpath = {database}\nquery = {query}\n{extra}", "sqlite.cf")
    table = open_table(f"sqlite:{path}")
    table.warn = lambda text: None
    return table


def test_rows_are_joined_with_commas_and_null_or_empty_values_skipped(tmp_path, database):
    table = sqlite_table(tmp_path, database)
    assert table.lookup_now("A@Example.COM").value == "b@example.org,c@example.org"     # key folded
    assert table.lookup_now("n@example.com").not_found
    assert table.lookup_now("e@example.com").not_found
    assert table.lookup_now("o'brien@example.com").value == "quote@example.org"
    for attack in ("' OR '1'='1", "%", "a@example.co_", "o''brien@example.com"):
        assert table.lookup_now(attack).not_found, attack


def test_result_format_expansions(tmp_path, database):
    table = sqlite_table(tmp_path, database, "result_format = %u at %d for %U of %D (%S) 100%%\n")
    assert table.lookup_now("o'brien@example.com").value == \
        "quote at example.org for o'brien of example.com (o'brien@example.com) 100%"
    # A result without a domain is skipped when the format needs %d, as Postfix skips it.
    assert sqlite_table(tmp_path, database, "result_format = %d\n",
                        "SELECT 'nodomain' FROM alias WHERE address='%s'").lookup_now("user").not_found


def test_keys_that_cannot_fill_the_query_are_not_looked_up(tmp_path, database):
    by_domain = sqlite_table(tmp_path, database, query="SELECT goto FROM alias WHERE address='%u@%d'")
    assert by_domain.lookup_now("a@example.com").value == "b@example.org,c@example.org"
    assert by_domain.lookup_now("user").not_found                    # no domain for %d: no query
    labels = sqlite_table(tmp_path, database, query="SELECT goto FROM alias WHERE address='x@%3.%2.%1'")
    assert labels.lookup_now("anyone@sub.example.com").value == "deep@example.org"
    assert labels.lookup_now("anyone@example.com").not_found         # fewer than 3 labels
    local = sqlite_table(tmp_path, database, query="SELECT goto FROM alias WHERE address='%u'")
    assert local.lookup_now("user@anything.test").value == "bare@example.org"
    assert local.lookup_now("@example.com").not_found                # %u of "@domain"


def test_domain_limits_lookups_to_listed_domains(tmp_path, database):
    table = sqlite_table(tmp_path, database, "domain = example.com, !sub.example.com\n")
    assert table.lookup_now("a@example.com").found
    assert table.lookup_now("x@sub.example.com").not_found
    assert table.lookup_now("user").not_found                         # no domain at all


def test_expansion_limit_is_a_temporary_failure(tmp_path, database):
    table = sqlite_table(tmp_path, database, "expansion_limit = 1\n")
    assert table.lookup_now("a@example.com").tempfail
    assert table.lookup_now("o'brien@example.com").found


def test_a_missing_database_or_a_bad_query_is_a_temporary_failure(tmp_path, database):
    assert sqlite_table(tmp_path, tmp_path / "none.db").lookup_now("a@example.com").tempfail
    assert sqlite_table(tmp_path, database, query="SELECT nothing FROM nowhere WHERE a='%s'") \
        .lookup_now("a@example.com").tempfail


def test_the_database_is_opened_read_only(tmp_path, database):
    table = sqlite_table(tmp_path, database, query="DELETE FROM alias WHERE address='%s' RETURNING goto")
    assert table.lookup_now("a@example.com").tempfail
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM alias").fetchone() == (len(ROWS),)
    connection.close()


def test_async_lookups_run_in_the_table_thread(tmp_path, database):
    table = sqlite_table(tmp_path, database)

    async def both():
        return await asyncio.gather(table.lookup("a@example.com"), table.lookup("nobody@example.com"))
    found, missing = asyncio.run(both())
    assert found.value == "b@example.org,c@example.org" and missing.not_found
    table.close()


# --- proxy: ----------------------------------------------------------------------------------------

@pytest.fixture
def proxy_state():
    from mailferry.tables import proxy
    saved = proxy._approved
    yield proxy
    proxy._approved = saved


def test_proxy_shares_one_inner_table_per_process(tmp_path, database, proxy_state):
    path = write(tmp_path, f"dbpath = {database}\nquery = SELECT goto FROM alias WHERE address='%s'\n")
    first, second = open_table(f"proxy:sqlite:{path}"), open_table(f"proxy:proxy:sqlite:{path}")
    assert first.inner is second.inner
    assert first.spec == f"proxy:sqlite:{path}"
    assert first.lookup_now("user").value == "bare@example.org"
    first.close()
    assert second.lookup_now("user").value == "bare@example.org"     # still open for the other user
    second.close()
    third = open_table(f"proxy:sqlite:{path}")
    assert third.inner is not first.inner                            # the last close closed it
    third.close()


def test_proxy_serves_only_what_proxy_read_maps_lists(tmp_path, database, proxy_state):
    path = write(tmp_path, f"dbpath = {database}\nquery = SELECT goto FROM alias WHERE address='%s'\n")
    listed = write(tmp_path, f"proxy:sqlite:{path}\n", "more_maps")
    settings = {"proxy_read_maps": f"$virtual_alias_maps {listed}", "smtpd_restriction_classes": "special",
                "special": "check_sender_access proxy:hash:/etc/special"}
    proxy_state.approve_from(lambda name: settings.get(name, ""))
    assert open_table(f"proxy:sqlite:{path}").lookup_now("user").found       # via the /file/name entry
    assert proxy_state.is_approved("hash:/etc/special")                     # via the restriction class
    warnings = []
    from mailferry.tables import logsink
    logsink.log_warnings_to(lambda service, text: warnings.append((service, text)))
    try:
        settings["proxy_read_maps"] = "$virtual_alias_maps"
        proxy_state.approve_from(lambda name: settings.get(name, ""))
        refused = open_table(f"proxy:sqlite:{path}")
    finally:
        logsink.log_warnings_to(logsink._stderr_warning)
    result = refused.lookup_now("user")
    assert result.tempfail and "proxymap service is not configured" in result.reason
    assert warnings == [("proxymap", f'request for unapproved table: "sqlite:{path}"'),
                        ("proxymap", f"to approve this table for read-only access, list proxy:sqlite:{path} "
                                     f"in main.cf:proxy_read_maps")]


def test_a_table_used_before_a_fork_works_in_the_child(tmp_path, database):
    """The daemon forks its workers: a child must not wait on the parent's worker thread or
    share its connection."""
    import os
    table = sqlite_table(tmp_path, database)
    assert asyncio.run(table.lookup("user")).value == "bare@example.org"      # thread and connection made
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            answer = asyncio.run(asyncio.wait_for(table.lookup("o'brien@example.com"), 10)).value or ""
        except BaseException as exc:   # noqa: BLE001 - reported to the parent
            answer = f"error {exc!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 200).decode() == "quote@example.org" and status == 0
    os.close(read)
    assert table.lookup_now("user").value == "bare@example.org"               # the parent's still works
    table.close()
