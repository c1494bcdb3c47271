"""aliases(5): the source format newaliases builds and local(8) reads."""

import pytest

from mailferry.tables import open_table
from mailferry.tables.aliases import AliasTextTable, parse_alias_line, read_aliases, split_destinations
from mailferry.tables.build import build_index
from mailferry.tables.aliases import read_alias_entries

ALIASES = """\
# the usual ones
postmaster: root
MAILER-DAEMON:  postmaster
staff:      alice, bob,
            "|/usr/bin/logger -t staff", /var/log/staff.mbox,
  # a comment inside a continuation is skipped
            /srv/mail/staff/
"John Smith": john
list: :include:/etc/mail/list.members
"""


def entries(tmp_path, text):
    path = tmp_path / "aliases"
    path.write_text(text)
    warnings = []
    found = list(read_aliases(str(path), True, lambda line, message: warnings.append((line, message))))
    return found, warnings


def test_names_are_folded_and_values_kept_as_written(tmp_path):
    found, warnings = entries(tmp_path, ALIASES)
    assert warnings == []
    by_name = {name: value for name, value, _ in found}
    assert by_name["postmaster"] == "root"
    assert by_name["mailer-daemon"] == "postmaster"
    assert by_name["john smith"] == "john"
    assert by_name["list"] == ":include:/etc/mail/list.members"
    assert split_destinations(by_name["staff"]) == [
        "alice", "bob", "|/usr/bin/logger -t staff", "/var/log/staff.mbox", "/srv/mail/staff/"]


def test_line_numbers_are_where_each_entry_starts(tmp_path):
    found, _ = entries(tmp_path, ALIASES)
    assert [(name, line) for name, _, line in found][:4] == [
        ("postmaster", 2), ("mailer-daemon", 3), ("staff", 4), ("john smith", 8)]


def test_a_line_without_colon_is_skipped_with_a_warning(tmp_path):
    found, warnings = entries(tmp_path, "good: a\nbad value\n  continued\nalso: b\n")
    assert [name for name, _, _ in found] == ["good", "also"]
    assert warnings[0][0] == 2 and "need name:value pair" in warnings[0][1]


def test_leading_whitespace_without_a_line_before_is_ignored(tmp_path):
    found, warnings = entries(tmp_path, "   orphan: x\nreal: y\n")
    assert [name for name, _, _ in found] == ["real"]
    assert warnings == [(1, "logical line must not start with whitespace; it is ignored")]


@pytest.mark.parametrize("line, reason", [
    ('"unclosed: x', "unbalanced quote"), ("name:", "has no value"), (": value", "empty alias name")])
def test_malformed_lines(line, reason):
    assert reason in parse_alias_line(line)


def test_quoted_destination_keeps_its_commas():
    assert split_destinations('"|/bin/echo a, b" , carol') == ["|/bin/echo a, b", "carol"]
    assert split_destinations("a,,b , ") == ["a", "b"]


def test_hash_build_answers_as_newaliases_built_it(tmp_path):
    source = tmp_path / "aliases"
    source.write_text(ALIASES)
    report = build_index("hash", str(source), True, None, read_alias_entries)
    assert report.entries == 5
    table = open_table(f"hash:{source}")
    assert table.lookup_now("Staff").value.startswith("alice, bob,")
    assert table.lookup_now("john smith").value == "john"
    assert table.lookup_now("nobody-here").not_found


def test_duplicate_alias_keeps_the_first_and_names_both_lines(tmp_path):
    source = tmp_path / "aliases"
    source.write_text("a: one\nb: x\nA: two\n")
    warnings = []
    report = build_index("lmdb", str(source), True, warnings.append, read_alias_entries)
    assert report.duplicates == 1
    assert open_table(f"lmdb:{source}").lookup_now("a").value == "one"
    assert warnings == [f'{source}, line 3: duplicate entry: "a" (first on line 1, which wins)']


def test_texthash_alias_table_reads_the_aliases_format(tmp_path):
    source = tmp_path / "aliases"
    source.write_text(ALIASES + "broken line\n")
    table = AliasTextTable(str(source))
    assert table.lookup_now("POSTMASTER").value == "root"
    assert table.warnings and "line 10" in table.warnings[0]
