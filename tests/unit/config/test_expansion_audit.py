"""Which parameters Postfix `$`-expands, audited against the real `postconf -x`.

Every parameter Postfix knows is set to `X$myhostname` in one main.cf; Postfix's postconf -n -x
leaves the raw ones (mailbox_command, forward_path, ...) as written and expands the rest.
mailferry's postconf and its Config.get must agree on every one of them, and the list it keeps
(parameters.RAW_PARAMETERS) must be exactly the one Postfix shows.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mailferry.config.config import load
from mailferry.config.parameters import RAW_PARAMETERS
from tests.conftest import write

MARK = "X$myhostname"


def postconf(*args: str) -> str:
    program = shutil.which("postconf") or "/usr/sbin/postconf"
    completed = subprocess.run([program, *args], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.fixture(scope="module")
def every_parameter(tmp_path_factory):
    """A configuration directory setting every Postfix parameter to X$myhostname, and
    Postfix's `postconf -n -x` of it as {name: value}."""
    directory = tmp_path_factory.mktemp("audit")
    write(directory / "master.cf", "", 0o644)
    write(directory / "main.cf", "", 0o644)
    # Postfix's own parameters only: no master.cf service adds <service>_* ones.
    names = [line.split(" =", 1)[0] for line in postconf("-c", str(directory), "-d").splitlines()]
    names = [name for name in names if name not in ("config_directory", "myhostname")]
    write(directory / "main.cf", "".join(f"{name} = {MARK}\n" for name in names)
          + "myhostname = h.example\n", 0o644)
    theirs = dict(line.split(" = ", 1) for line in postconf("-c", str(directory), "-n", "-x").splitlines()
                  if " = " in line)
    return directory, names, theirs


def test_postfix_keeps_exactly_the_raw_parameters_literal(every_parameter):
    _, names, theirs = every_parameter
    literal = {name for name in names if theirs.get(name) == MARK}
    assert literal == set(RAW_PARAMETERS)
    assert all(theirs[name] == "Xh.example" for name in names if name not in literal and name in theirs)


def test_config_get_expands_what_postfix_expands_and_nothing_else(every_parameter):
    directory, names, theirs = every_parameter
    config = load(str(directory))
    # process_id, process_name and service_name: set by each program, never shown by postconf -n.
    shown = [name for name in names if name in theirs]
    assert len(shown) == len(names) - 3
    differ = {name: (config.expanded(name), theirs[name]) for name in shown if config.expanded(name) != theirs[name]}
    assert differ == {}


def test_mailferry_postconf_n_x_prints_what_postfix_prints(every_parameter, mailferry):
    directory, _, _ = every_parameter
    ours = mailferry("postconf", "-n", "-x", config_dir=directory)
    assert ours.code == 0, ours.err
    assert ours.out == postconf("-c", str(directory), "-n", "-x")


def test_postconf_folds_whitespace_as_postfix(tmp_path, mailferry):
    write(tmp_path / "main.cf", "smtpd_banner = $myhostname   ESMTP\t $mail_name\n"
          "mynetworks = 127.0.0.0/8\n    [::1]/128,\n\t192.0.2.0/24\n"
          'mailbox_command = procmail  -a "$EXTENSION"\n', 0o644)
    write(tmp_path / "master.cf", "", 0o644)
    ours = mailferry("postconf", "-n", config_dir=tmp_path)
    assert ours.out == postconf("-c", str(tmp_path), "-n")
    assert "smtpd_banner = $myhostname ESMTP $mail_name\n" in ours.out
    assert "mynetworks = 127.0.0.0/8 [::1]/128, 192.0.2.0/24\n" in ours.out


def test_postconf_n_leaves_out_an_unused_parameter_as_postfix(tmp_path, mailferry):
    write(tmp_path / "main.cf", "foo_x = 1\nbar_y = 2\nsmtpd_banner = $bar_y\n", 0o644)
    write(tmp_path / "master.cf", "relay unix - - n - - smtp\n  -o smtp_helo_name=$baz_z\n", 0o644)
    with open(tmp_path / "main.cf", "a") as handle:
        handle.write("baz_z = 3\n")
    ours = mailferry("postconf", "-n", config_dir=tmp_path)
    assert ours.out == postconf("-c", str(tmp_path), "-n")
    assert "foo_x" not in ours.out and "bar_y = 2" in ours.out and "baz_z = 3" in ours.out
    assert "unused parameter: foo_x=1" in ours.err
