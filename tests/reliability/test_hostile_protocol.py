"""Hostile input to the sans-IO protocol core, by property: the SMTP server
state machine, the SMTP/LMTP client's reply reader and transaction, and the
envelope address parser.

What every test here holds, whatever the input:
- no exception escapes except the documented one (ClientProtocolError for the
  client, AddressError for the address parser; none at all for the server);
- every reply the server writes is well-formed (our own ReplyReader parses all
  of it), and each command gets exactly one final reply, in order;
- the server's memory is bounded: after it has read what it can, the receive
  buffer holds at most one unfinished line (line_length_limit, or the SASL
  line limit) or a message no larger than message_size_limit.

Budget: the "ci" profile (the default) is derandomized, so CI runs the same
inputs every time, and sized so that this file takes ~20-30 s. For a longer
run, with fresh random inputs each time:

    MAILFERRY_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/reliability/test_hostile_protocol.py \
        -p no:cacheprovider --hypothesis-show-statistics

(MAILFERRY_FUZZ_EXAMPLES=N overrides the number of examples per test.)
A failing example is printed with a @reproduce_failure blob.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailferry.protocol.address import RECIPIENT, SENDER, AddressError, Path, parse_path, quote_local_part, \
    split_path, unquote_local_part
from mailferry.protocol.server_events import CLOSED, DECISIONS, NEED_DATA, PAUSED
from mailferry.protocol.smtp_client import (
    ClientProtocolError, Extensions, ReplyReader, ServerReply, Transaction, data_payload, decode_challenge,
    mail_command, rcpt_command,
)
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings
from tests.reliability.fuzz.decisions import decide

# --- The budget ------------------------------------------------------------------------------------

PROFILE = os.environ.get("MAILFERRY_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"MAILFERRY_FUZZ_PROFILE={PROFILE!r}: use ci or long")
_DEFAULT_EXAMPLES = {"ci": 200, "long": 20000}[PROFILE]
EXAMPLES = int(os.environ.get("MAILFERRY_FUZZ_EXAMPLES", _DEFAULT_EXAMPLES))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=PROFILE == "ci",
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# A state machine example is a whole session of up to stateful_step_count commands.
SESSIONS = settings(FUZZ, max_examples=max(EXAMPLES // 3, 10), stateful_step_count=40)

# Inputs tried, per test: printed at the end of the module (pytest -s, or -rA shows it).
TRIED: dict[str, int] = {}


def tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_inputs_tried():
    yield
    total = sum(TRIED.values())
    details = ", ".join(f"{name}={count}" for name, count in sorted(TRIED.items()))
    print(f"\nhypothesis inputs tried ({PROFILE} profile): {total} ({details})")


# --- The server: small limits, so that the fuzzer reaches them --------------------------------------

LINE_LIMIT = 100
SIZE_LIMIT = 2000
AUTH_LINE_LIMIT = 12288          # smtp_server._AUTH_LINE_LIMIT

server_settings = st.builds(
    ServerSettings,
    hostname=st.just("mx.example"),
    line_length_limit=st.just(LINE_LIMIT),
    message_size_limit=st.just(SIZE_LIMIT),
    recipient_limit=st.sampled_from([0, 1, 3]),
    recipient_overshoot_limit=st.sampled_from([0, 2]),
    hopcount_limit=st.sampled_from([0, 3]),
    soft_error_limit=st.just(3),
    hard_error_limit=st.sampled_from([0, 5, 20]),
    junk_command_limit=st.sampled_from([2, 100]),
    bare_newline=st.sampled_from(["normalize", "reject"]),
    forbid_unauth_pipelining=st.booleans(),
    helo_required=st.booleans(),
    strict_envelopes=st.booleans(),
    vrfy_enabled=st.booleans(),
    starttls=st.booleans(),
    auth_mechanisms=st.sampled_from([(), ("PLAIN", "LOGIN")]),
    auth_requires_tls=st.booleans(),
    data_decision=st.booleans(),
    chunking=st.booleans(),
    smtputf8=st.booleans(),
)

# Pieces a hostile client strings together: real commands, every end-of-data
# spelling, NULs, invalid UTF-8, overlong runs, BDAT counts.
COMMANDS = [
    b"EHLO client.example", b"HELO client.example", b"MAIL FROM:<a@example.com>", b"MAIL FROM:<>",
    b"MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME SMTPUTF8", b"RCPT TO:<b@mx.example>",
    b"RCPT TO:<b@mx.example> NOTIFY=SUCCESS ORCPT=rfc822;b@mx.example", b"DATA", b"BDAT 5", b"BDAT 0 LAST",
    b"BDAT 3 LAST", b"BDAT 99999999999999999999", b"RSET", b"NOOP", b"VRFY b@mx.example", b"ETRN x",
    b"QUIT", b"STARTTLS", b"AUTH PLAIN", b"AUTH PLAIN AHVzZXIAcGFzcw==", b"AUTH LOGIN", b"*", b"GET / HTTP/1.0",
    b"Subject: header as command", b"MAIL FROM:<;sleep 66;>", b"RCPT TO:<\xff\xfe@mx.example>",
    b"MAIL FROM:<a\x00b@example.com>", b"RCPT TO:<\"a\\\"b\"@[127.0.0.1]>", b"RCPT TO:<@a,@b:c@d>",
    b"MAIL FROM:<a@b> RET=FULL ENVID=x+2By", b"EHLO \xc3\x28", b"",
]
PIECES = [
    b"\r\n", b"\n", b"\r", b".", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r",
    b"\x00", b"\xff", b"\xc3\x28", b"Received: x\r\n", b"..", b"A" * (LINE_LIMIT + 1), b" ",
]
fragments = st.one_of(
    st.sampled_from(COMMANDS).map(lambda command: command + b"\r\n"),
    st.sampled_from(COMMANDS),
    st.sampled_from(PIECES),
    st.binary(max_size=40),
    st.integers(min_value=LINE_LIMIT - 2, max_value=AUTH_LINE_LIMIT + 10).map(lambda n: b"x" * n),
)
streams = st.lists(fragments, max_size=60).map(b"".join)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at arbitrary places (b"" is end of file, so never a piece)."""
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=20).map(
        lambda cuts: [data[start:end] for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])
                      if end > start])


class Driver:
    """Runs a ServerConnection the way smtpd does, deciding each event as the
    drawn `choices` say, and checks the bounds after each read."""

    def __init__(self, server_settings: ServerSettings, choices: list[int]):
        self.conn = ServerConnection(server_settings)
        self.settings = server_settings
        self.choices = choices or [0]
        self.turn = 0
        self.output = bytearray(self.conn.greeting())
        self.closed = False

    def choose(self, options: int) -> int:
        choice = self.choices[self.turn % len(self.choices)] % options
        self.turn += 1
        return choice

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        self.conn.receive(data)
        self.run()

    def run(self) -> None:
        conn = self.conn
        for _ in range(100_000):
            event = conn.next_event()
            self.output += conn.data_to_send()
            if event is CLOSED:
                self.closed = True
                return
            if event is NEED_DATA:
                self.check_bounds()
                return
            assert event is not PAUSED, "a decision was left pending by the driver"
            if isinstance(event, DECISIONS):
                decide(conn, event, self.choose(4))
            self.output += conn.data_to_send()
        raise AssertionError("the server never asked for more input")

    def check_bounds(self) -> None:
        held = self.conn.buffered_bytes
        # One unfinished line (SASL lines may be longer), or one message
        # under the size limit (with its stuffed dots and the 4 bytes kept
        # for the terminator search), or a BDAT chunk being stored.
        bound = max(AUTH_LINE_LIMIT, self.settings.line_length_limit) + 1 + 2 * SIZE_LIMIT + 8
        assert held <= bound, f"{held} bytes held after reading, bound {bound}"


def parse_replies(output: bytes) -> list[ServerReply]:
    """Every byte the server wrote, as replies; raises if anything is malformed."""
    reader = ReplyReader(max_line_length=100_000, max_lines=100_000)
    parsed = reader.feed(bytes(output))
    assert not reader.in_reply, f"the server left a reply unfinished: {bytes(output)[-200:]!r}"
    return parsed


@FUZZ
@given(server_settings, streams.flatmap(splits), st.lists(st.integers(0, 3), max_size=10), st.booleans())
def test_server_survives_any_byte_stream(settings_, chunks, choices, eof):
    tried("server_byte_stream")
    driver = Driver(settings_, choices)
    for chunk in chunks:
        driver.feed(chunk)
    if eof:
        driver.feed(b"")
    parsed = parse_replies(driver.output)
    assert parsed[0].code == 220
    for reply in parsed:
        assert 200 <= reply.code <= 599


@FUZZ
@given(streams, st.data())
def test_server_replies_do_not_depend_on_how_input_is_split(stream, data):
    """TCP may cut the stream anywhere: the session must be the same."""
    tried("server_split_invariance")
    base = ServerSettings(hostname="mx.example", line_length_limit=LINE_LIMIT, message_size_limit=SIZE_LIMIT,
                          forbid_unauth_pipelining=False, auth_mechanisms=("PLAIN",), starttls=True)
    whole = Driver(base, [2])
    whole.feed(stream)
    cut = Driver(base, [2])
    for chunk in data.draw(splits(stream)):
        cut.feed(chunk)
    # Input after a close is never read, so only compare what both saw.
    assert bytes(cut.output) == bytes(whole.output)


# --- The server, command by command ------------------------------------------------------------

class ServerSession(RuleBasedStateMachine):
    """One command at a time, the client waiting for each reply as a
    non-pipelining client does: each command gets exactly one final reply
    (DATA: 354, then one reply to the message), in order, and nothing more."""

    def __init__(self):
        super().__init__()
        self.driver: Driver | None = None
        self.replies_seen = 0
        self.in_data = False

    @rule(settings_=server_settings, choices=st.lists(st.integers(0, 3), min_size=1, max_size=8))
    @precondition(lambda self: self.driver is None or self.driver.closed)
    def connect(self, settings_, choices):
        tried("server_sessions")
        self.driver = Driver(settings_, choices)
        self.in_data = False
        self.replies_seen = self._count_replies()
        assert self.replies_seen == 1

    def _count_replies(self) -> int:
        return len(parse_replies(self.driver.output))

    def _send(self, line: bytes) -> list[ServerReply]:
        tried("server_commands")
        self.driver.feed(line)
        parsed = parse_replies(self.driver.output)
        new = parsed[self.replies_seen:]
        self.replies_seen = len(parsed)
        return new

    def _command(self, line: bytes) -> None:
        new = self._send(line)
        if self.driver.closed:
            # The last reply may come with the too-many-errors 421.
            assert 1 <= len(new) <= 2, f"{line!r} got {new}"
            return
        assert len(new) == 1, f"{line!r} got {[str(reply) for reply in new]}"
        self.in_data = new[0].code == 354
        if new[0].code == 334:
            # A SASL exchange: cancel it, which is one more command and reply.
            self._command(b"*\r\n")

    @precondition(lambda self: self.driver is not None and not self.driver.closed and not self.in_data)
    @rule(line=st.sampled_from(COMMANDS), junk=st.binary(max_size=30))
    def command(self, line, junk):
        if line in (b"STARTTLS", b"*"):
            line = b"NOOP"     # a handshake and a bare SASL line are not commands on their own
        if line.startswith(b"BDAT"):
            line = b"BDAT 3 LAST"
            new = self._send(line + b"\r\nabc")
            assert len(new) == 1 or self.driver.closed, f"{line!r} got {new}"
            return
        if b"\n" in junk:
            junk = b""
        self._command(line + junk.replace(b"\r", b"") + b"\r\n")

    @precondition(lambda self: self.driver is not None and not self.driver.closed and not self.in_data)
    @rule(length=st.integers(min_value=LINE_LIMIT - 1, max_value=LINE_LIMIT * 3))
    def long_line(self, length):
        self._command(b"NOOP " + b"x" * length + b"\r\n")

    @precondition(lambda self: self.driver is not None and not self.driver.closed and self.in_data)
    @rule(body=st.lists(st.sampled_from([b"Subject: x", b"", b".", b"..x", b"\x00\xff", b"Received: x",
                                         b"y" * 300, b"\r.\r", b"a\n.\nb"]), max_size=20))
    def message(self, body):
        new = self._send(b"".join(line + b"\r\n" for line in body) + b".\r\n")
        assert len(new) == 1 or (self.driver.closed and len(new) <= 2), f"message got {new}"
        self.in_data = False

    @precondition(lambda self: self.driver is not None and not self.driver.closed)
    @rule()
    def hang_up(self):
        self.driver.feed(b"")
        assert self.driver.closed
        assert len(parse_replies(self.driver.output)) == self.replies_seen, "a reply after the client left"

    @invariant()
    def bounded(self):
        if self.driver is not None and not self.driver.closed:
            self.driver.check_bounds()


ServerSession.TestCase.settings = SESSIONS
test_server_session_one_reply_per_command = ServerSession.TestCase


# --- The client: whatever a hostile server answers --------------------------------------------------

reply_lines = st.one_of(
    st.sampled_from([b"250 ok", b"250-first", b"250 2.1.0 Ok", b"354 go", b"421 4.4.2 bye", b"451 4.3.0 later",
                     b"550 5.1.1 no", b"452 too many", b"252 maybe", b"334 ", b"220 hi", b"199 low", b"600 high",
                     b"25", b"2500 ok", b"250_ok", b"abc", b"", b"250-" + b"x" * 3000, b"\xff\xfe0 x",
                     b"250 5.1.1 contradicting", b"\x00\x00\x00", b"354-go", b"250-PIPELINING",
                     b"250-SIZE 99999999999999999999", b"250 AUTH=PLAIN LOGIN"]),
    st.binary(max_size=30),
    st.from_regex(rb"\A[2-5][0-9][0-9][ -][ -~]{0,40}\Z"),
)
server_output = st.lists(st.tuples(reply_lines, st.sampled_from([b"\r\n", b"\n", b"\r", b""])),
                         max_size=40).map(lambda pairs: b"".join(line + end for line, end in pairs))


@FUZZ
@given(server_output, st.data())
def test_reply_reader_raises_only_its_error(output, data):
    tried("client_reply_reader")
    reader = ReplyReader(max_line_length=512, max_lines=20)
    try:
        for chunk in data.draw(splits(output)):
            for reply in reader.feed(chunk):
                assert 200 <= reply.code <= 599
                assert 1 <= len(reply.lines) <= 20
                str(reply), reply.enhanced, reply.text     # noqa: B018 - all computable
                Extensions.from_reply(reply)
                if reply.code == 334:
                    try:
                        decode_challenge(reply)
                    except ClientProtocolError:
                        pass
            assert reader.buffered_bytes <= 512 + 1
    except ClientProtocolError as error:
        assert str(error), "the error says why"
        assert len(str(error)) < 400, "the error is short enough to log"
        with pytest.raises(ClientProtocolError):
            reader.feed(b"250 ok\r\n")       # a broken stream stays broken


@FUZZ
@given(st.lists(st.builds(ServerReply, st.integers(200, 599), st.just(("x",))), max_size=30),
       st.integers(1, 5), st.booleans(), st.booleans())
def test_transaction_takes_any_reply_sequence(replies_, recipients, pipelining, lmtp):
    """Any replies in any order: each is read, or the transaction fails with
    ClientProtocolError; recipients are decided only by a reply to them."""
    tried("client_transaction")
    txn = Transaction(mail_command("a@example.com", size=10),
                      [rcpt_command(f"r{n}@example.com") for n in range(recipients)],
                      data_payload(b"Subject: x\r\n\r\nbody\r\n"), pipelining=pipelining, lmtp=lmtp)
    txn.start()
    failed = False
    for reply in replies_:
        try:
            txn.receive(reply)
        except ClientProtocolError:
            failed = True
            break
    if txn.done and not failed:
        assert all(result is not None for result in txn.results) or not txn.session_usable or txn.needs_reset
    for result in txn.results:
        if result is not None:
            reply, stage = result
            assert stage in ("MAIL FROM", "RCPT TO", "DATA", "end of DATA")
            if reply.is_positive:
                assert stage == "end of DATA", "only the end of DATA delivers"


unsafe_text = st.text(alphabet=st.sampled_from(["a", "@", "\r", "\n", "\0", "x", " ", ">", "é"]), max_size=20)


@FUZZ
@given(unsafe_text, unsafe_text)
def test_client_never_sends_a_line_end_inside_a_command(sender, recipient):
    """An address with CR, LF or NUL in it is refused before it reaches the
    wire: it can never inject a command of its own."""
    tried("client_commands")
    for build in (lambda: mail_command(sender), lambda: rcpt_command(recipient),
                  lambda: mail_command("a@b", envid=sender)):
        try:
            line = build()
        except ValueError:
            continue
        assert line.endswith(b"\r\n")
        assert b"\r" not in line[:-2] and b"\n" not in line[:-2] and b"\0" not in line


# --- The address parser ---------------------------------------------------------------------------

address_text = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\A<?[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~@\"\\ ,:\[\]-]{0,40}>?\Z"),
    st.sampled_from(["<>", "<postmaster>", "<@a,@b:c@d>", '<"a b"@c>', "<a@[127.0.0.1]>", "<a@[IPv6:::1]>",
                     "<a@b@c>", "<;sleep 66;>", "<a..b@c.>", "<a@b_c>", "<\udcff@b>", "<a\x00@b>"]),
)


@FUZZ
@given(address_text, st.booleans(), st.sampled_from([SENDER, RECIPIENT]), st.booleans())
def test_address_parser_raises_only_address_error_and_round_trips(text, smtputf8, role, strict):
    tried("address_parser")
    try:
        path = parse_path(text, allow_smtputf8=smtputf8, role=role, strict=strict)
    except AddressError as error:
        assert error.code == 501 and error.enhanced in ("5.1.7", "5.1.3")
        return
    assert isinstance(path, Path)
    assert not any(ord(char) < 0x20 for char in path.address), "controls never pass"
    # What we write back out is read back as the same address.
    again = parse_path(path.bracketed(), allow_smtputf8=smtputf8, role=role, strict=False)
    assert (again.local, again.domain) == (path.local, path.domain)


@FUZZ
@given(st.text(max_size=30))
def test_local_part_quoting_round_trips(local):
    tried("address_quoting")
    assert unquote_local_part(quote_local_part(local)) == local


@FUZZ
@given(st.text(max_size=60))
def test_split_path_never_loses_text(argument):
    tried("address_split")
    path, parameters = split_path(argument)
    stripped = argument.lstrip(" \t")
    assert stripped.startswith(path)
    assert parameters in stripped[len(path):]
