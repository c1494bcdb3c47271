"""Value validation (config/values.py, config/lint.py, policy/check.py) on the golden cases
of tests/golden/validation/cases.txt: each bad value's error, with its file and line, the
allowed values and a did-you-mean; each valid Postfix setting, nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailferry.config import parameters, values
from mailferry.policy.check import configuration_problems
from tests.conftest import ROOT

CASES = ROOT / "tests" / "golden" / "validation" / "cases.txt"


def read_cases() -> list[dict]:
    cases, header = [], []
    for line in CASES.read_text().splitlines():
        if line.startswith("## "):
            cases.append({"title": line[3:], "main.cf": [], "master.cf": [], "transport": [], "expect": []})
        elif not cases:
            header.append(line)
        elif line.startswith("> "):
            cases[-1]["expect"].append(line[2:])
        elif " = " in line or line.endswith(" ="):
            where, _, text = line.partition(" = ")
            cases[-1][where].append(text)
    return header, cases


HEADER, GOLDEN = read_cases()


def run_case(case: dict, directory: Path) -> list[str]:
    shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", directory / "master.cf")
    master = (directory / "master.cf").read_text()
    (directory / "master.cf").write_text(master + "".join(line + "\n" for line in case["master.cf"]))
    fill = lambda lines: "".join(line.replace("DIR", str(directory)) + "\n" for line in lines)  # noqa: E731
    (directory / "main.cf").write_text(fill(case["main.cf"]))
    if case["transport"]:
        (directory / "transport").write_text(fill(case["transport"]))
    return [item.format("mailferry/check").replace(str(directory), "DIR")
            for item in configuration_problems(str(directory))]


@pytest.mark.parametrize("case", GOLDEN, ids=[case["title"] for case in GOLDEN])
def test_golden_case(case, tmp_path):
    assert run_case(case, tmp_path) == case["expect"]


def test_update_golden(tmp_path_factory):
    """MAILFERRY_UPDATE_GOLDEN=1: rewrite cases.txt's expected lines from what check prints now."""
    if os.environ.get("MAILFERRY_UPDATE_GOLDEN") != "1":
        return
    out = HEADER[:]
    for case in GOLDEN:
        out.append(f"## {case['title']}")
        for where in ("main.cf", "master.cf", "transport"):
            out += [f"{where} = {text}" if text else f"{where} =" for text in case[where]]
        out += ["> " + line for line in run_case(case, tmp_path_factory.mktemp("case"))]
        out.append("")
    CASES.write_text("\n".join(out))


def test_bad_cases_are_errors_and_valid_ones_are_not():
    """The golden file itself: every case titled as bad has an error, the valid ones none
    (only mailferry's "not implemented yet" warnings)."""
    for case in GOLDEN:
        if case["title"].startswith("valid"):
            assert all("not implemented yet" in line for line in case["expect"]), case["title"]
        elif "warning" not in case["title"] and "encrypt" not in case["title"]:
            assert any(": error: " in line for line in case["expect"]), case["title"]


def test_the_issue_values_through_the_command_line(tmp_path, mailferry):
    """The seven values of issue 15 in one main.cf: `check` exits 1 and names each line."""
    lines = ["smtp_tls_security_level = bogus", "smtpd_tls_security_level = encrpyt", "inet_protocols = ipv5",
             "smtp_sasl_security_options = noanon", "relayhost = [smtp.gmail.com:587",
             "smtpd_recipient_restrictions = permit_mynetwork, reject_unauth_destination",
             "default_transport = smtpp"]
    (tmp_path / "main.cf").write_text("\n".join(lines) + "\n")
    shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", tmp_path / "master.cf")
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    for number, line in enumerate(lines, 1):
        name = line.split(" ")[0]
        assert f"error: {tmp_path}/main.cf, line {number}: parameter {name}: " in result.err, line
    for hint in ("did you mean encrypt?", "did you mean ipv6?", "did you mean noanonymous?",
                 "did you mean [smtp.gmail.com]:587?", "did you mean permit_mynetworks?", "did you mean smtp?"):
        assert hint in result.err
    assert f"{tmp_path}: 7 error(s), 0 warning(s)" in result.err


def postfix_defaults() -> dict[str, str]:
    """The real Postfix's expanded defaults (`postconf -d -x`), with an empty main.cf."""
    directory = Path(os.environ.get("TMPDIR", "/tmp"))
    import tempfile
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        Path(scratch, "main.cf").write_text("")
        shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", Path(scratch, "master.cf"))
        out = subprocess.run(["postconf", "-c", scratch, "-d", "-x"], capture_output=True, text=True,
                             check=True).stdout
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                for line in out.splitlines())


def test_every_rule_accepts_postfixs_own_default():
    """No false positive on Postfix's defaults: each rule accepts what the real postconf -d -x prints."""
    defaults = postfix_defaults()
    ruled = [parameter for parameter in parameters.parameters().values() if parameter.shape]
    assert len(ruled) > 90
    for parameter in ruled:
        if parameter.name not in defaults:
            continue
        problems = values.check_choices(parameter.name, parameter.shape, parameter.choices,
                                        defaults[parameter.name])
        assert problems == [], (parameter.name, defaults[parameter.name])


def test_what_mailferry_delivers_without_a_master_cf_line_is_not_an_error(tmp_path):
    """local_transport = local with mailbox_transport set (mailferry hands the mail to
    mailbox_transport itself: a warning, Postfix would need the service), and qmgr's own
    discard, error and retry transports."""
    (tmp_path / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\nsmtp unix - - n - - smtp\n"
                                        "lmtp unix - - n - - lmtp\n")
    (tmp_path / "main.cf").write_text("local_transport = local:$myhostname\n"
                                      "mailbox_transport = lmtp:unix:/run/dovecot/lmtp\n"
                                      "default_transport = error:outbound mail is off\n"
                                      "relay_transport = retry:relaying is paused\n"
                                      "content_filter = discard:\n")
    found = [item.format("mailferry/check").replace(str(tmp_path), "DIR")
             for item in configuration_problems(str(tmp_path))]
    assert found == ["mailferry/check: warning: DIR/main.cf, line 1: parameter local_transport: master.cf has no "
                     "local service; mailferry hands local mail to mailbox_transport directly, Postfix would "
                     "need the service (local unix - n n - - local)"]
    (tmp_path / "main.cf").write_text("local_transport = local:$myhostname\n")
    [problem] = configuration_problems(str(tmp_path))
    assert problem.severity == "error" and "transport 'local' is not a service in master.cf" in problem.message
