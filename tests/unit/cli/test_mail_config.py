"""MAIL_CONFIG, as Postfix's commands read it: -c (sendmail -C) > MAIL_CONFIG >
MAILFERRY_CONFIG_DIR > /etc/mailferry. Checked through the real programs: a message dropped by
mailferry-sendmail lands in the queue of the instance the variables name."""

import os
import subprocess
import sys
from pathlib import Path

from mailferry.cli.options import default_config_dir
from mailferry.local.pickup import scan
from tests.unit.local.queue_fixtures import make_instance

SENDMAIL = Path(sys.executable).parent / "mailferry-sendmail"


def test_precedence_of_the_variables():
    assert default_config_dir({}) == "/etc/mailferry"
    assert default_config_dir({"MAILFERRY_CONFIG_DIR": "/b"}) == "/b"
    assert default_config_dir({"MAIL_CONFIG": "/a", "MAILFERRY_CONFIG_DIR": "/b"}) == "/a"
    assert default_config_dir({"MAIL_CONFIG": "", "MAILFERRY_CONFIG_DIR": "/b"}) == "/b"


def _environment(**variables: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MAIL_CONFIG", "MAILFERRY_CONFIG_DIR")}
    environment.update(variables)
    return environment


def _send(environment, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SENDMAIL), *options, "-f", "alice@example.org", "bob@example.net"],
                          input=b"Subject: hi\n\nhello\n", capture_output=True, env=environment, timeout=60)


def test_sendmail_drops_into_the_mail_config_instance(tmp_path):
    config_a, queue_a = make_instance(tmp_path / "a")
    config_b, queue_b = make_instance(tmp_path / "b")
    result = _send(_environment(MAIL_CONFIG=str(config_a), MAILFERRY_CONFIG_DIR=str(config_b)))
    assert result.returncode == 0, result.stderr
    assert len(scan(str(queue_a))) == 1 and scan(str(queue_b)) == []


def test_sendmail_C_wins_over_mail_config(tmp_path):
    config_a, queue_a = make_instance(tmp_path / "a")
    config_b, queue_b = make_instance(tmp_path / "b")
    result = _send(_environment(MAIL_CONFIG=str(config_a)), "-C", str(config_b))
    assert result.returncode == 0, result.stderr
    assert scan(str(queue_a)) == [] and len(scan(str(queue_b))) == 1


def test_mailferry_commands_read_mail_config_and_c_wins(tmp_path):
    config_a, _ = make_instance(tmp_path / "a")
    config_b, _ = make_instance(tmp_path / "b")
    (Path(config_a) / "main.cf").write_text((Path(config_a) / "main.cf").read_text() + "myhostname = a.test\n")
    (Path(config_b) / "main.cf").write_text((Path(config_b) / "main.cf").read_text() + "myhostname = b.test\n")

    def postconf(*options: str) -> str:
        return subprocess.run([sys.executable, "-m", "mailferry", *options, "postconf", "-h", "myhostname"],
                              capture_output=True, text=True, timeout=60,
                              env=_environment(MAIL_CONFIG=str(config_a),
                                               MAILFERRY_CONFIG_DIR=str(config_b))).stdout.strip()
    assert postconf() == "a.test"
    assert postconf("-c", str(config_b)) == "b.test"
