"""Every examples/* directory passes `mailferry check`.

Each example names, in its NEEDS file, the files the administrator creates (secrets and
certificates, which no repository should hold). As it stands, `check` may report those and
nothing else: each finding must name one of them, so a finding about anything else fails.
In a copy where the test has created them as NEEDS describes, `check` reports nothing at all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, write

EXAMPLES = sorted(path for path in (ROOT / "examples").iterdir() if (path / "main.cf").exists())
CREATED = ("queue", "mailferry.log", "mail")     # what a started example leaves behind: not copied


def needs(example: Path) -> list[tuple[str, str, str]]:
    """(file, kind, sample line) for each line of NEEDS."""
    entries = []
    for line in (example / "NEEDS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            file, kind, *sample = line.split(None, 2)
            entries.append((file, kind, sample[0] if sample else ""))
    return entries


def findings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line or ": warning: " in line]


def test_there_are_examples_and_each_has_a_readme_and_needs():
    names = {example.name for example in EXAMPLES}
    assert {"gmail-relay", "ldap-routing", "submission"} <= names
    for example in EXAMPLES:
        if example.name == "quickstart":
            continue   # the README's first command: documented there, and needs nothing
        assert (example / "README.md").exists() and (example / "NEEDS").exists(), example


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_an_example_as_it_stands_reports_only_the_files_it_tells_the_admin_to_create(example, mailferry, tmp_path):
    copy = tmp_path / example.name
    shutil.copytree(example, copy, ignore=shutil.ignore_patterns(*CREATED, *[file for file, _, _ in _needs(example)]))
    result = mailferry("check", config_dir=copy)
    allowed = [str(copy / file) for file, _, _ in _needs(example)]
    for finding in findings(result.err):
        assert any(path in finding for path in allowed), f"{example.name}: not a file NEEDS lists: {finding}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_an_example_with_its_files_created_checks_clean(example, mailferry, tmp_path):
    copy = tmp_path / example.name
    shutil.copytree(example, copy, ignore=shutil.ignore_patterns(*CREATED))
    entries = _needs(example)
    for file, kind, sample in entries:
        create(copy, file, kind, sample, mailferry, entries)
    result = mailferry("check", config_dir=copy)
    assert result.code == 0, result.err
    assert findings(result.err) == [], result.err


def _needs(example: Path) -> list[tuple[str, str, str]]:
    return needs(example) if (example / "NEEDS").exists() else []


def create(directory: Path, file: str, kind: str, sample: str, mailferry, entries) -> None:
    path = directory / file
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "password-table":
        write(path, sample + "\n", 0o600)
        assert mailferry("postmap", f"hash:{path}", config_dir=directory).code == 0
    elif kind == "sasl-users":
        line = mailferry("pw", "-s", "BLF-CRYPT", "-p", "a test password", "-u", sample).out
        write(path, line, 0o640)
    elif kind == "tls-certificate":
        key = next(directory / other for other, other_kind, _ in entries if other_kind == "tls-key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=mail.example.com", "-keyout", str(key), "-out", str(path)],
                       check=True, capture_output=True)
        key.chmod(0o600)
    elif kind == "tls-key":
        pass    # made with its certificate
    else:
        raise AssertionError(f"{directory.name}/NEEDS: unknown kind {kind!r} for {file}")
