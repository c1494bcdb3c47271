import asyncio

import pytest

from mailferry.tables import MISSING, Maps, TableError, found, open_maps, open_table, tempfail
from mailferry.tables.base import Table


def test_texthash_reads_source_directly(tmp_path):
    source = tmp_path / "t"
    source.write_text("a 1\nB 2\n  continued\nbad\n")
    table = open_table(f"texthash:{source}")
    assert table.lookup_now("a").value == "1"
    assert table.lookup_now("b").value == "2  continued"
    assert table.lookup_now("bad").not_found
    assert table.warnings == [f"{source}, line 4: expected format: key whitespace value"]


def test_inline_table():
    table = open_table("inline:{ a=1, B=2, { c = text with spaces } }")
    assert table.lookup_now("A").value == "1"
    assert table.lookup_now("b").value == "2"
    assert table.lookup_now("c").value == "text with spaces"
    assert table.lookup_now("d").not_found


def test_inline_requires_braces_and_pairs():
    with pytest.raises(TableError, match="expected"):
        open_table("inline:a=1")
    with pytest.raises(TableError, match="key=value"):
        open_table("inline:{ a }")
    with pytest.raises(TableError, match="key=value"):
        open_table("inline:{ a=1, B = 2 }")  # Postfix: missing '=' after attribute name


def test_static_answers_every_key():
    assert open_table("static:OK").lookup_now("anything").value == "OK"
    assert open_table("static:{ text with spaces }").lookup_now("x").value == "text with spaces"


def test_unknown_type_lists_supported_ones():
    with pytest.raises(TableError, match="unsupported dictionary type: nosuchtype.*hash"):
        open_table("nosuchtype:/etc/x.cf")


def test_bare_file_defaults_to_hash(tmp_path):
    with pytest.raises(TableError, match="postmap hash:"):
        open_table(str(tmp_path / "absent"))


class Scripted(Table):
    type_name = "scripted"

    def __init__(self, answers, pattern=False):
        super().__init__("test")
        self.answers = answers
        self.is_pattern = pattern
        self.asked = []

    def lookup_now(self, key):
        self.asked.append(key)
        return self.answers.get(key, MISSING)


def test_maps_first_found_wins():
    maps = Maps([Scripted({"a": found("1")}), Scripted({"a": found("2"), "b": found("3")})])
    assert asyncio.run(maps.lookup("a")).value == "1"
    assert asyncio.run(maps.lookup("b")).value == "3"
    assert asyncio.run(maps.lookup("c")).not_found


def test_maps_tempfail_stops_the_search():
    later = Scripted({"a": found("2")})
    maps = Maps([Scripted({"a": tempfail("ldap down")}), later])
    result = asyncio.run(maps.lookup("a"))
    assert result.tempfail and result.reason == "ldap down"
    assert later.asked == []


def test_maps_partial_keys_skip_pattern_tables():
    pattern = Scripted({"@example.com": found("p")}, pattern=True)
    maps = Maps([pattern])
    assert asyncio.run(maps.lookup("@example.com", partial=True)).not_found
    assert pattern.asked == []


def test_open_maps_splits_the_list(tmp_path):
    maps = open_maps("inline:{a=1}, static:x")
    assert [t.type_name for t in maps.tables] == ["inline", "static"]
