"""content_filter and the FILTER action through the real daemon: FILTER_README's "advanced
content filter".

mail in (smtpd) -> queue -> the `scan` smtp transport -> the filter on FILTERPORT
    -> the filter re-injects into a second smtpd service (-o content_filter=) -> queue (a new
    queue ID) -> smtp to Postfix's smtp-sink.

The filter is a small real SMTP server run by the test: it adds `X-Filtered: yes` and re-injects
with smtplib before it answers the end of DATA, as an after-queue filter must (a 250 means the
mail is safe in the re-injection queue).
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socketserver
import threading

import pytest

from tests.integration.conftest import free_port, world_readable_tempdir
from tests.integration.test_delivery import wait_for_line

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.peers.conftest_plugin"]


class _FilterHandler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, text: str) -> None:
        self.wfile.write(f"{text}\r\n".encode())
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 filter.test ESMTP test filter")
        sender, recipients = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode("ascii", "replace").strip()
            verb = command[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 filter.test")
            elif verb == "MAIL":
                sender, recipients = _path(command), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                recipients.append(_path(command))
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                self.reply(self.server.filter_message(sender, recipients, self._content()))
            elif verb == "RSET":
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")

    def _content(self) -> bytes:
        lines = []
        while True:
            line = self.rfile.readline()
            if line in (b".\r\n", b".\n", b""):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)


def _path(command: str) -> str:
    return command.split(":", 1)[1].strip().split()[0].strip("<>")


class ReinjectingFilter(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, reinject_port: int):
        super().__init__(("127.0.0.1", port), _FilterHandler)
        self.reinject_port = reinject_port
        self.received: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def filter_message(self, sender: str, recipients: list[str], content: bytes) -> str:
        with self.lock:
            self.received.append((sender, list(recipients)))
        try:
            with smtplib.SMTP("127.0.0.1", self.reinject_port, timeout=20) as client:
                refused = client.sendmail(sender, recipients, b"X-Filtered: yes\r\n" + content)
        except (OSError, smtplib.SMTPException) as problem:
            return f"451 4.3.0 re-injection failed: {problem}"
        if refused:
            return f"451 4.3.0 re-injection refused {sorted(refused)}"
        return "250 2.0.0 Ok: filtered and re-injected"


@pytest.fixture
def content_filter_setup(daemon_factory, smtp_sink):
    """make(**main_cf) -> (daemon, filter, sink): the daemon's first smtpd is the one mail comes in
    through; 127.0.0.1:REINJECT is FILTER_README's re-injection service."""
    servers = []

    def make(filter_port: int | None = None, **main_cf: str):
        filter_port, reinject_port = filter_port or free_port(), free_port()
        server = ReinjectingFilter(filter_port, reinject_port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        reinject = (f"127.0.0.1:{reinject_port} inet n - n - - smtpd -o content_filter="
                    " -o smtpd_recipient_restrictions=permit_mynetworks,reject"
                    " -o smtpd_sender_restrictions=\n")
        settings = dict(relayhost=smtp_sink.nexthop, default_transport="smtp")
        settings.update({name: value.replace("FILTERPORT", str(filter_port)) for name, value in main_cf.items()})
        daemon = daemon_factory(extra_listeners=reinject, extra_services="scan unix - - n - 10 smtp\n",
                                **settings).start()
        return daemon, server, smtp_sink

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def send(daemon, sender: str, recipients: list[str], subject: str) -> None:
    message = f"From: <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail(sender, recipients, message) == {}


def queue_id_of(daemon, subject_recipient: str, relay: str) -> str:
    found = wait_for_line(daemon, rf"(\w+): to=<{re.escape(subject_recipient)}>, relay={re.escape(relay)}, "
                                  r".*status=sent")
    return found.group(1)


def test_content_filter_sends_the_mail_through_the_filter_once(content_filter_setup):
    daemon, server, sink = content_filter_setup(content_filter="scan:[127.0.0.1]:FILTERPORT")
    filter_port = server.server_address[1]
    send(daemon, "alice@example.test", ["bob@elsewhere.example", "carol@elsewhere.example"], "filter me")
    [arrived] = sink.wait_for_messages(1, timeout=30)
    assert arrived.email["X-Filtered"] == "yes"
    assert arrived.email["Subject"] == "filter me"
    assert sorted(arrived.recipients) == ["bob@elsewhere.example", "carol@elsewhere.example"]
    assert server.received == [("alice@example.test", ["bob@elsewhere.example", "carol@elsewhere.example"])]
    # Two queue IDs: the one that went to the filter, the re-injected one that went on.
    to_filter = queue_id_of(daemon, "bob@elsewhere.example", f"127.0.0.1[127.0.0.1]:{filter_port}")
    onward = queue_id_of(daemon, "bob@elsewhere.example", f"127.0.0.1[127.0.0.1]:{sink.port}")
    assert to_filter != onward
    daemon.wait_for_log(": removed", count=2, timeout=20)
    assert len(sink.messages()) == 1, "the re-injected mail must not be filtered again"
    assert len(server.received) == 1
    assert "not supported" not in daemon.log()


@pytest.fixture
def table_directory():
    directory = world_readable_tempdir("mailferry-filter-")   # the daemon reads it as mail_owner
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_filter_action_overrides_content_filter_for_its_message(content_filter_setup, table_directory):
    """check_sender_access ... FILTER sends that sender's mail to the filter; other mail keeps the
    smtpd's content_filter (here one whose filter is down, so it waits in the queue)."""
    dead_port, filter_port = free_port(), free_port()
    access = table_directory / "sender_access"
    access.write_text(f"filtered@example.test FILTER scan:[127.0.0.1]:{filter_port}\n")
    access.chmod(0o644)
    daemon, server, sink = content_filter_setup(
        filter_port, content_filter=f"scan:[127.0.0.1]:{dead_port}",
        smtpd_sender_restrictions=f"check_sender_access texthash:{access}")
    send(daemon, "plain@example.test", ["dave@elsewhere.example"], "not filtered")
    send(daemon, "filtered@example.test", ["erin@elsewhere.example"], "filtered by FILTER")
    wait_for_line(daemon, r"filter: RCPT from \S+: <filtered@example\.test>: Sender address triggers FILTER "
                          rf"scan:\[127\.0\.0\.1\]:{filter_port}")
    onward = queue_id_of(daemon, "erin@elsewhere.example", f"127.0.0.1[127.0.0.1]:{sink.port}")
    [arrived] = sink.wait_for_messages(1, timeout=30)
    assert arrived.email["Subject"] == "filtered by FILTER"
    assert arrived.email["X-Filtered"] == "yes"
    assert server.received == [("filtered@example.test", ["erin@elsewhere.example"])]
    assert queue_id_of(daemon, "erin@elsewhere.example", f"127.0.0.1[127.0.0.1]:{filter_port}") != onward
    wait_for_line(daemon, r"to=<dave@elsewhere\.example>, relay=none, .*status=deferred "
                          rf"\(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead_port}: Connection refused\)")
