"""mailferry as the system's sendmail (issue 16, Done when 4): `mailferry system-sendmail install`,
then Debian's `mail` (bsd-mailx), as the seed's last step does (`mail user.name@gmail.com`), hands
the message to /usr/sbin/sendmail, which is now mailferry-sendmail; the REAL daemon, configured
with the seed's relay settings, relays it to the Gmail stand-in on loopback (Dovecot's submission
server, tests/peers/dovecot.py). Then `remove` puts Postfix's sendmail back.

This machine's /usr/sbin/sendmail belongs to Postfix, a test peer of other tests: it must never
change. Everything that changes happens in a private mount namespace (`unshare -m`) in which
/usr/sbin, /usr/bin and /var/lib/dpkg (the diversions database) are overlays whose writes land in
the test's own directory; the test checks the real ones are unchanged afterwards.

MAIL_CONFIG, as Postfix's sendmail reads it, points the system's sendmail at the test daemon's
configuration (the programs `mail` runs inherit it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_delivery import gmail_dns, relay_daemon  # noqa: F401  (fixtures)
from tests.peers import peer_tempdir, require_tool

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]

OVERLAID = ("/usr/sbin", "/usr/bin", "/var/lib/dpkg")
MAILFERRY = Path(sys.executable).parent / "mailferry"
SENDMAIL = Path(sys.executable).parent / "mailferry-sendmail"


def system_state() -> dict[str, object]:
    """What the test must leave as it was: the MTA programs and the diversions."""
    state: dict[str, object] = {}
    for path in ("/usr/sbin/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases"):
        state[path] = (os.readlink(path) if os.path.islink(path) else
                       hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.exists(path) else None)
    state["diversions"] = subprocess.run(["dpkg-divert", "--list"], capture_output=True, text=True).stdout
    return state


def in_private_namespace(directory: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    mounts = []
    for index, lower in enumerate(OVERLAID):
        upper, work = directory / f"upper{index}", directory / f"work{index}"
        upper.mkdir()
        work.mkdir()
        mounts.append(f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {lower}")
    return subprocess.run(["unshare", "-m", "sh", "-ec", " && ".join(mounts) + "\n" + script],
                          capture_output=True, text=True, env=env, timeout=120)


def test_debian_mail_through_the_system_sendmail_reaches_the_smarthost(relay_daemon, submission_relay, peer_ca):
    mail = require_tool("mail")                              # bsd-mailx (scripts/setup --test)
    daemon = relay_daemon(submission_relay, peer_ca.cert_path, level="verify")
    before = system_state()
    directory = peer_tempdir("mailferry-system-sendmail-")
    mailrc = directory / "mailrc"
    mailrc.write_text("set sendwait\n")      # mail waits for sendmail: the message is dropped before `remove`
    env = {**{k: v for k, v in os.environ.items() if k not in ("MAILFERRY_CONFIG_DIR",)},
           "MAIL_CONFIG": str(daemon.config_dir), "MAILRC": str(mailrc), "HOME": str(directory)}
    script = (f"{MAILFERRY} system-sendmail install\n"
              f"{MAILFERRY} system-sendmail status\n"
              f"readlink /usr/sbin/sendmail\n"
              f"printf 'Este es un mensaje de prueba.\\n' | {mail} -s Hola user.name@gmail.com\n"
              f"{MAILFERRY} system-sendmail remove\n"
              f"{MAILFERRY} system-sendmail status || echo 'after remove: not mailferry'\n"
              "dpkg-divert --list '*sendmail*'\n")
    try:
        result = in_private_namespace(directory, script, env)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert f"\n{SENDMAIL}\n" in out                                         # installed, as a link
        assert out.count("mailferry: ") >= 3 and "after remove: not mailferry" in out
        assert "/usr/sbin/sendmail: not mailferry: /usr/sbin/sendmail\n" in out    # Postfix's is back
        assert "before-mailferry" not in out.split("after remove")[1]            # no diversion left
        [sunk] = submission_relay.sink.wait_for_messages(1, timeout=30)
        assert sunk.recipients == ["user.name@gmail.com"]
        assert sunk.email["Subject"] == "Hola"
        assert b"Este es un mensaje de prueba." in sunk.body
        log = daemon.wait_for_log("status=sent")
        assert "pickup" in log and "uid=0 from=<root>" in log
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert system_state() == before
