"""ServerConnection behaviours that dialog scripts cannot show well: event
order with a slow application, incremental input, buffer bounds, STARTTLS."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from mailferry.protocol import replies
from mailferry.protocol.esmtp_parameters import decode_xtext
from mailferry.protocol.message_readers import count_received_headers
from mailferry.protocol.server_events import (
    BDAT, CLOSED, DECISIONS, NEED_DATA, PAUSED, AuthAborted, AuthRequested, AuthResponse,
    ConnectionLost, Hello, MailFrom, MessageReceived, ProtocolViolation, Quit, RcptTo,
    StartTLSRequested,
)
from mailferry.protocol.smtp_server import REJECT, ServerConnection, ServerSettings

HOST = "mx.example"


def connect(**settings) -> ServerConnection:
    conn = ServerConnection(ServerSettings(hostname=HOST, **settings))
    assert conn.greeting() == b"220 mx.example ESMTP mailferry\r\n"
    return conn


class Session:
    """Feeds input and answers every decision with yes, recording all."""

    def __init__(self, conn: ServerConnection):
        self.conn = conn
        self.events: list = []
        self.output = bytearray()

    def feed(self, data: bytes) -> object:
        self.conn.receive(data)
        return self.run()

    def run(self) -> object:
        while True:
            event = self.conn.next_event()
            self.output += self.conn.data_to_send()
            if event in (NEED_DATA, CLOSED, PAUSED):
                return event
            self.events.append(event)
            self.decide(event)
            self.output += self.conn.data_to_send()

    def decide(self, event) -> None:
        if isinstance(event, MessageReceived):
            self.conn.accept_message("QID")
        elif isinstance(event, DECISIONS):
            self.conn.accept()

    def replies(self) -> list[str]:
        return [line for line in self.output.decode("utf-8", "replace").split("\r\n") if line]

    def of_type(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]


def session(**settings) -> Session:
    """Most tests send a whole transaction in one go, DATA content included:
    that is improper pipelining, so the protection is off unless asked for."""
    settings.setdefault("forbid_unauth_pipelining", False)
    return Session(connect(**settings))


def transaction(body: bytes = b"Subject: x\r\n\r\nbody\r\n.\r\n") -> bytes:
    return b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n" + body


# --- The application may take its time ----------------------------------------------------------

def test_nothing_overtakes_a_pending_decision():
    conn = connect()
    conn.receive(b"EHLO c.example\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.accept()
    conn.data_to_send()
    conn.receive(transaction(b""))
    assert isinstance(conn.next_event(), MailFrom)
    conn.accept()
    assert isinstance(conn.next_event(), RcptTo)
    conn.accept()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    conn.receive(b"Subject: x\r\n\r\nbody\r\n.\r\nRSET\r\nMAIL FROM:<x@example.com>\r\n")
    assert isinstance(conn.next_event(), MessageReceived)
    # The commit takes a while; the client keeps talking.
    conn.receive(b"NOOP\r\n")
    for _ in range(3):
        assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.accept_message("4Q1D")
    assert conn.data_to_send() == b"250 2.0.0 Ok: queued as 4Q1D\r\n"
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.data_to_send() == b"250 2.0.0 Ok\r\n"
    conn.reject(450, "4.7.1", "<x@example.com>: Sender address rejected: try later")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == (b"450 4.7.1 <x@example.com>: Sender address rejected: try later\r\n"
                                   b"250 2.0.0 Ok\r\n")


def test_decisions_are_checked():
    conn = connect()
    with pytest.raises(RuntimeError):
        conn.accept()
    conn.receive(b"HELO c.example\r\n")
    conn.next_event()
    with pytest.raises(ValueError):
        conn.reject(250, "2.0.0", "Ok")
    with pytest.raises(RuntimeError):
        conn.accept_message("QID")


def test_greeting_comes_first():
    conn = ServerConnection()
    with pytest.raises(RuntimeError):
        conn.next_event()
    assert conn.greeting() == b"220 localhost ESMTP mailferry\r\n"
    assert ServerConnection(ServerSettings(banner="mx ESMTP hi")).greeting() == b"220 mx ESMTP hi\r\n"


def test_reject_with_421_closes():
    s = session()
    s.conn.receive(b"EHLO c.example\r\n")
    assert isinstance(s.conn.next_event(), Hello)
    s.conn.reject(421, "4.3.2", "mx.example Service shutting down")
    assert s.conn.next_event() is CLOSED
    assert s.conn.data_to_send() == b"421 4.3.2 mx.example Service shutting down\r\n"


def test_refuse_sends_a_ready_reply_and_checks_it_like_reject():
    s = session()
    s.feed(b"EHLO c.example\r\n")
    s.conn.receive(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@remote.example>\r\n")
    assert isinstance(s.conn.next_event(), MailFrom)
    s.conn.accept()
    assert isinstance(s.conn.next_event(), RcptTo)
    with pytest.raises(ValueError):
        s.conn.refuse(replies.OK)
    s.conn.refuse(replies.Reply(554, "5.7.1", "<b@remote.example>: Relay access denied"))
    assert s.conn.next_event() is NEED_DATA
    assert s.conn.data_to_send() == b"250 2.1.0 Ok\r\n554 5.7.1 <b@remote.example>: Relay access denied\r\n"
    assert s.conn.command_counts["rcpt"] == (0, 1)
    s.conn.receive(b"DATA\r\n")
    assert s.conn.next_event() is NEED_DATA
    assert s.conn.data_to_send() == b"554 5.5.1 Error: no valid recipients\r\n"


# --- Feeding ------------------------------------------------------------------------------------

SCRIPT = (b"EHLO c.example\r\n" + transaction(b"Subject: x\r\n\r\n..dot\r\nbare\nlf\r\n.\r\n")
          + b"NOOP\r\nMAIL FROM:<a@example.com> SIZE=100\r\nRCPT TO:<b@mx.example> NOTIFY=NEVER\r\n"
          b"BDAT 5\r\nab\r\ncBDAT 0 LAST\r\nVRFY x\r\nFOO\r\n" + b"NOOP " + b"x" * 3000
          + b"\r\nQUIT\r\n")


def play(chunks: list[bytes]) -> tuple[list, bytes]:
    s = session(forbid_unauth_pipelining=False)
    for chunk in filter(None, chunks):      # b"" would mean end of file
        s.feed(chunk)
    # Pipelining notices depend on how input was cut; everything else must not.
    events = [event for event in s.events if not isinstance(event, ProtocolViolation)]
    return events, bytes(s.output)


def test_one_byte_at_a_time():
    assert play([SCRIPT[i:i + 1] for i in range(len(SCRIPT))]) == play([SCRIPT])


@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=30))
@hypothesis_settings(max_examples=200, deadline=None)
def test_any_cut_gives_the_same_session(cuts):
    points = sorted(set(cuts))
    chunks = [SCRIPT[start:end] for start, end in zip([0, *points], [*points, len(SCRIPT)])]
    assert play(chunks) == play([SCRIPT])


def test_the_reference_session():
    events, output = play([SCRIPT])
    messages = [event for event in events if isinstance(event, MessageReceived)]
    assert [message.content for message in messages] == [
        b"Subject: x\r\n\r\n.dot\r\nbare\r\nlf\r\n", b"ab\r\nc\r\n"]
    assert output.decode().split("\r\n")[-5:] == [
        "252 2.0.0 x", "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command too long", "221 2.0.0 Bye", ""]


# --- DATA: dot-stuffing, terminator, line ends --------------------------------------------------

lines = st.lists(st.binary(max_size=40).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"")),
                 max_size=20)


@given(lines)
@hypothesis_settings(max_examples=300, deadline=None)
def test_dot_stuffing_round_trip(message_lines):
    content = b"".join(line + b"\r\n" for line in message_lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in message_lines)
    s = session()
    s.feed(b"EHLO c.example\r\n")
    s.feed(transaction(stuffed + b".\r\n"))
    [message] = s.of_type(MessageReceived)
    assert message.content == content


SMUGGLING = [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\x00\n", b"\n\n.\n\n", b"\r\r\n.\r\r\n",
    b"\r\n .\r\n", b"\r\n.\t\r\n",
]


@pytest.mark.parametrize("terminator", SMUGGLING, ids=[repr(t) for t in SMUGGLING])
@pytest.mark.parametrize("bare_newline", ["normalize", REJECT])
def test_smuggled_transaction_stays_in_the_message(terminator, bare_newline):
    s = session(bare_newline=bare_newline)
    s.feed(b"EHLO c.example\r\n")
    smuggled = (b"MAIL FROM:<admin@mx.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"
                b"Subject: forged\r\n\r\nforged\r\n")
    s.feed(transaction(b"Subject: hello\r\n\r\nbody" + terminator + smuggled + b".\r\n"))
    senders = [event.path.address for event in s.of_type(MailFrom)]
    assert senders == ["a@example.com"]
    messages = s.of_type(MessageReceived)
    if bare_newline == REJECT and b"\n" in terminator.replace(b"\r\n", b""):
        assert messages == [] and "550 5.5.2 mx.example Error: bare <LF> received" in s.replies()
    else:
        [message] = messages
        assert b"MAIL FROM:<admin@mx.example>" in message.content
    assert s.conn.next_event() is NEED_DATA


@pytest.mark.parametrize("value", ["no", "yes", "normalize"])
def test_postfix_bare_newline_values_all_normalize(value):
    s = session(bare_newline=value)
    s.feed(b"EHLO c.example\r\n" + transaction(b"a\nb\n.\nc\r\n.\r\n"))
    [message] = s.of_type(MessageReceived)
    assert message.content == b"a\r\nb\r\n.\r\nc\r\n"
    with pytest.raises(ValueError):
        ServerSettings(bare_newline="sometimes")


def test_bare_cr_is_kept_and_never_a_line_end():
    s = session()
    s.feed(b"EHLO c.example\r\n" + transaction(b"a\rb\r\n.\r.\r\n.\r\n"))
    [message] = s.of_type(MessageReceived)
    assert message.content == b"a\rb\r\n.\r.\r\n"


def test_first_line_may_be_the_terminator_or_stuffed():
    s = session()
    s.feed(b"EHLO c.example\r\n" + transaction(b".\r\n") + transaction(b"..x\r\n.\r\n"))
    assert [message.content for message in s.of_type(MessageReceived)] == [b"", b".x\r\n"]


def test_terminator_search_never_rescans():
    s = session(message_size_limit=0)
    conn = s.conn
    s.feed(b"EHLO c.example\r\n" + transaction(b""))
    piece = (b"x" * 97 + b"\r\n.") * 10           # "\r\n." at every piece boundary and inside
    pieces = 1000
    before = conn.terminator_bytes_examined
    for _ in range(pieces):
        s.feed(piece)
    s.feed(b"x\r\n.\r\n")
    examined = conn.terminator_bytes_examined - before
    total = len(piece) * pieces + 6
    assert examined <= total + 2 + 4 * (pieces + 1)
    assert len(s.of_type(MessageReceived)) == 1


# --- Limits -------------------------------------------------------------------------------------

def test_over_limit_message_is_not_kept_in_memory():
    s = session(message_size_limit=1000)
    s.feed(b"EHLO c.example\r\n" + transaction(b""))
    for _ in range(5000):
        s.feed(b"y" * 998 + b"\r\n")
        assert s.conn.buffered_bytes < 2000
    s.feed(b".\r\nNOOP\r\n")
    assert s.replies()[-2:] == ["552 5.3.4 Error: message file too big", "250 2.0.0 Ok"]
    assert s.of_type(MessageReceived) == []
    assert s.conn.disconnect_summary() == "ehlo=1 mail=1 rcpt=1 data=0/1 noop=1 commands=4/5"


@pytest.mark.parametrize("size, accepted", [(1000, True), (1001, False)])
def test_size_limit_is_exact(size, accepted):
    s = session(message_size_limit=1000)
    body = b"x" * (size - 2) + b"\r\n"
    s.feed(b"EHLO c.example\r\n" + transaction(body + b".\r\n"))
    assert bool(s.of_type(MessageReceived)) is accepted


def test_stuffed_dots_do_not_count_toward_the_limit():
    s = session(message_size_limit=1000)
    body = b"..\r\n" * 300                        # 1200 bytes sent, 900 stored
    s.feed(b"EHLO c.example\r\n" + transaction(b""))
    for start in range(0, len(body), 7):
        s.feed(body[start:start + 7])
    s.feed(b".\r\n")
    [message] = s.of_type(MessageReceived)
    assert len(message.content) == 900


def test_long_command_line_is_dropped_as_it_comes():
    s = session()
    for _ in range(1000):
        s.feed(b"a" * 1000)
        assert s.conn.buffered_bytes <= 2050
    s.feed(b"\r\nNOOP\r\n")
    assert s.replies()[-2:] == ["500 5.5.2 Error: command too long", "250 2.0.0 Ok"]


def test_line_length_limit_boundary():
    s = session(line_length_limit=20)
    s.feed(b"NOOP " + b"x" * 15 + b"\r\n" + b"NOOP " + b"x" * 16 + b"\r\n")
    assert s.replies()[-2:] == ["250 2.0.0 Ok", "500 5.5.2 Error: command too long"]


def test_recipient_overshoot_becomes_an_error():
    s = session(recipient_limit=1, recipient_overshoot_limit=2)
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n" + b"RCPT TO:<b@mx.example>\r\n" * 4)
    assert s.replies()[-3:] == ["452 4.5.3 Error: too many recipients"] * 3
    assert s.conn.command_counts["rcpt"] == (3, 4)
    assert s.conn.error_count == 1


def test_junk_commands_become_errors():
    s = session(junk_command_limit=2, hard_error_limit=3)
    s.feed(b"NOOP\r\n" * 4)
    assert s.conn.error_count == 2
    s.feed(b"NOOP\r\n")
    assert s.replies()[-2:] == ["250 2.0.0 Ok", "421 4.7.0 mx.example Error: too many errors"]


def test_reply_delay_after_soft_limit():
    s = session(soft_error_limit=2, error_sleep_time=1.5)
    s.feed(b"FOO\r\n")
    assert s.conn.reply_delay == 0
    s.feed(b"FOO\r\n")
    assert s.conn.reply_delay == 1.5
    s.feed(b"EHLO c.example\r\n" + transaction())
    assert s.conn.error_count == 0 and s.conn.reply_delay == 0


def test_hard_error_limit():
    s = session(hard_error_limit=2)
    assert s.feed(b"FOO\r\nBAR\r\nNOOP\r\n") is CLOSED
    assert s.replies() == ["500 5.5.2 Error: command not recognized"] * 2 + [
        "421 4.7.0 mx.example Error: too many errors"]
    [violation] = s.of_type(ProtocolViolation)
    assert violation.reason == "too many errors" and violation.closing


def test_hop_count():
    header = b"Received: a\r\nX: y\r\nreceived:b\r\nRECEIVED: c\r\n"
    assert count_received_headers(header + b"\r\nReceived: no\r\n") == 3
    assert count_received_headers(b"\r\nReceived: body\r\n") == 0
    assert count_received_headers(b"Received: only headers\r\n") == 1
    assert count_received_headers(b"X-Received: no\r\nDelivered-To: no\r\n\r\n") == 0


def test_timeout_reply():
    s = session()
    s.feed(b"EHLO c.example\r\n")
    s.conn.receive(b"MAIL FROM:<a@example.com>\r\n")
    assert isinstance(s.conn.next_event(), MailFrom)
    s.conn.accept()
    assert s.conn.timeout_reply() == b"250 2.1.0 Ok\r\n421 4.4.2 mx.example Error: timeout exceeded\r\n"
    assert s.conn.next_event() is CLOSED


# --- STARTTLS -----------------------------------------------------------------------------------

def test_starttls_discards_pipelined_commands():
    s = session(starttls=True)
    s.feed(b"EHLO c.example\r\n")
    assert any("STARTTLS" in line for line in s.replies())
    s.output.clear()
    assert s.feed(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n") is NEED_DATA
    assert s.replies() == ["220 2.0.0 Ready to start TLS"]
    [violation] = s.of_type(ProtocolViolation)
    assert "MAIL FROM:<evil@x.example>" in violation.detail
    # Whatever arrives before the handshake is done is not ours to read.
    s.feed(b"RCPT TO:<evil@x.example>\r\n")
    s.conn.tls_started()
    assert s.run() is NEED_DATA
    assert s.replies() == ["220 2.0.0 Ready to start TLS"]
    assert s.of_type(MailFrom) == [] and s.of_type(RcptTo) == []
    assert s.conn.tls_active and s.conn.helo_name is None and not s.conn.esmtp
    s.feed(b"EHLO c.example\r\n")
    assert not any("STARTTLS" in line for line in s.replies()[1:])


def test_starttls_refused_by_application():
    conn = connect(starttls=True)
    conn.receive(b"STARTTLS\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), StartTLSRequested)
    conn.reject(454, "4.7.0", "TLS not available due to local problem")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"454 4.7.0 TLS not available due to local problem\r\n250 2.0.0 Ok\r\n"
    with pytest.raises(RuntimeError):
        conn.tls_started()


def test_auth_only_after_tls_when_required():
    s = session(starttls=True, auth_mechanisms=("PLAIN",), auth_requires_tls=True)
    s.feed(b"EHLO c.example\r\nAUTH PLAIN\r\n")
    assert not any("AUTH" in line for line in s.replies()[:-1])
    assert s.replies()[-1] == "504 5.5.4 Encryption required for requested authentication mechanism"
    s.feed(b"STARTTLS\r\n")
    s.conn.tls_started()
    s.feed(b"EHLO c.example\r\n")
    assert "250-AUTH PLAIN" in s.replies()


# --- AUTH ---------------------------------------------------------------------------------------

def test_auth_mechanisms_differ_before_and_after_tls():
    # smtpd_sasl_security_options = noplaintext, smtpd_sasl_tls_security_options = noanonymous
    s = session(starttls=True, auth_mechanisms=(), auth_mechanisms_tls=("PLAIN", "LOGIN"))
    s.feed(b"EHLO c.example\r\n")
    assert not any("AUTH" in line for line in s.replies())
    assert s.conn.auth_mechanisms_now() == ()
    s.feed(b"STARTTLS\r\n")
    s.conn.tls_started()
    s.feed(b"EHLO c.example\r\n")
    assert "250-AUTH PLAIN LOGIN" in s.replies()
    assert s.conn.auth_mechanisms_now() == ("PLAIN", "LOGIN")


def test_broken_sasl_auth_clients_adds_the_old_auth_equals_line():
    s = session(auth_mechanisms=("PLAIN", "LOGIN"), auth_broken_clients=True)
    s.feed(b"EHLO c.example\r\n")
    assert ["250-AUTH PLAIN LOGIN", "250-AUTH=PLAIN LOGIN"] == [line for line in s.replies() if "AUTH" in line]


def test_auth_hidden_from_one_client_still_works_for_it():
    # smtpd_sasl_exceptions_networks: not advertised, but AUTH is not refused (as in Postfix).
    s = session(auth_mechanisms=("PLAIN",))
    s.conn.auth_advertised = False
    s.feed(b"EHLO c.example\r\nAUTH PLAIN AHUAcA==\r\n")
    assert not any("AUTH" in line for line in s.replies()[:-1])
    assert s.of_type(AuthRequested) == [AuthRequested("PLAIN", "AHUAcA==")]


def test_auth_exchange_through_the_machine():
    conn = connect(auth_mechanisms=("LOGIN", "PLAIN"))
    conn.receive(b"EHLO c.example\r\n")
    conn.next_event()
    conn.accept()
    assert conn.next_event() is NEED_DATA
    assert b"250-AUTH LOGIN PLAIN\r\n" in conn.data_to_send()
    conn.receive(b"AUTH LOGIN\r\n")
    assert conn.next_event() == AuthRequested("LOGIN", None)
    conn.auth_challenge("VXNlcm5hbWU6")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"334 VXNlcm5hbWU6\r\n"
    conn.receive(b"dXNlcjE=\r\nc2VjcmV0\r\nMAIL FROM:<a@example.com>\r\n")
    assert conn.next_event() == AuthResponse("dXNlcjE=")
    conn.auth_challenge("UGFzc3dvcmQ6")
    assert conn.next_event() == AuthResponse("c2VjcmV0")
    conn.accept()
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n"
    assert conn.authenticated
    assert conn.command_counts["auth"] == (1, 1)


def test_auth_initial_response_and_abort():
    conn = connect(auth_mechanisms=("PLAIN",))
    conn.receive(b"AUTH plain =\r\n")
    assert conn.next_event() == AuthRequested("PLAIN", "")
    conn.auth_challenge("")
    conn.receive(b"*\r\n")
    assert conn.next_event() == AuthAborted()
    assert conn.data_to_send() == b"334 \r\n501 5.7.0 Authentication aborted\r\n"
    conn.receive(b"AUTH PLAIN AHVzZXIxAHNlY3JldA==\r\n")
    assert conn.next_event() == AuthRequested("PLAIN", "AHVzZXIxAHNlY3JldA==")
    conn.reject(535, "5.7.8", "Error: authentication failed: authentication failure")
    assert conn.next_event() is NEED_DATA
    assert not conn.authenticated
    assert conn.command_counts["auth"] == (0, 2)


def test_long_sasl_lines():
    conn = connect(auth_mechanisms=("GSSAPI",))
    conn.receive(b"AUTH GSSAPI\r\n")
    assert conn.next_event() == AuthRequested("GSSAPI", None)
    conn.auth_challenge("")
    token = b"Q" * 12000
    conn.receive(token + b"\r\n")
    assert conn.next_event() == AuthResponse(token.decode())
    conn.auth_challenge("")
    conn.receive(b"Q" * 13000 + b"\r\nNOOP\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().split(b"\r\n")[-3:] == [
        b"500 5.5.6 Authentication Exchange line is too long", b"250 2.0.0 Ok", b""]


# --- Pipelining protection ----------------------------------------------------------------------

def test_talking_before_the_greeting():
    conn = ServerConnection(ServerSettings(hostname=HOST))
    conn.receive(b"EHLO c.example\r\n")
    conn.greeting()
    violation = conn.next_event()
    assert isinstance(violation, ProtocolViolation) and violation.after == "CONNECT" and violation.closing
    assert conn.next_event() is CLOSED
    assert conn.data_to_send() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


def test_talking_before_the_greeting_allowed():
    conn = ServerConnection(ServerSettings(hostname=HOST, forbid_unauth_pipelining=False))
    conn.receive(b"EHLO c.example\r\n")
    conn.greeting()
    violation = conn.next_event()
    assert isinstance(violation, ProtocolViolation) and not violation.closing
    assert isinstance(conn.next_event(), Hello)


@pytest.mark.parametrize("packet", [
    b"HELO c.example\r\nNOOP\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\n",
    b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@mx.example>\r\n",        # no EHLO, no PIPELINING
    b"VRFY x\r\nNOOP\r\n",
    b"NOOP\r\nNOOP\r\n",
])
def test_unauthorized_pipelining(packet):
    s = session(forbid_unauth_pipelining=True)
    assert s.feed(packet) is CLOSED
    assert s.replies() == ["554 5.5.0 Error: SMTP protocol synchronization"]
    [violation] = s.of_type(ProtocolViolation)
    assert violation.reason == "improper command pipelining"


def test_pipelining_needs_the_keyword():
    s = session(pipelining=False, forbid_unauth_pipelining=True)
    s.feed(b"EHLO c.example\r\n")
    assert not s.conn.pipelining_offered
    assert s.feed(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@mx.example>\r\n") is CLOSED


# --- Odds and ends ------------------------------------------------------------------------------

def test_connection_lost_in_data():
    s = session()
    s.feed(b"EHLO c.example\r\n" + transaction(b"Subject: half"))
    assert s.feed(b"") is CLOSED
    assert s.of_type(ConnectionLost) == [ConnectionLost("DATA")]


def test_quit_is_reported_and_closes():
    s = session()
    assert s.feed(b"QUIT\r\nNOOP\r\n") is CLOSED
    assert s.of_type(Quit) == [Quit()]
    assert s.replies() == ["221 2.0.0 Bye"]
    s.conn.receive(b"NOOP\r\n")
    assert s.conn.next_event() is CLOSED


def test_bdat_message_and_reply():
    s = session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@mx.example>\r\n"
           b"BDAT 3\r\nab\nBDAT 2 LAST\r\ncd")
    [message] = s.of_type(MessageReceived)
    assert message == MessageReceived(b"ab\r\ncd\r\n", BDAT)
    assert s.replies()[-2:] == ["250 2.0.0 Ok: 3 bytes", "250 2.0.0 Ok: 8 bytes queued as QID"]


def test_bdat_large_chunk_arriving_in_pieces():
    s = session(message_size_limit=0)
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@mx.example>\r\nBDAT 100000 LAST\r\n")
    for _ in range(100):
        s.feed(b"z" * 998 + b"\r\n")
    [message] = s.of_type(MessageReceived)
    assert len(message.content) == 100000 and message.via == BDAT


def test_parameters_reach_the_application():
    s = session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<j\xc3\xbcrgen@example.com> SMTPUTF8 BODY=8bitmime SIZE=1200"
           b" RET=hdrs ENVID=QQ+2B1 AUTH=user+40example.com\r\n"
           b"RCPT TO:<b@mx.example> NOTIFY=success,delay ORCPT=rfc822;b+2Bx@mx.example\r\n")
    [mail] = s.of_type(MailFrom)
    assert mail.path.address == "jürgen@example.com"
    params = mail.params
    assert (params.size, params.body, params.smtputf8, params.ret, params.envid, params.auth) == (
        1200, "8BITMIME", True, "HDRS", "QQ+1", "user@example.com")
    [rcpt] = s.of_type(RcptTo)
    assert (rcpt.params.notify, rcpt.params.orcpt) == ("SUCCESS,DELAY", "rfc822;b+x@mx.example")


def test_postfix_command_counts():
    # The same session as Postfix's "ehlo=1 mail=1/2 rcpt=0/2 commands=2/5".
    s = Session(connect())
    s.decide = lambda event: (s.conn.reject(554, "5.7.1", "Relay access denied")
                              if isinstance(event, RcptTo) else s.conn.accept())
    s.feed(b"EHLO c.example\r\n")
    for line in (b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<x@elsewhere.example>\r\n",
                 b"RCPT TO:<>\r\n", b"MAIL FROM:<a@example.com>\r\n"):
        s.feed(line)
    assert s.conn.disconnect_summary() == "ehlo=1 mail=1/2 rcpt=0/2 commands=2/5"
    assert connect().disconnect_summary() == "commands=0"


def test_unknown_commands_are_counted_as_unknown():
    s = session()
    s.feed(b"EHLO c.example\r\nFOO\r\n\r\nNOOP\r\nQUIT\r\n")
    assert s.conn.disconnect_summary() == "ehlo=1 noop=1 quit=1 unknown=0/2 commands=3/5"


@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1", b"POST /x", b"CONNECT x:25", b"get /", b"Subject: hi", b"X-Foo:bar",
    b"NOOP:", b"123", b"<html>",
])
def test_non_smtp_commands_end_the_session(line):
    s = session()
    assert s.feed(line + b"\r\nNOOP\r\n") is CLOSED
    assert s.replies() == ["221 2.7.0 Error: I can break rules, too. Goodbye."]


@pytest.mark.parametrize("line", [b"FOO", b"X-Foo : bar", b"Foo Bar: x", b"HELP", b"EXPN x"])
def test_unknown_but_harmless(line):
    s = session()
    assert s.feed(line + b"\r\n") is NEED_DATA
    assert s.replies() == ["500 5.5.2 Error: command not recognized"]


def test_xtext():
    assert decode_xtext("a+2Bb+3dc") == "a+b=c"
    assert decode_xtext("a=b") == "a=b"
    assert decode_xtext("") == ""
    assert decode_xtext("a+ZZ") is None and decode_xtext("a+") is None and decode_xtext("a b") is None


def test_reply_format():
    ehlo = replies.Reply(250, "", "mx\nPIPELINING\nSIZE")
    assert ehlo.to_bytes() == b"250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n"
    assert replies.Reply(550, "5.7.1", "one\ntwo").to_bytes() == b"550-5.7.1 one\r\n550 5.7.1 two\r\n"
    assert str(replies.TOO_MANY_RECIPIENTS) == "452 4.5.3 Error: too many recipients"
