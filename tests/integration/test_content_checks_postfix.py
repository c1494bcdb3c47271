"""header_checks and body_checks side by side: real Postfix and the real mailferry daemon, the
same tables (tests/golden/content_checks/), the same messages, one case after the other.

Each server relays to its own smtp-sink. For every golden case the test compares, between
Postfix and mailferry and with the case's expectations: the reply to the end of DATA, what
became of an accepted message (delivered, held, discarded), who it was delivered to (REDIRECT,
BCC, FILTER), the delivered content (IGNORE, STRIP, REPLACE, PREPEND, header_size_limit; all
but the relays' own Received: headers) and cleanup's log line for each action (after the
queue ID). Both servers run once for the whole module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.golden.content_checks.cases import BODY_CHECKS, CASES, HEADER_CHECKS, RECIPIENT, SETTINGS, table_text
from tests.integration.conftest import base_main_cf, free_port, smtpd_master_cf, wait_for_port, world_readable_tempdir
from tests.peers.mailferry import MailferryDaemon
from tests.peers.postfix import POSTQUEUE, PostfixInstance
from tests.peers.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

ACTIONS = "reject|warning|info|hold|discard|redirect|filter|replace|prepend|bcc|strip|pass"


def write_tables(directory, sink_port: int) -> dict[str, str]:
    (directory / "header_checks").write_text(table_text(HEADER_CHECKS, sink_port))
    (directory / "body_checks").write_text(table_text(BODY_CHECKS, sink_port))
    for name in ("header_checks", "body_checks"):
        os.chmod(directory / name, 0o644)
    return {"header_checks": f"regexp:{directory}/header_checks", "body_checks": f"regexp:{directory}/body_checks",
            **SETTINGS}


class Side:
    """One server under test: how to send to it and what became of each message."""

    def __init__(self, name: str, port: int, sink: SmtpSink, log_path, held_senders, sendmail):
        self.sendmail = sendmail           # the command line of this side's sendmail, before its arguments
        self.name = name
        self.port = port
        self.sink = sink
        self.log_path = log_path
        self.held_senders = held_senders   # () -> set of envelope senders in the hold queue
        self.replies: dict[str, str] = {}

    def send(self, case) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                client.sendmail(case.sender, [RECIPIENT], case.message(self.sink.port))
            self.replies[case.name] = "250"
        except smtplib.SMTPDataError as refused:
            self.replies[case.name] = f"{refused.smtp_code} {refused.smtp_error.decode()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def action_lines(self, case) -> list[str]:
        """cleanup's action lines for the case, after the queue ID."""
        pattern = re.compile(rf"/cleanup\[\d+\]: \w+: ((?:{ACTIONS}): .*from=<{re.escape(case.sender)}>.*)$",
                             re.MULTILINE)
        return pattern.findall(self.log())

    def delivered(self, case):
        return [message for message in self.sink.messages() if message.sender == case.sender]


def outcome(side: Side, case, deadline: float):
    """("delivered", message) | ("held", None) | ("discarded", None), waiting up to `deadline`."""
    while time.monotonic() < deadline:
        delivered = side.delivered(case)
        if delivered:
            return "delivered", delivered
        if case.sender in side.held_senders():
            return "held", None
        if any(line.startswith("discard: ") for line in side.action_lines(case)):
            return "discarded", None
        time.sleep(0.2)
    return "nothing", None


def without_received(message: bytes) -> list[bytes]:
    kept, skipping = [], False
    for line in message.split(b"\n"):
        if line.startswith((b" ", b"\t")) and skipping:
            continue
        skipping = line.lower().startswith(b"received:")
        if not skipping:
            kept.append(line)
    return kept


def postfix_held(postfix: PostfixInstance):
    def held() -> set[str]:
        out = subprocess.run([POSTQUEUE, "-j"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "MAIL_CONFIG": str(postfix.config_dir)})
        return {entry["sender"] for entry in map(json.loads, out.stdout.splitlines())
                if entry.get("queue_name") == "hold"}
    return held


def mailferry_held(daemon: MailferryDaemon):
    def held() -> set[str]:
        out = daemon.command("postqueue", "-j", timeout=60)
        return {entry["sender"] for entry in map(json.loads, out.stdout.splitlines())
                if entry.get("queue_name") == "hold"}
    return held


@pytest.fixture(scope="module")
def sides():
    directories, started = [], []
    try:
        sinks = []
        for name in ("postfix", "mailferry"):
            directory = world_readable_tempdir(f"mailferry-checks-{name}-sink-")
            directories.append(directory)
            sink = SmtpSink(directory)
            sink.start()
            started.append(sink)
            sinks.append(sink)
        root = world_readable_tempdir("mailferry-checks-pf-")
        directories.append(root)
        pf_port = free_port()
        postfix = PostfixInstance(root, [f"127.0.0.1:{pf_port} inet n - n - - smtpd"],
                                  {"relayhost": sinks[0].nexthop, **write_tables(root, sinks[0].port)})
        postfix.write_config()
        postfix.start()
        started.append(postfix)
        wait_for_port("127.0.0.1", pf_port, timeout=20)

        directory = world_readable_tempdir("mailferry-checks-mf-")
        directories.append(directory)
        mf_port = free_port()
        daemon = MailferryDaemon(directory, base_main_cf(directory, relayhost=sinks[1].nexthop,
                                                         default_transport="smtp", mynetworks="127.0.0.0/8",
                                                         **write_tables(directory, sinks[1].port)),
                                 smtpd_master_cf(mf_port), mf_port)
        daemon.start()
        started.append(daemon)
        both = [Side("postfix", pf_port, sinks[0], postfix.log_file, postfix_held(postfix),
                     ["/usr/sbin/sendmail", "-C", str(postfix.config_dir)]),
                Side("mailferry", mf_port, sinks[1], daemon.log_path, mailferry_held(daemon),
                     [str(Path(sys.executable).parent / "mailferry-sendmail"), "-C", str(daemon.config_dir)])]
        for case in CASES:
            for side in both:
                side.send(case)
        deadline = time.monotonic() + 60
        results = {side.name: {case.name: (side.replies[case.name],
                                           *(outcome(side, case, deadline) if side.replies[case.name] == "250"
                                             else ("refused", None)))
                               for case in CASES}
                   for side in both}
        yield both, results
    finally:
        for peer in reversed(started):
            peer.stop()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_mailferry_checks_content_as_postfix_does(case, sides):
    both, results = sides
    postfix, mailferry = both
    pf_reply, pf_outcome, pf_delivered = results["postfix"][case.name]
    mf_reply, mf_outcome, mf_delivered = results["mailferry"][case.name]
    expected_reply = case.reply
    # The reply: exactly Postfix's when refused; a 250 of its own wording when accepted.
    assert (pf_reply if pf_reply.startswith("250") is False else "250") == expected_reply, pf_reply
    assert mf_reply == pf_reply
    assert (pf_outcome, mf_outcome) == (case.outcome, case.outcome)
    if pf_outcome == "delivered":
        [pf_message], [mf_message] = pf_delivered, mf_delivered
        assert sorted(mf_message.recipients) == sorted(pf_message.recipients)
        for expected in case.expected("recipients"):
            assert sorted(pf_message.recipients) == expected.split()
        assert without_received(mf_message.message) == without_received(pf_message.message)
    pf_lines = [_normalized(line) for line in postfix.action_lines(case)]
    mf_lines = [_normalized(line) for line in mailferry.action_lines(case)]
    assert mf_lines == pf_lines


def _normalized(line: str) -> str:
    """What differs between the two servers by setup: the client's name and each one's sink port."""
    line = re.sub(r" from [^ ;]+\[127\.0\.0\.1\];", " from CLIENT;", line)
    return re.sub(r"\[127\.0\.0\.1\]:\d+", "[127.0.0.1]:SINKPORT", line)


def test_sendmail_mail_a_check_rejects_returns_to_its_sender_as_postfix_does(sides):
    """Postfix's pickup asks cleanup to bounce: the reject line, each recipient bounced, a
    non-delivery notice to the sender with the reply's text."""
    both, _ = sides
    found = {}
    for side in both:
        result = subprocess.run([*side.sendmail, "-f", "author@dest.test", RECIPIENT],
                                input=b"Subject: from sendmail: reject me\n\nHello.\n", capture_output=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 60
        notices = []
        while not notices and time.monotonic() < deadline:
            notices = [m for m in side.sink.messages() if m.sender == "" and "author@dest.test" in m.recipients]
            time.sleep(0.2)
        assert notices, f"{side.name}: no notice reached the sink"
        assert b"<rcpt@dest.test>: Not from the command line" in notices[0].message
        log = side.log()
        found[side.name] = [
            re.findall(r"/cleanup\[\d+\]: \w+: (reject: header Subject: from sendmail: reject me from local; .*)$",
                       log, re.MULTILINE),
            [re.sub(r"delay=[\d.]+, delays=[\d./]+", "delay=D", line) for line in
             re.findall(r"/cleanup\[\d+\]: \w+: (to=<rcpt@dest\.test>, relay=none, .*status=bounced .*)$", log,
                        re.MULTILINE)],
            len(re.findall(r"/bounce\[\d+\]: \w+: sender non-delivery notification: \w+$", log, re.MULTILINE))]
    assert found["postfix"][0] == ["reject: header Subject: from sendmail: reject me from local; "
                                   "from=<author@dest.test> to=<rcpt@dest.test>: 5.7.1 Not from the command line"]
    assert found["mailferry"] == found["postfix"]
