"""regexp: tables, checked against answers recorded from Postfix's postmap.

golden/regexp/cases.txt and warnings.txt hold what Postfix 3.7 answered for
the tables in that directory. The unit tests compare mailferry with those
recordings, so they need no Postfix; the integration tests re-ask the real
postmap so that the recordings cannot drift from Postfix unnoticed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from mailferry.tables.base import TableError
from mailferry.tables.regexp import PosixRegexError, RegexpTable, compile_posix

GOLDEN = Path(__file__).parent / "golden" / "regexp"
POSTMAP = "/usr/sbin/postmap"
NOT_FOUND = "NOTFOUND"
ERROR = "ERROR "


# --- the recordings --------------------------------------------------------

_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_ESCAPED_CHARS = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """Undo the golden files' escapes: \\n, \\t, \\\\ and \\xHH (a byte that is not UTF-8)."""
    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return chr(0xDC00 + int(match.group(1), 16))  # the surrogateescape form of that byte
        return _ESCAPED_CHARS.get(match.group(2), match.group(0))
    return _ESCAPE.sub(replace, text)


@dataclass(frozen=True)
class Case:
    table: str  # a file in GOLDEN, or an inline table "{ ... }"
    key: str
    expected: str  # NOT_FOUND, ERROR + message, or the value

    @property
    def spec_name(self) -> str:
        return self.table if self.table.startswith("{") else str(GOLDEN / self.table)

    def __str__(self) -> str:
        return f"{self.table} {self.key!r}"


def _data_lines(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [line.split("\t") for line in text.split("\n") if line and not line.startswith("#")]


def load_cases() -> list[Case]:
    return [Case(table, unescape(key), unescape(expected))
            for table, key, expected in _data_lines(GOLDEN / "cases.txt")]


def load_warnings() -> dict[str, list[tuple[int, str]]]:
    warnings: dict[str, list[tuple[int, str]]] = {}
    for table, line, message in _data_lines(GOLDEN / "warnings.txt"):
        warnings.setdefault(table, []).append((int(line), unescape(message)))
    return warnings


CASES = load_cases()
GOLDEN_WARNINGS = load_warnings()
TABLE_FILES = sorted(path.name for path in GOLDEN.glob("*.regexp"))


def answer(table: RegexpTable, key: str) -> str:
    result = table.lookup_now(key)
    assert not result.tempfail
    return result.value if result.found else NOT_FOUND


# --- mailferry against the recordings ---------------------------------------


def test_the_recordings_cover_enough_cases():
    assert len(CASES) >= 40
    assert {case.table for case in CASES} >= set(TABLE_FILES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_lookup_answers_as_postfix_did(case: Case):
    if case.expected.startswith(ERROR):
        with pytest.raises(TableError) as raised:
            RegexpTable(case.spec_name)
        assert raised.value.message == case.expected[len(ERROR):]
        return
    assert answer(RegexpTable(case.spec_name), case.key) == case.expected


@pytest.mark.parametrize("table_file", TABLE_FILES)
def test_warnings_are_the_ones_postfix_gave(table_file: str):
    table = RegexpTable(str(GOLDEN / table_file))
    assert [(w.line, w.message) for w in table.warnings] == GOLDEN_WARNINGS.get(table_file, [])


# --- the recordings against Postfix ----------------------------------------


def _require_postmap() -> None:
    # The recordings are only as good as this check, so a missing postmap fails it.
    if not os.access(POSTMAP, os.X_OK):
        pytest.fail(f"{POSTMAP} is needed to check the golden regexp answers; install Postfix")


def _postmap(config_dir: Path, key: str, spec_name: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([POSTMAP, "-c", str(config_dir), "-q", key, f"regexp:{spec_name}"],
                          capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def postfix_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config directory for postmap, which refuses to run without a main.cf."""
    directory = tmp_path_factory.mktemp("postfix")
    main_cf = directory / "main.cf"
    main_cf.write_text("")
    # Postfix waits about two seconds before reading a main.cf changed in the last few seconds.
    os.utime(main_cf, (0, 0))
    return directory


def _postfix_answer(process: subprocess.CompletedProcess[bytes]) -> str:
    stdout = process.stdout.decode("utf-8", "surrogateescape")
    stderr = process.stderr.decode("utf-8", "surrogateescape")
    fatal = re.search(r"postmap: fatal: (?:regexp map: )?(.*)", stderr)
    if process.returncode == 0:
        return stdout.removesuffix("\n")
    return ERROR + fatal.group(1) if fatal else NOT_FOUND


@pytest.mark.integration
def test_recorded_answers_still_agree_with_postfix(postfix_config: Path):
    _require_postmap()
    disagreements = []
    for case in CASES:
        actual = _postfix_answer(_postmap(postfix_config, case.key, case.spec_name))
        if actual != case.expected:
            disagreements.append(f"{case}: recorded {case.expected!r}, postmap says {actual!r}")
    assert not disagreements, "\n".join(disagreements)


def _as_postfix_logs(message: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", message)


def _postfix_warnings(stderr: str, path: str) -> list[tuple[int | None, str]]:
    """(line or None, message) for each warning postmap gave while opening `path`."""
    located = re.compile(r"postmap: warning: regexp map " + re.escape(path) + r", line (\d+): (.*)")
    unlocated = re.compile(r"postmap: warning: (?:" + re.escape(path) + r": )?(.*)")
    warnings: list[tuple[int | None, str]] = []
    for line in stderr.splitlines():
        if line.startswith("postmap: warning: table regexp:"):
            continue  # about the lookup's answer, not the table
        if match := located.fullmatch(line):
            warnings.append((int(match.group(1)), match.group(2)))
        elif match := unlocated.fullmatch(line):
            warnings.append((None, match.group(1)))
    return warnings


@pytest.mark.integration
@pytest.mark.parametrize("table_file", TABLE_FILES)
def test_recorded_warnings_still_agree_with_postfix(postfix_config: Path, table_file: str):
    _require_postmap()
    path = str(GOLDEN / table_file)
    process = _postmap(postfix_config, "", path)
    actual = _postfix_warnings(process.stderr.decode("utf-8", "surrogateescape"), path)
    recorded = [(line, _as_postfix_logs(message)) for line, message in GOLDEN_WARNINGS.get(table_file, [])]
    assert [message for _, message in actual] == [message for _, message in recorded]
    for (actual_line, _), (recorded_line, _) in zip(actual, recorded):
        assert actual_line in (None, recorded_line)


# --- the table's contract ----------------------------------------------------


def write_table(tmp_path: Path, text: str) -> RegexpTable:
    path = tmp_path / "table.regexp"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    return RegexpTable(str(path))


def test_it_is_a_case_preserving_pattern_table(tmp_path: Path):
    table = write_table(tmp_path, "/^(.*)$/ $1\n")
    assert (table.type_name, table.is_pattern, table.folds_keys) == ("regexp", True, False)
    assert table.spec == f"regexp:{tmp_path / 'table.regexp'}"
    assert answer(table, "MixedCase") == "MixedCase"


def test_it_has_no_sequential_access(tmp_path: Path):
    with pytest.raises(TableError, match="does not support sequential access"):
        write_table(tmp_path, "/a/ b\n").items()


def test_a_missing_file_is_an_error(tmp_path: Path):
    path = str(tmp_path / "absent.regexp")
    with pytest.raises(TableError) as raised:
        RegexpTable(path)
    assert raised.value.file == path
    assert "no such file" in raised.value.message


def test_an_unreadable_file_is_an_error(tmp_path: Path):
    with pytest.raises(TableError, match="cannot open"):
        RegexpTable(str(tmp_path))  # a directory


def test_a_bad_pattern_is_skipped_with_a_warning_naming_its_line(tmp_path: Path):
    table = write_table(tmp_path, "# patterns\n/^ok$/ fine\n/a(/ bad\n/a/ later\n")
    assert [(w.line, w.message) for w in table.warnings] == [(3, "Unmatched ( or \\(")]
    assert answer(table, "a(") == "later"


def test_a_missing_closing_delimiter_is_skipped_with_a_warning(tmp_path: Path):
    table = write_table(tmp_path, "/a/ first\n#a/ comment\n|a/ no close\n/b/ second\n")
    assert [(w.line, w.message) for w in table.warnings] == [(3, 'no closing regexp delimiter "|": skipping this rule')]
    assert answer(table, "b") == "second"


def test_unbalanced_if_and_endif_warn_on_their_own_lines(tmp_path: Path):
    table = write_table(tmp_path, "/x/ x\nendif\nif /a/\nif /ab/\n/abc/ abc\nendif\n/a/ a\n")
    assert [(w.line, w.message) for w in table.warnings] == [(2, "ignoring ENDIF without matching IF"), (3, "IF has no matching ENDIF")]
    assert answer(table, "abc") == "abc"
    assert answer(table, "a1") == "a"
    assert answer(table, "b") == NOT_FOUND  # an unclosed IF guards the rest of the file


def test_warnings_read_as_text_like_other_tables(tmp_path: Path):
    table = write_table(tmp_path, "/a/q x\n")
    assert [str(warning) for warning in table.warnings] == [
        f'{table.name}, line 1: unknown regexp option "q": skipping this rule']


def test_inline_table_warnings_count_rules_as_lines():
    table = RegexpTable("{ {/a/ a}, {/(/ bad}, {endif} }")
    assert [(w.line, w.message) for w in table.warnings] == [(2, "Unmatched ( or \\("), (3, "ignoring ENDIF without matching IF")]


def test_long_keys_are_not_truncated(tmp_path: Path):
    table = write_table(tmp_path, "/^(a*)b$/ $1\n")
    key = "a" * 100_000 + "b"
    assert answer(table, key) == "a" * 100_000


def test_an_empty_result_is_found_not_missing(tmp_path: Path):
    # Postfix answers "" (postmap warns that the table should have said not found).
    table = write_table(tmp_path, "/^(x)?y$/ $1\n/y/ later\n")
    result = table.lookup_now("y")
    assert result.found and result.value == ""


def test_lookup_is_also_available_asynchronously(tmp_path: Path):
    table = write_table(tmp_path, "/a/ b\n")
    assert asyncio.run(table.lookup("a")).value == "b"


# --- where mailferry knowingly differs from Postfix -------------------------


def test_alternatives_capture_the_first_match_not_the_longest(tmp_path: Path):
    # POSIX takes the longest: Postfix answers "ab". See the module docstring.
    table = write_table(tmp_path, "/^(a|ab)/ $1\n/^(ab|a)/ $1\n")
    assert answer(table, "ab") == "a"
    assert RegexpTable("{ {/^(ab|a)/ $1} }").lookup_now("ab").value == "ab"


def test_end_anchor_before_a_newline_inside_the_match_does_not_match(tmp_path: Path):
    # glibc (and so Postfix) matches this; the manual says `$` is the end of the key.
    table = write_table(tmp_path, "/a$./ x\n")
    assert answer(table, "a\nb") == NOT_FOUND


def test_absurdly_deep_nesting_is_refused_with_a_warning(tmp_path: Path):
    # regcomp takes it; Python's parser would overflow the stack.
    table = write_table(tmp_path, "/" + "(" * 1000 + "a" + ")" * 1000 + "/ deep\n/a/ shallow\n")
    assert [(w.line, w.message) for w in table.warnings] == [(1, "groups nested too deeply for mailferry")]
    assert answer(table, "a") == "shallow"


# --- properties ------------------------------------------------------------

_POSIX_SPECIALS = set(".[]()*+?{}|^$\\/")

# Printable ASCII and a few multi-byte characters; no newline, which cannot
# appear inside a pattern in a table file.
_TABLE_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                st.sampled_from("éßΩ€😀\t")), min_size=1, max_size=40)


def posix_literal(text: str) -> str:
    """`text` as an extended POSIX pattern that matches just it, between `/` delimiters."""
    return "".join("\\" + char if char in _POSIX_SPECIALS else char for char in text)


@pytest.fixture(scope="module")
def property_table_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("regexp-properties")


def literal_table(directory: Path, text: str) -> RegexpTable:
    return write_table(directory, f"/^{posix_literal(text)}$/ found\n")


@given(text=_TABLE_TEXT)
def test_an_escaped_literal_matches_its_own_text(property_table_dir: Path, text: str):
    assert answer(literal_table(property_table_dir, text), text) == "found"


@given(text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40))
def test_literals_match_in_any_ascii_case_by_default(property_table_dir: Path, text: str):
    assert answer(literal_table(property_table_dir, text), text.swapcase()) == "found"


@given(st.text())
def test_a_whole_key_group_gives_back_the_key(key: str):
    table = RegexpTable("{ {/^(.*)$/ $1} }")
    assert answer(table, key) == key


_DELIMITERS = b"/|%@,;:~"  # not "!": a leading "!" negates the match


def rule_for(pattern: bytes, extended: bool, icase: bool, multiline: bool) -> bytes | None:
    """A table line that hands `pattern` to Postfix's regcomp unchanged, with
    those flags, or None when no line can: a newline or NUL cannot be in a
    line, and an odd number of trailing backslashes would escape the closing
    delimiter. Postfix's defaults are REG_EXTENDED and REG_ICASE; its `x`,
    `i` and `m` flags toggle them and REG_NEWLINE."""
    if b"\n" in pattern or b"\0" in pattern or (len(pattern) - len(pattern.rstrip(b"\\"))) % 2:
        return None
    delimiter = next(bytes([d]) for d in _DELIMITERS if d not in pattern)
    flags = ("" if extended else "x") + ("" if icase else "i") + ("m" if multiline else "")
    return delimiter + pattern + delimiter + flags.encode() + b"\tfound\n"


# Pieces of POSIX syntax, so that the patterns also reach regcomp's errors
# and corners, not only the literal bytes that random binary mostly is.
_REGEX_PIECES = [bytes([c]) for c in b"()[]{}*+?|^$.\\-,:=a1Z "] + [
    b"\\(", b"\\)", b"\\{", b"\\}", b"\\1", b"\\2", b"[:alpha:]", b"[:nope:]", b"[.a.]", b"[=a=]",
    b"{1}", b"{1,2}", b"{2,1}", b"\\|", b"\\<", b"\\w", b"\xe9", b"\xff"]
_PATTERNS = st.one_of(st.binary(max_size=12),
                      st.lists(st.sampled_from(_REGEX_PIECES), max_size=8).map(b"".join))


@pytest.fixture(scope="module")
def regcomp_table_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("regcomp")


@pytest.mark.integration
@settings(deadline=None, max_examples=500)
@given(_PATTERNS, st.booleans(), st.booleans(), st.booleans())
def test_any_pattern_compiles_or_is_refused_as_regcomp_would(postfix_config: Path, regcomp_table_dir: Path,
                                                              pattern: bytes, extended: bool,
                                                              icase: bool, multiline: bool):
    """compile_posix against the real regcomp, through Postfix's postmap:
    the same patterns refused, with the same regerror() text."""
    _require_postmap()
    rule = rule_for(pattern, extended, icase, multiline)
    assume(rule is not None)
    try:
        compile_posix(pattern, extended=extended, icase=icase, multiline=multiline)
        ours = []
    except PosixRegexError as refused:
        ours = [(1, _as_postfix_logs(str(refused)))]
    event("refused" if ours else "compiled")
    table = regcomp_table_dir / "pattern.regexp"
    table.write_bytes(rule)
    process = _postmap(postfix_config, "key", str(table))
    postfix = _postfix_warnings(process.stderr.decode("utf-8", "surrogateescape"), str(table))
    assert postfix == ours, f"rule {rule!r}"
