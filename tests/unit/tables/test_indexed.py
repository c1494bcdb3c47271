import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailferry.tables import TableError, open_table
from mailferry.tables.build import build_index

SEED_SASL_PASSWD = (
    "gmail-smtp.l.google.com user.name@gmail.com:password\n"
    "smtp.gmail.com user.name@gmail.com:password\n"
)


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_seed_sasl_passwd_builds_and_answers(tmp_path):
    source = write(tmp_path / "sasl_passwd", SEED_SASL_PASSWD)
    report = build_index("hash", source)
    assert report.path == source + ".db" and report.entries == 2
    table = open_table(f"hash:{source}")
    assert table.lookup_now("smtp.gmail.com").value == "user.name@gmail.com:password"
    assert table.lookup_now("SMTP.Gmail.COM").value == "user.name@gmail.com:password"
    assert table.lookup_now("smtp.example.com").not_found


def test_index_keeps_the_sources_mode(tmp_path):
    source = write(tmp_path / "sasl_passwd", SEED_SASL_PASSWD, 0o600)
    build_index("hash", source)
    assert os.stat(source + ".db").st_mode & 0o777 == 0o600


def test_lmdb_type_uses_lmdb_suffix(tmp_path):
    source = write(tmp_path / "t", "a b\n")
    build_index("lmdb", source)
    assert os.path.exists(source + ".lmdb")
    assert open_table(f"lmdb:{source}").lookup_now("a").value == "b"


def test_duplicates_warn_with_both_lines_and_first_wins(tmp_path):
    source = write(tmp_path / "t", "a 1\nb 2\nA 3\n")
    warnings = []
    report = build_index("hash", source, warn=warnings.append)
    assert report.duplicates == 1
    assert warnings == [f'{source}, line 3: duplicate entry: "a" (first on line 1, which wins)']
    assert open_table(f"hash:{source}").lookup_now("a").value == "1"


def test_malformed_line_is_warned_and_skipped(tmp_path):
    source = write(tmp_path / "t", "novalue\nk v\n")
    warnings = []
    report = build_index("hash", source, warn=warnings.append)
    assert report.entries == 1
    assert warnings == [f"{source}, line 1: expected format: key whitespace value"]


def test_build_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    source = write(tmp_path / "t", "a 1\n")
    build_index("hash", source)
    reader = open_table(f"hash:{source}")
    write(tmp_path / "t", "a 2\n")
    build_index("hash", source)
    # The open reader still sees its whole old table; a new one sees the new table.
    assert reader.lookup_now("a").value == "1"
    assert open_table(f"hash:{source}").lookup_now("a").value == "2"
    assert sorted(os.listdir(tmp_path)) == ["t", "t.db"]


def test_stale_index_warns(tmp_path):
    source = write(tmp_path / "t", "a 1\n")
    build_index("hash", source)
    later = time.time() + 10
    os.utime(source, (later, later))
    table = open_table(f"hash:{source}")
    assert table.warnings == [f"database {source}.db is older than source file {source}; "
                              f"run: mailferry postmap hash:{source}"]


def test_fresh_index_does_not_warn(tmp_path):
    source = write(tmp_path / "t", "a 1\n")
    build_index("hash", source)
    assert open_table(f"hash:{source}").warnings == []


def test_missing_index_says_how_to_build_it(tmp_path):
    source = write(tmp_path / "t", "a 1\n")
    with pytest.raises(TableError, match=f"build it with: mailferry postmap hash:{source}"):
        open_table(f"hash:{source}")


def test_foreign_index_is_reported(tmp_path):
    source = write(tmp_path / "t", "a 1\n")
    (tmp_path / "t.db").write_bytes(b"\x00\x06\x15\x61" + b"\x00" * 8188)  # not LMDB
    with pytest.raises(TableError, match="not a mailferry index"):
        open_table(f"hash:{source}")


def test_missing_source_is_reported(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        build_index("hash", str(tmp_path / "absent"))


def test_items_lists_every_entry(tmp_path):
    source = write(tmp_path / "t", "b 2\na 1\n")
    build_index("hash", source)
    assert sorted(open_table(f"hash:{source}").items()) == [("a", "1"), ("b", "2")]


def test_quoted_key_keeps_its_quotes_like_postfix(tmp_path):
    source = write(tmp_path / "t", '"john smith"@example.com  js\n')
    build_index("hash", source)
    assert open_table(f"hash:{source}").lookup_now('"john smith"@example.com').value == "js"


def test_unfolded_build_keeps_case(tmp_path):
    source = write(tmp_path / "t", "Key v\n")
    build_index("hash", source, fold=False)
    assert [k for k, _ in open_table(f"hash:{source}").items()] == ["Key"]


keys = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters='"#'),
               min_size=1, max_size=40).map(str.lower).filter(lambda k: k == k.lower())
# Values may hold no-break spaces, NEL and U+2028: Postfix splits lines on \n only
# and fields on ASCII blanks only, and so must we.
table_values = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=60) \
    .map(lambda value: value.strip(" ")).filter(bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, table_values, min_size=1, max_size=30))
def test_postmap_then_lookup_returns_every_value(tmp_path, entries):
    source = tmp_path / "roundtrip"
    source.write_text("".join(f"{key} {value}\n" for key, value in entries.items()))
    build_index("hash", str(source))
    table = open_table(f"hash:{source}")
    for key, value in entries.items():
        assert table.lookup_now(key).value == value
    assert dict(table.items()) == entries
    table.close()
