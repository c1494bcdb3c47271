"""Every tests/dialogs/*.dialog script, played against the sans-IO
ServerConnection with a small application that accepts everything except
what a script's options say to refuse."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest

from mailferry.protocol.server_events import (
    CLOSED, NEED_DATA, AuthRequested, AuthResponse, Hello, MailFrom, MessageReceived, RcptTo,
    StartTLSRequested,
)
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings
from tests.dialogs.script import Script, load_script, run_script

DIALOGS = sorted(Path(__file__).parent.glob("*.dialog"))
LOCAL_DOMAIN = "mx.example"
USERS = {"user1": "secret"}


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "1")


# Postfix parameter -> (ServerSettings field, conversion).
PARAMETERS = {
    "myhostname": ("hostname", str),
    "smtpd_banner": ("banner", str),
    "message_size_limit": ("message_size_limit", int),
    "smtpd_recipient_limit": ("recipient_limit", int),
    "smtpd_recipient_overshoot_limit": ("recipient_overshoot_limit", int),
    "hopcount_limit": ("hopcount_limit", int),
    "smtpd_soft_error_limit": ("soft_error_limit", int),
    "smtpd_hard_error_limit": ("hard_error_limit", int),
    "smtpd_junk_command_limit": ("junk_command_limit", int),
    "line_length_limit": ("line_length_limit", int),
    "smtpd_forbid_bare_newline": ("bare_newline", str),
    "smtpd_forbid_bare_newline_reject_code": ("bare_newline_reject_code", int),
    "smtpd_forbid_unauth_pipelining": ("forbid_unauth_pipelining", _yes),
    "smtpd_helo_required": ("helo_required", _yes),
    "strict_rfc821_envelopes": ("strict_envelopes", _yes),
    "disable_vrfy_command": ("vrfy_enabled", lambda value: not _yes(value)),
    "smtputf8_enable": ("smtputf8", _yes),
}
DISCARDABLE_KEYWORDS = {"pipelining", "size", "dsn", "smtputf8", "chunking", "8bitmime",
                        "enhancedstatuscodes", "vrfy"}


def settings_for(script: Script) -> ServerSettings:
    fields: dict[str, object] = {"hostname": LOCAL_DOMAIN}
    for name, value in script.settings().items():
        if name == "smtpd_discard_ehlo_keywords":
            fields.update(_discarded(value))
            continue
        field, convert = PARAMETERS[name]
        fields[field] = convert(value)
    if script.options.get("tls") == "offered":
        fields["starttls"] = True
    if "auth" in script.options:
        fields["auth_mechanisms"] = tuple(script.options["auth"].split())
    return ServerSettings(**fields)


def _discarded(value: str) -> dict[str, bool]:
    fields = {}
    for keyword in value.replace(",", " ").lower().split():
        assert keyword in DISCARDABLE_KEYWORDS, keyword
        name = {"8bitmime": "eightbitmime", "vrfy": "vrfy_enabled",
                "enhancedstatuscodes": "enhanced_status_codes"}.get(keyword, keyword)
        fields[name] = False
    return fields


class DialogApplication:
    """Accepts everything, with fake queue IDs, unless told otherwise."""

    def __init__(self, script: Script):
        self.relay_reject = script.options.get("relay") == "reject"
        self.queue_ids = (f"{number:X}A{number:04X}" for number in itertools.count(0xC0FFEE))
        self.messages: list[MessageReceived] = []
        self._auth_step = ""
        self._login_user: str | None = None

    def decide(self, conn: ServerConnection, event) -> None:
        if isinstance(event, (Hello, MailFrom, StartTLSRequested)):
            conn.accept()
        elif isinstance(event, RcptTo):
            self._recipient(conn, event)
        elif isinstance(event, MessageReceived):
            self.messages.append(event)
            conn.accept_message(next(self.queue_ids))
        elif isinstance(event, AuthRequested):
            self._auth_start(conn, event)
        elif isinstance(event, AuthResponse):
            self._auth_continue(conn, event)

    def _recipient(self, conn: ServerConnection, event: RcptTo) -> None:
        path = event.path
        local = path.domain.lower() == LOCAL_DOMAIN or path.is_postmaster
        if self.relay_reject and (path.is_routed or not local):
            conn.reject(554, "5.7.1", f"<{path.address}>: Relay access denied")
        else:
            conn.accept()

    def _auth_start(self, conn: ServerConnection, event: AuthRequested) -> None:
        if event.mechanism not in conn.settings.auth_mechanisms:
            conn.reject(535, "5.7.8", "Error: authentication failed: Invalid authentication mechanism")
        elif event.mechanism == "PLAIN" and event.initial_response is not None:
            self._check_plain(conn, event.initial_response)
        elif event.mechanism == "PLAIN":
            self._auth_step = "plain"
            conn.auth_challenge("")
        else:                                      # LOGIN
            self._auth_step = "login-user"
            conn.auth_challenge(base64.b64encode(b"Username:").decode())

    def _auth_continue(self, conn: ServerConnection, event: AuthResponse) -> None:
        if self._auth_step == "plain":
            self._check_plain(conn, event.response)
        elif self._auth_step == "login-user":
            self._login_user = _decode(event.response)
            self._auth_step = "login-password"
            conn.auth_challenge(base64.b64encode(b"Password:").decode())
        else:
            self._finish(conn, self._login_user or "", _decode(event.response))

    def _check_plain(self, conn: ServerConnection, response: str) -> None:
        parts = _decode(response).split("\0")
        if len(parts) != 3:
            conn.reject(535, "5.7.8", "Error: authentication failed: authentication failure")
            return
        self._finish(conn, parts[1], parts[2])

    def _finish(self, conn: ServerConnection, user: str, password: str) -> None:
        self._auth_step = ""
        if USERS.get(user) == password:
            conn.accept()
        else:
            conn.reject(535, "5.7.8", "Error: authentication failed: authentication failure")


def _decode(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except ValueError:
        return ""


class SansIOTransport:
    """The script's client talking straight to a ServerConnection."""

    def __init__(self, settings: ServerSettings, app: DialogApplication):
        self.conn = ServerConnection(settings)
        self.app = app
        self._incoming = bytearray(self.conn.greeting())
        self._closed = False

    def send(self, data: bytes) -> None:
        assert not self._closed, "sending to a closed connection"
        self.conn.receive(data)
        self._pump()

    def start_tls(self) -> None:
        self.conn.tls_started()
        self._pump()

    def read_reply(self) -> tuple[int, list[str]] | None:
        lines = []
        while True:
            end = self._incoming.find(b"\r\n")
            if end < 0:
                assert not self._incoming, f"half a reply: {bytes(self._incoming)!r}"
                if self._closed and not lines:
                    return None
                raise AssertionError(f"the server is waiting for input; reply so far: {lines}")
            line = self._incoming[:end].decode("utf-8", "surrogateescape")
            del self._incoming[:end + 2]
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), lines

    def is_silent(self) -> bool:
        return not self._incoming

    def _pump(self) -> None:
        while True:
            event = self.conn.next_event()
            self._incoming += self.conn.data_to_send()
            if event is NEED_DATA:
                return
            if event is CLOSED:
                self._closed = True
                return
            self.app.decide(self.conn, event)
            self._incoming += self.conn.data_to_send()


@pytest.mark.parametrize("path", DIALOGS, ids=[path.stem for path in DIALOGS])
def test_dialog(path: Path) -> None:
    script = load_script(path)
    app = DialogApplication(script)
    transport = SansIOTransport(settings_for(script), app)
    run_script(script, transport)


def test_there_are_many_dialogs() -> None:
    assert len(DIALOGS) >= 30
