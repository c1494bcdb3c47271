"""pcre: and cidr: tables give Postfix's answers, on the golden cases in tests/golden/tables/.

keys.txt lists the keys asked of each table there; cases.txt and
warnings.txt are what Postfix's own `postmap -q` answered and warned
(recorded with `python tests/unit/tables/test_table_golden.py --record`).
The unit tests compare mailferry with the recordings, so they need no
Postfix; the integration tests ask the real postmap again, side by side with
mailferry, so the recordings cannot drift from Postfix unnoticed.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "tables"
POSTMAP = "/usr/sbin/postmap"
NOT_FOUND = "NOTFOUND"

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda match: _ESCAPES.get(match.group(1), match.group(0)), text)


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _rows(name: str) -> list[list[str]]:
    text = (GOLDEN / name).read_text(encoding="utf-8")
    return [line.split("\t") for line in text.split("\n") if line and not line.startswith("#")]


def spec(table: str) -> str:
    """"pcre/access.pcre" → "pcre:/abs/path/pcre/access.pcre"."""
    return f"{table.split('/')[0]}:{GOLDEN / table}"


KEYS = [(table, unescape(key)) for table, key in _rows("keys.txt")]
TABLES = sorted({table for table, _ in KEYS})


# --- asking Postfix ----------------------------------------------------------


def postfix_config() -> Path:
    """A config directory for postmap, which refuses to run without a main.cf."""
    directory = Path(tempfile.mkdtemp(prefix="golden-postfix-"))
    main_cf = directory / "main.cf"
    main_cf.write_text("")
    os.utime(main_cf, (0, 0))  # Postfix waits ~2 s for a main.cf changed in the last seconds
    return directory


def postfix_answer(config_dir: Path, table: str, key: str) -> str:
    process = subprocess.run([POSTMAP, "-c", str(config_dir), "-q", key, spec(table)],
                             capture_output=True, timeout=30)
    if process.returncode == 0:
        return process.stdout.decode("utf-8", "surrogateescape").removesuffix("\n")
    fatal = re.search(rb"postmap: fatal: (.*)", process.stderr)
    assert fatal is None, f"postmap failed on {table} {key!r}: {process.stderr!r}"
    return NOT_FOUND


def postfix_warnings(config_dir: Path, table: str) -> list[tuple[int, str]]:
    process = subprocess.run([POSTMAP, "-c", str(config_dir), "-q", "golden-warnings-probe", spec(table)],
                             capture_output=True, timeout=30)
    """(line, message) of each warning; line 0 for one Postfix gives without a line (mac_parse's)."""
    located = re.compile(r"postmap: warning: \w+ map " + re.escape(str(GOLDEN / table)) + r", line (\d+): (.*)")
    unlocated = re.compile(r"postmap: warning: (.*)")
    warnings = []
    for line in process.stderr.decode("utf-8", "surrogateescape").splitlines():
        if match := located.fullmatch(line):
            warnings.append((int(match.group(1)), match.group(2)))
        elif match := unlocated.fullmatch(line):
            warnings.append((0, match.group(1)))
    return warnings


def same_warnings(ours: list[tuple[int, str]], postfix: list[tuple[int, str]]) -> bool:
    """The same messages in the same order, on the same lines where Postfix names one."""
    return len(ours) == len(postfix) and all(
        message == postfix_message and postfix_line in (0, line)
        for (line, message), (postfix_line, postfix_message) in zip(ours, postfix))


def record() -> None:
    if not os.access(POSTMAP, os.X_OK):
        sys.exit(f"{POSTMAP} is needed to record the golden answers")
    config_dir = postfix_config()
    header = ("# Answers of Postfix's `postmap -q KEY TYPE:/abs/path/TABLE` (Debian, postfix-pcre),\n"
              "# recorded by test_table_golden.py --record. table<TAB>key<TAB>expected;\n"
              "# expected is NOTFOUND or the value. Keys and values escape \\n, \\t and \\\\.\n")
    with open(GOLDEN / "cases.txt", "w", encoding="utf-8") as out:
        out.write(header)
        for table, key in KEYS:
            out.write(f"{table}\t{escape(key)}\t{escape(postfix_answer(config_dir, table, key))}\n")
    with open(GOLDEN / "warnings.txt", "w", encoding="utf-8") as out:
        out.write("# Warnings Postfix's postmap gave opening each table: table<TAB>line<TAB>message.\n")
        for table in TABLES:
            for line, message in postfix_warnings(config_dir, table):
                out.write(f"{table}\t{line}\t{message}\n")


# --- asking mailferry --------------------------------------------------------


def mailferry_answer(table: str, key: str) -> str:
    from mailferry.tables import open_table
    opened = open_table(spec(table))
    try:
        result = asyncio.run(opened.lookup(key))
    finally:
        opened.close()
    assert not result.tempfail, result
    return result.value if result.found else NOT_FOUND


def mailferry_warnings(table: str) -> list[tuple[int, str]]:
    from mailferry.tables import open_table
    return [(warning.line, warning.message) for warning in open_table(spec(table)).warnings]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    record()
    sys.exit(0)


# --- the tests ---------------------------------------------------------------


CASES = [(table, unescape(key), unescape(expected)) for table, key, expected in _rows("cases.txt")]
RECORDED_WARNINGS: dict[str, list[tuple[int, str]]] = {}
for _table, _line, _message in _rows("warnings.txt"):
    RECORDED_WARNINGS.setdefault(_table, []).append((int(_line), _message))


def test_the_recordings_cover_every_key_and_both_types():
    assert [(table, key) for table, key, _ in CASES] == KEYS
    assert {table.split("/")[0] for table in TABLES} == {"pcre", "cidr"}
    assert len(CASES) >= 150
    found = [case for case in CASES if case[2] != NOT_FOUND]
    assert len(found) >= 80 and len(CASES) - len(found) >= 30


@pytest.mark.parametrize("table,key,expected", CASES, ids=[f"{t} {k!r}" for t, k, _ in CASES])
def test_mailferry_answers_as_postfix_did(table: str, key: str, expected: str):
    assert mailferry_answer(table, key) == expected


@pytest.mark.parametrize("table", TABLES)
def test_mailferry_warns_as_postfix_did(table: str):
    ours, recorded = mailferry_warnings(table), RECORDED_WARNINGS.get(table, [])
    assert same_warnings(ours, recorded), (ours, recorded)


def _require_postmap() -> None:
    # The recordings are only as good as this comparison: a missing postmap fails it.
    if not os.access(POSTMAP, os.X_OK):
        pytest.fail(f"{POSTMAP} is needed for the side-by-side test; run scripts/setup --test")
    modules = subprocess.run(["/usr/sbin/postconf", "-c", str(postfix_config()), "-m"],
                             capture_output=True, text=True).stdout.split()
    if "pcre" not in modules:
        pytest.fail("Postfix has no pcre support; install postfix-pcre (scripts/setup --test)")


@pytest.mark.integration
def test_postfix_and_mailferry_agree_side_by_side():
    _require_postmap()
    config_dir = postfix_config()
    disagreements = []
    for table, key in KEYS:
        postfix, ours = postfix_answer(config_dir, table, key), mailferry_answer(table, key)
        if postfix != ours:
            disagreements.append(f"{table} {key!r}: Postfix {postfix!r}, mailferry {ours!r}")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.integration
def test_postfix_and_mailferry_warn_alike():
    _require_postmap()
    config_dir = postfix_config()
    for table in TABLES:
        ours, postfix = mailferry_warnings(table), postfix_warnings(config_dir, table)
        assert same_warnings(ours, postfix), (table, ours, postfix)
