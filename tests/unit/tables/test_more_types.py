"""unionmap:, pipemap:, randmap:, environ:, fail:, the types mailferry refuses, and what pcre:
does differently from Postfix (the documented differences), each checked as Postfix's postmap
answers where Postfix can be asked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.tables import SUPPORTED_TYPES, UNSUPPORTED_TYPES, TableError, open_table

UNION = "unionmap:{inline:{x=1}, inline:{x=2, y=3}, static:s}"
PIPE = "pipemap:{inline:{x=y, q=z}, inline:{y=final}}"


def ask(spec: str, key: str):
    table = open_table(spec)
    try:
        return asyncio.run(table.lookup(key))
    finally:
        table.close()


def test_unionmap_joins_every_tables_answer_in_order_with_commas():
    assert ask(UNION, "x").value == "1,2,s"
    assert ask(UNION, "y").value == "3,s"
    assert ask("unionmap:{inline:{x=1}, inline:{z=2}}", "q").not_found


def test_unionmap_fails_temporarily_when_any_table_does():
    assert ask("unionmap:{inline:{x=1}, fail:down}", "x").tempfail


def test_pipemap_feeds_each_answer_to_the_next_table():
    assert ask(PIPE, "x").value == "final"
    assert ask(PIPE, "q").not_found  # the second table has no "z"
    assert ask(PIPE, "nothing").not_found
    assert ask("pipemap:{inline:{x=y}, fail:down}", "x").tempfail


def test_composites_take_the_first_tables_pattern_nature():
    assert open_table("unionmap:{regexp:{{/x/ y}}, inline:{x=1}}").is_pattern
    assert not open_table("pipemap:{inline:{x=1}, regexp:{{/x/ y}}}").is_pattern


@pytest.mark.parametrize("spec", ["unionmap:{inline:{x=1} fail:x", "unionmap:{x}", "unionmap:{}",
                                  "pipemap:nobraces", "pipemap:{inline:{a=b}}junk"])
def test_composite_syntax_errors_are_postfixs(spec):
    type_name = spec.split(":")[0]
    with pytest.raises(TableError, match=f'bad syntax: ".*"; need "{type_name}:{{type:name...}}"'):
        open_table(spec)


def test_a_member_that_cannot_open_is_the_composites_error(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        open_table(f"unionmap:{{inline:{{x=1}}, pcre:{tmp_path}/missing.pcre}}")


def test_randmap_answers_one_of_its_values_braces_kept_as_postfix_keeps_them():
    values = {ask("randmap:{ {a b}, c }", "any").value for _ in range(200)}
    assert values == {"{a b}", "c"}


@pytest.mark.parametrize("spec", ["randmap:{}", "randmap:x"])
def test_randmap_syntax_errors_are_postfixs(spec):
    with pytest.raises(TableError, match='need "randmap:{value...}"'):
        open_table(spec)


def test_environ_looks_up_the_folded_variable_name(monkeypatch):
    monkeypatch.setenv("mailferry_golden", "lower")
    monkeypatch.setenv("MAILFERRY_GOLDEN", "upper")
    assert ask("environ:", "MAILFERRY_GOLDEN").value == "lower"
    assert ask("environ:x", "no_such_variable_here").not_found


def test_fail_fails_every_lookup_temporarily():
    result = ask("fail:testing", "anything")
    assert result.tempfail and "fail:testing" in result.reason


@pytest.mark.parametrize("type_name", UNSUPPORTED_TYPES)
def test_types_that_cannot_work_here_are_refused_clearly(type_name):
    with pytest.raises(TableError, match=f"{type_name}: table type not supported by mailferry"):
        open_table(f"{type_name}:/etc/postfix/some-table")


def test_nis_stays_a_table_that_finds_nothing_as_on_a_host_without_nis():
    # Debian's default alias_maps names nis:mail.aliases: it must load, as Postfix's does.
    assert "nis" in SUPPORTED_TYPES and ask("nis:mail.aliases", "root").not_found


def test_pcre_backslash_c_is_refused_with_a_warning_a_documented_difference(tmp_path):
    table_file = tmp_path / "c.pcre"
    table_file.write_text("/\\C/ any byte\n/x/ x\n")
    table = open_table(f"pcre:{table_file}")
    assert [warning.line for warning in table.warnings] == [1]
    assert "error in regex" in table.warnings[0].message
    assert table.lookup_now("x").value == "x"


def test_pcre_keys_are_matched_as_bytes_not_utf8_characters(tmp_path):
    table_file = tmp_path / "bytes.pcre"
    table_file.write_text("/^caf.$/ one byte\n/^caf..$/ two bytes\n")
    assert open_table(f"pcre:{table_file}").lookup_now("café").value == "two bytes"


def test_a_pcre_match_error_makes_the_rule_not_apply_negated_or_not(tmp_path):
    table_file = tmp_path / "limit.pcre"
    # Catastrophic backtracking hits PCRE2's match limit, as it does in Postfix.
    table_file.write_text("/^(a+)+$/ matched\n!/^(a+)+$/ negated\n/./ fallback\n")
    assert open_table(f"pcre:{table_file}").lookup_now("a" * 40 + "b").value == "fallback"


def _mailferry(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("mailferry")), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("spec, key, expected", [
    (UNION, "x", "1,2,s"), (PIPE, "x", "final"), ("randmap:{only}", "k", "only"),
    ("environ:", "HOME", os.environ.get("home", "")),
])
def test_postmap_q_understands_each_type(spec, key, expected):
    process = _mailferry("postmap", "-q", key, spec)
    assert (process.stdout, process.returncode) == ((f"{expected}\n", 0) if expected else ("", 1))


def test_postmap_q_of_fail_is_a_temporary_failure():
    process = _mailferry("postmap", "-q", "k", "fail:x")
    assert process.returncode == 2 and "temporary failure" in process.stderr


@pytest.mark.parametrize("type_name", ["pcre", "cidr"])
def test_postmap_refuses_to_build_pattern_tables_as_postfix_does(tmp_path, type_name):
    source = tmp_path / f"table.{type_name}"
    source.write_text("/x/ y\n" if type_name == "pcre" else "1.2.3.4 OK\n")
    process = _mailferry("postmap", f"{type_name}:{source}")
    assert process.returncode != 0 and "nothing to build" in process.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [source.name]


def test_postmap_names_an_unsupported_type():
    process = _mailferry("postmap", "-q", "k", "memcache:/etc/postfix/memcache.cf")
    assert process.returncode != 0 and "memcache: table type not supported by mailferry" in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.integration
@pytest.mark.parametrize("spec, key", [(UNION, "x"), (UNION, "y"), (UNION, "nothing"), (PIPE, "x"),
                                       (PIPE, "q"), ("randmap:{only}", "k")])
def test_postfix_gives_the_same_answers(tmp_path, spec, key):
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("")
    os.utime(main_cf, (0, 0))
    theirs = subprocess.run(["/usr/sbin/postmap", "-c", str(tmp_path), "-q", key, spec],
                            capture_output=True, text=True, timeout=60)
    ours = _mailferry("postmap", "-q", key, spec)
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode), theirs.stderr


def test_composites_of_tables_that_answer_at_once_serve_lists_read_at_once():
    from mailferry.tables.match_lists import NetworkList
    networks = NetworkList("unionmap:{cidr:{{10.0.0.0/8 OK}}, inline:{192.0.2.1=OK}}, 127.0.0.1")
    assert [networks.matches(ip) for ip in ("10.1.2.3", "192.0.2.1", "127.0.0.1", "8.8.8.8")] == [
        True, True, True, False]
    with pytest.raises(TableError, match="answers over the network"):
        NetworkList("unionmap:{cidr:{{10.0.0.0/8 OK}}, socketmap:inet:127.0.0.1:1:nets}")


def test_wrapped_tables_answer_now_only_when_the_table_behind_them_does(tmp_path, monkeypatch):
    """The metrics wrapper and proxy: define lookup_now themselves; `answers_now` (what
    mynetworks and the other synchronous lists rely on) must still be the inner table's."""
    from mailferry.tables.proxy import ProxiedTable
    from mailferry.tables.timing import TimedTable
    from mailferry.tables import open_table
    async_only = open_table("socketmap:inet:127.0.0.1:9:name")
    assert not async_only.answers_now
    assert not ProxiedTable("socketmap:inet:127.0.0.1:9:name", async_only).answers_now
    monkeypatch.setattr("mailferry.metrics.lookup_timer", lambda spec: None)
    assert not TimedTable(async_only).answers_now
    now = open_table("inline:{a=b}")
    assert ProxiedTable("inline:{a=b}", now).answers_now and TimedTable(now).answers_now
