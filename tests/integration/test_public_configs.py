"""Real public Postfix configurations (tests/golden/configs/*, each with its SOURCE) as a new
user would try them: `mailferry check` reports no error that Postfix would not also hit, and
`mailferry postconf -n` / `-n -x` print what Postfix's own `postconf -c DIR -n` prints.

Postfix's real postconf is the reference, run here on the same directories. Every difference
allowed below is documented, with its reason, in docs/check.md ("Differences from Postfix's
postconf output" and "Errors Postfix would not report").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailferry.config.config import load
from mailferry.config.lint import plain_references

pytestmark = pytest.mark.integration

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "golden" / "configs"
CONFIGS = sorted(path.name for path in CONFIGS_DIR.iterdir() if (path / "main.cf").is_file())

# `postconf -n -x`: defaults where mailferry documents its own value. A line may differ only
# where its raw value refers to one of these, and only by that value.
DOCUMENTED_DEFAULTS = {
    "data_directory": "mailferry keeps its state in /var/lib/mailferry, not Postfix's /var/lib/postfix",
    "mail_name": "the program's name in banners and notices is mailferry, not Postfix",
}
# Lines that name the program running postconf itself, so they can never be equal.
DOCUMENTED_LINES = {
    "debugger_command": "expands $process_name and $process_id: postconf's name and pid in "
                        "Postfix's output, mailferry's in ours",
}
# Errors mailferry reports that Postfix, on this machine, would not.
DOCUMENTED_ERRORS = {
    r"table hash:/etc/aliases: /etc/aliases\.db: not a mailferry index":
        "mailferry's hash: index is LMDB; the /etc/aliases.db here was built by Postfix's own "
        "newaliases (Berkeley DB): `mailferry newaliases` rebuilds it",
    r"table hash:/etc/aliases: /etc/aliases\.db: no such file; build it":
        "on a machine where /etc/aliases exists but no aliases.db was built: Postfix fails on "
        "it too (its newaliases has not run)",
}


def postfix_postconf(*args: str) -> str:
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    assert os.access(postconf, os.X_OK), "Postfix's postconf is required: run scripts/setup --test"
    completed = subprocess.run([postconf, *args], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def config_dir(name: str) -> str:
    return str(CONFIGS_DIR / name)


def test_there_are_seven_public_configurations_each_with_its_source():
    assert len(CONFIGS) >= 7, CONFIGS
    for name in CONFIGS:
        source = (CONFIGS_DIR / name / "SOURCE").read_text()
        assert "Licence" in source, name
        assert re.search(r"[0-9a-f]{40}", source) or "Debian's postfix package" in source, name
        assert (CONFIGS_DIR / name / "master.cf").is_file(), name


@pytest.mark.parametrize("name", CONFIGS)
def test_postconf_n_matches_postfix_line_for_line(name, mailferry):
    theirs = postfix_postconf("-c", config_dir(name), "-n")
    ours = mailferry("postconf", "-n", config_dir=config_dir(name))
    assert ours.code == 0, ours.err
    assert ours.out.splitlines() == theirs.splitlines()


@pytest.mark.parametrize("name", CONFIGS)
def test_postconf_n_x_matches_postfix_but_for_documented_defaults(name, mailferry):
    directory = config_dir(name)
    theirs = postfix_postconf("-c", directory, "-n", "-x").splitlines()
    ours = mailferry("postconf", "-n", "-x", config_dir=directory)
    assert ours.code == 0, ours.err
    config = load(directory)
    assert [line.split(" =")[0] for line in ours.out.splitlines()] == [line.split(" =")[0] for line in theirs]
    for their_line, our_line in zip(theirs, ours.out.splitlines()):
        if their_line == our_line:
            continue
        parameter = their_line.split(" =")[0]
        if parameter in DOCUMENTED_LINES:
            continue
        refers = [ref for ref in DOCUMENTED_DEFAULTS if ref in references(config, parameter)]
        assert refers, f"undocumented difference:\n  Postfix:   {their_line}\n  mailferry: {our_line}"
        expected = their_line
        for ref in refers:
            postfix_value = postfix_postconf("-c", directory, "-h", "-x", ref).strip()
            our_value = mailferry("postconf", "-h", "-x", ref, config_dir=directory).out.strip()
            expected = expected.replace(postfix_value, our_value)
        assert our_line == expected


def references(config, name: str) -> set[str]:
    """Every parameter `name`'s value refers to, through other parameters' values too."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for ref in plain_references(config.raw(todo.pop()) or ""):
            if ref not in found:
                found.add(ref)
                todo.append(ref)
    return found


def diagnostics(err: str) -> list[tuple[str, str]]:
    """(label, text) of each `mailferry/check: LABEL: text` line."""
    found = []
    for line in err.splitlines():
        match = re.match(r"mailferry/check: (error|warning|missing file): (.*)", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_check_reports_no_error_postfix_would_not_hit(name, mailferry):
    result = mailferry("check", config_dir=config_dir(name))
    found = diagnostics(result.err)
    errors = [text for label, text in found if label == "error"
              and not any(re.search(pattern, text) for pattern in DOCUMENTED_ERRORS)]
    assert errors == [], "\n".join(errors)
    # A missing file names a path that really is not on this machine.
    for label, text in found:
        if label == "missing file":
            paths = re.findall(r"(/[\w.+/-]+)", text.split(": ", 1)[1])
            assert any(not os.path.exists(path) for path in paths), text
    # Missing files come last, under their own heading, and are counted apart.
    labels = [label for label, _ in found]
    if "missing file" in labels:
        first = labels.index("missing file")
        assert set(labels[first:]) == {"missing file"}
        assert "files this configuration names that do not exist on this machine" in result.err
        assert re.search(rf"{re.escape(config_dir(name))}: \d+ error\(s\), \d+ warning\(s\), "
                         rf"{labels.count('missing file')} missing file\(s\)", result.err)
    # Exit status 0 only when there are nothing but warnings.
    assert result.code == (1 if set(labels) - {"warning"} else 0), result.err


def test_debian_stock_services_nothing_routes_to_are_warnings(mailferry):
    """maildrop, uucp, ifmail, bsmtp, scalemail-backend, mailman: their programs are not
    installed, and nothing routes mail to them, so each is a warning and none an error."""
    result = mailferry("check", config_dir=config_dir("debian"))
    found = diagnostics(result.err)
    for service in ("maildrop", "uucp", "ifmail", "bsmtp", "scalemail-backend", "mailman"):
        assert any(label == "warning" and f"service {service}: pipe program" in text
                   and "nothing routes mail to this service" in text for label, text in found), service
        assert not any(label != "warning" and f"service {service}:" in text for label, text in found)


def test_debian_myorigin_file_and_mailbox_command_are_read_as_postfix_reads_them(tmp_path, mailferry):
    """Debian's `myorigin = /etc/mailname`: the file's first line, trimmed; postconf -x still
    shows the file name (as Postfix's). mailbox_command keeps its "$EXTENSION" for the shell."""
    shutil.copytree(config_dir("debian"), tmp_path / "debian")
    directory = tmp_path / "debian"
    mailname = tmp_path / "mailname"
    mailname.write_text("  mail.example.org  \nsecond line\n")
    main = (directory / "main.cf").read_text().replace("myorigin = /etc/mailname", f"myorigin = {mailname}")
    (directory / "main.cf").write_text(main)
    shown = mailferry("postconf", "-x", "myorigin", "mailbox_command", config_dir=directory).out
    assert shown == f'myorigin = {mailname}\nmailbox_command = procmail -a "$EXTENSION"\n'
    from mailferry.config.config import load
    assert load(str(directory)).get("myorigin") == "mail.example.org"
    result = mailferry("check", config_dir=directory)
    assert "parameter myorigin" not in result.err
    assert "$EXTENSION" not in result.err   # no "refers to $EXTENSION, which is not set"
