"""The client core: reply parsing, EHLO extensions, command bytes,
dot-stuffing, and every path through one mail transaction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from mailferry.protocol.smtp_client import (
    AUTH_CANCEL, DATA, QUIT, RSET, STARTTLS, ClientProtocolError, Extensions, ReplyReader,
    ServerReply, Transaction, auth_answer, auth_command, data_payload, decode_challenge,
    encode_xtext, hello_command, helo_command, mail_command, rcpt_command,
)
from mailferry.protocol.server_events import DECISIONS, NEED_DATA, MessageReceived, RcptTo
from mailferry.protocol.smtp_server import ServerConnection, ServerSettings


def reply(text: str) -> ServerReply:
    """One reply from its wire form; lines separated by "\\n"."""
    replies = ReplyReader().feed(text.replace("\n", "\r\n").encode() + b"\r\n")
    assert len(replies) == 1
    return replies[0]


def malformed(data: bytes, reader: ReplyReader | None = None) -> ClientProtocolError:
    reader = reader or ReplyReader()
    with pytest.raises(ClientProtocolError) as caught:
        reader.feed(data)
    return caught.value


# --- Reading replies ----------------------------------------------------------------------------

def test_one_line_reply():
    assert ReplyReader().feed(b"220 mx.example ESMTP Postfix\r\n") == [
        ServerReply(220, ("mx.example ESMTP Postfix",))]


def test_multi_line_reply_and_several_replies_in_one_feed():
    replies = ReplyReader().feed(b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
                                 b"250 2.1.0 Ok\r\n550 5.1.1 <a@b>: no\r\n")
    assert replies == [ServerReply(250, ("mx.example", "PIPELINING", "CHUNKING")),
                       ServerReply(250, ("2.1.0 Ok",)),
                       ServerReply(550, ("5.1.1 <a@b>: no",))]


def test_bare_lf_and_mixed_line_ends():
    replies = ReplyReader().feed(b"250-one\n250-two\r\n250 three\n354 go ahead\n")
    assert replies == [ServerReply(250, ("one", "two", "three")), ServerReply(354, ("go ahead",))]


def test_code_without_text_and_empty_texts():
    assert ReplyReader().feed(b"250\r\n250-\r\n250 \r\n") == [
        ServerReply(250, ("",)), ServerReply(250, ("", ""))]


def test_partial_data_waits():
    reader = ReplyReader()
    assert reader.feed(b"250-mx.exa") == []
    assert reader.in_reply
    assert reader.feed(b"mple\r\n250 SIZE") == []
    assert reader.feed(b" 1000\r") == []
    assert reader.feed(b"\n") == [ServerReply(250, ("mx.example", "SIZE 1000"))]
    assert not reader.in_reply
    assert reader.buffered_bytes == 0


def test_a_cr_at_the_end_of_one_feed_is_a_line_end_with_the_lf_of_the_next():
    reader = ReplyReader()
    assert reader.feed(b"250 a\r") == []
    assert reader.feed(b"\n250 b\n") == [ServerReply(250, ("a",)), ServerReply(250, ("b",))]


def test_only_a_final_cr_is_taken_off():
    assert ReplyReader().feed(b"250 a\rb\r\r\n") == [ServerReply(250, ("a\rb\r",))]


STREAM = (b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\n"
          b"250 8BITMIME\r\n250 2.1.0 Ok\r\n550-5.1.1 <a@b>: Recipient address rejected:\r\n"
          b"550 5.1.1 User unknown in virtual mailbox table\r\n354 End data\r\n"
          b"250 2.0.0 Ok: queued as 4Q1D\r\n221 2.0.0 Bye\r\n")
STREAM_REPLIES = [
    ServerReply(220, ("mx.example ESMTP",)),
    ServerReply(250, ("mx.example", "PIPELINING", "SIZE 10240000", "8BITMIME")),
    ServerReply(250, ("2.1.0 Ok",)),
    ServerReply(550, ("5.1.1 <a@b>: Recipient address rejected:",
                      "5.1.1 User unknown in virtual mailbox table")),
    ServerReply(354, ("End data",)),
    ServerReply(250, ("2.0.0 Ok: queued as 4Q1D",)),
    ServerReply(221, ("2.0.0 Bye",)),
]


def test_byte_by_byte():
    reader = ReplyReader()
    replies = []
    for offset in range(len(STREAM)):
        replies += reader.feed(STREAM[offset:offset + 1])
    assert replies == STREAM_REPLIES


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_any_split_gives_the_same_replies(cuts):
    reader = ReplyReader()
    replies = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in zip(bounds, bounds[1:]):
        replies += reader.feed(STREAM[start:end])
    assert replies == STREAM_REPLIES


wire_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                    max_size=30)


@given(st.lists(st.tuples(st.integers(200, 599), st.lists(wire_line, min_size=1, max_size=4),
                          st.sampled_from([b"\r\n", b"\n"])), min_size=1, max_size=5),
       st.data())
@hypothesis_settings(max_examples=200, deadline=None)
def test_what_is_written_is_read_back(specs, data):
    stream = b"".join(
        b"".join(f"{code}{'-' if number < len(lines) - 1 else ' '}{line}".encode() + ending
                 for number, line in enumerate(lines))
        for code, lines, ending in specs)
    cut = data.draw(st.integers(0, len(stream)))
    reader = ReplyReader(max_line_length=200)
    replies = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
    assert replies == [ServerReply(code, tuple(lines)) for code, lines, _ in specs]


def test_text_is_utf8_with_replacement():
    assert ReplyReader().feed("250 Grüße \xff".encode("utf-8", "surrogateescape") + b"\xff\r\n") == [
        ServerReply(250, ("Grüße \xff\ufffd",))]


@pytest.mark.parametrize("line", [
    b"hello", b"", b"25", b"25 x", b"2500 x", b"250x", b"250:x", b"250\tx", b" 250 x",
    b"abc def", b"199 x", b"600 x", b"099 x", b"000", "２５０ x".encode(), b"+OK POP3 ready",
])
def test_malformed_lines(line):
    error = malformed(line + b"\r\n")
    assert str(error).startswith("malformed reply from server: ")


def test_malformed_text_is_short_and_quoted():
    assert str(malformed(b"xyz\r\n")) == "malformed reply from server: 'xyz'"
    assert str(malformed(b"\x1b[31mred\r\n")) == "malformed reply from server: '\\x1b[31mred'"
    long_error = str(malformed(b"x" * 500 + b"\r\n"))
    assert long_error == "malformed reply from server: '" + "x" * 100 + "'..."


def test_continuation_with_another_code():
    error = malformed(b"250-mx.example\r\n251 PIPELINING\r\n")
    assert str(error) == "malformed reply from server: '251 PIPELINING' (continues a 250 reply)"


def test_replies_before_the_bad_line_come_with_the_error():
    error = malformed(b"250 2.1.5 Ok\r\n354 go\r\ngarbage\r\n250 not read\r\n")
    assert error.replies == (ServerReply(250, ("2.1.5 Ok",)), ServerReply(354, ("go",)))


def test_a_broken_reader_stays_broken():
    reader = ReplyReader()
    malformed(b"250 ok\r\nbad\r\n", reader)
    error = malformed(b"250 fine\r\n", reader)
    assert str(error) == "malformed reply from server: 'bad'"
    assert error.replies == ()
    assert reader.buffered_bytes == 0


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_longest_line_allowed(ending):
    line = b"250 " + b"x" * 16
    assert ReplyReader(max_line_length=20).feed(line + ending) == [ServerReply(250, ("x" * 16,))]
    assert "longer than 20 bytes" in str(malformed(line + b"y" + ending, ReplyReader(max_line_length=20)))


def test_an_endless_line_is_refused_before_it_ends():
    reader = ReplyReader(max_line_length=20)
    assert reader.feed(b"250 " + b"x" * 16 + b"\r") == []        # 20 bytes and a CR: may still end
    assert reader.buffered_bytes == 21
    with pytest.raises(ClientProtocolError, match="longer than 20 bytes"):
        reader.feed(b"x")


def test_the_buffer_stays_bounded_while_lines_keep_coming():
    reader = ReplyReader(max_line_length=100, max_lines=2000)
    assert reader.feed(b"250-") == []
    for _ in range(1000):
        assert reader.feed(b"x" * 50 + b"\r\n250-") == []
        assert reader.buffered_bytes == 4
    [final] = reader.feed(b"x\r\n250 end\r\n")
    assert final.lines == ("x" * 50,) * 1000 + ("x", "end")


def test_too_many_lines():
    reader = ReplyReader(max_lines=3)
    assert reader.feed(b"250-a\r\n250-b\r\n250 c\r\n") == [ServerReply(250, ("a", "b", "c"))]
    assert str(malformed(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n", ReplyReader(max_lines=3))) \
        == "reply from server has more than 3 lines"


class CountingBuffer(bytearray):
    """A receive buffer that counts the bytes its find() looks at."""

    examined = 0

    def find(self, sub, start=0, *rest):
        found = super().find(sub, start, *rest)
        self.examined += (len(self) if found < 0 else found + len(sub)) - start
        return found


def test_no_byte_is_searched_twice():
    reader = ReplyReader(max_line_length=5000)
    reader._buffer = buffer = CountingBuffer()
    stream = b"250-" + b"x" * 3000 + b"\r\n250 " + b"y" * 3000 + b"\r\n"
    replies = []
    for offset in range(0, len(stream), 7):
        replies += reader.feed(stream[offset:offset + 7])
    assert [len(line) for line in replies[0].lines] == [3000, 3000]
    assert buffer.examined == len(stream)


# --- ServerReply --------------------------------------------------------------------------------

@pytest.mark.parametrize("wire, enhanced", [
    ("550 5.1.1 <a@b>: Recipient address rejected", "5.1.1"),
    ("250 2.0.0 Ok: queued as 4Q1D", "2.0.0"),
    ("451 4.7.1 Try again later", "4.7.1"),
    ("250 2.0.0", "2.0.0"),
    ("552 5.3.4 Message size exceeds fixed limit", "5.3.4"),
    ("554 5.123.456 long parts", "5.123.456"),
    ("250 5.1.1 class differs from the code", ""),
    ("550 4.1.1 class differs from the code", ""),
    ("354 3.0.0 no such class", ""),
    ("550 5.1.1234 detail too long", ""),
    ("550 5.1.1<a@b> no space", ""),
    ("550 5.1 short", ""),
    ("550 x 5.1.1", ""),
    ("550 User unknown", ""),
    ("550", ""),
    ("550-first line has none\n550 5.1.1 second line does", ""),
])
def test_enhanced_code(wire, enhanced):
    assert reply(wire).enhanced == enhanced


def test_text_drops_the_repeated_enhanced_code():
    multi = reply("550-5.7.1 Service unavailable;\n550-5.7.1\n550 5.7.1 Client host [192.0.2.1] blocked")
    assert multi.enhanced == "5.7.1"
    assert multi.text == "Service unavailable;  Client host [192.0.2.1] blocked"
    assert str(multi) == "550 5.7.1 Service unavailable;  Client host [192.0.2.1] blocked"


def test_text_keeps_what_is_not_the_reply_code():
    mixed = reply("450-4.2.0 <a@b>: Recipient address rejected:\n450 4.2.1 greylisted 5.7.1x")
    assert mixed.text == "<a@b>: Recipient address rejected: 4.2.1 greylisted 5.7.1x"
    mismatched = reply("250 5.1.1 Ok")
    assert mismatched.text == "5.1.1 Ok"
    assert str(mismatched) == "250 5.1.1 Ok"


@pytest.mark.parametrize("wire, logged", [
    ("550 5.1.1 <a@b>: Recipient address rejected", "550 5.1.1 <a@b>: Recipient address rejected"),
    ("250-mx.example\n250 PIPELINING", "250 mx.example PIPELINING"),
    ("220 mx.example ESMTP Postfix", "220 mx.example ESMTP Postfix"),
    ("250 2.0.0", "250 2.0.0"),
    ("250", "250"),
])
def test_as_postfix_logs_it(wire, logged):
    assert str(reply(wire)) == logged


@pytest.mark.parametrize("code, positive, transient, permanent", [
    (220, True, False, False), (250, True, False, False), (354, True, False, False),
    (421, False, True, False), (452, False, True, False), (499, False, True, False),
    (500, False, False, True), (554, False, False, True),
])
def test_reply_classes(code, positive, transient, permanent):
    server_reply = ServerReply(code, ("x",))
    assert (server_reply.is_positive, server_reply.is_transient, server_reply.is_permanent) \
        == (positive, transient, permanent)


# --- Extensions ---------------------------------------------------------------------------------

POSTFIX_EHLO = """250-mx.example.com
250-PIPELINING
250-SIZE 10240000
250-VRFY
250-ETRN
250-STARTTLS
250-AUTH PLAIN LOGIN
250-AUTH=PLAIN LOGIN
250-ENHANCEDSTATUSCODES
250-8BITMIME
250-DSN
250-SMTPUTF8
250 CHUNKING"""

DOVECOT_SUBMISSION_EHLO = """250-submission.example.org
250-8BITMIME
250-AUTH PLAIN LOGIN
250-BURL imap
250-CHUNKING
250-ENHANCEDSTATUSCODES
250-SIZE
250 PIPELINING"""


def test_postfix_extensions():
    assert Extensions.from_reply(reply(POSTFIX_EHLO)) == Extensions(
        pipelining=True, starttls=True, chunking=True, eightbitmime=True, dsn=True, smtputf8=True,
        enhancedstatuscodes=True, size=10240000, auth=("PLAIN", "LOGIN"))


def test_dovecot_submission_extensions():
    assert Extensions.from_reply(reply(DOVECOT_SUBMISSION_EHLO)) == Extensions(
        pipelining=True, chunking=True, eightbitmime=True, enhancedstatuscodes=True, size=0,
        auth=("PLAIN", "LOGIN"))


def test_keywords_ignore_case_and_auth_lists_are_merged():
    extensions = Extensions.from_reply(reply(
        "250-mx\n250-pipelining\n250-Size 52428800\n250-auth=login cram-md5\n"
        "250-AUTH PLAIN Login XOAUTH2\n250-AUTH=\n250 starttls"))
    assert extensions == Extensions(pipelining=True, starttls=True, size=52428800,
                                    auth=("LOGIN", "CRAM-MD5", "PLAIN", "XOAUTH2"))


def test_the_first_line_is_the_server_name():
    assert Extensions.from_reply(reply("250-PIPELINING\n250 DSN")) == Extensions(dsn=True)


@pytest.mark.parametrize("wire, size", [
    ("250-mx\n250 SIZE", 0),
    ("250-mx\n250 SIZE 0", 0),
    ("250-mx\n250 SIZE unlimited", 0),
    ("250-mx\n250 SIZE ²", 0),
    ("250-mx\n250 SIZE 35882577", 35882577),
    ("250-mx\n250 8BITMIME", None),
    ("250 mx.example", None),
])
def test_size(wire, size):
    assert Extensions.from_reply(reply(wire)).size == size


def test_unknown_and_empty_lines_are_ignored():
    assert Extensions.from_reply(reply("250-mx\n250-XFORWARD NAME ADDR\n250-\n250-X-EXPS GSSAPI\n"
                                       "250 DSNX")) == Extensions()


# --- Commands -----------------------------------------------------------------------------------

def test_hello_commands():
    assert hello_command("client.example", lmtp=False) == b"EHLO client.example\r\n"
    assert hello_command("client.example", lmtp=True) == b"LHLO client.example\r\n"
    assert helo_command("[192.0.2.1]") == b"HELO [192.0.2.1]\r\n"


def test_constant_commands():
    assert (STARTTLS, RSET, QUIT, DATA, AUTH_CANCEL) == (
        b"STARTTLS\r\n", b"RSET\r\n", b"QUIT\r\n", b"DATA\r\n", b"*\r\n")


def test_auth_commands():
    assert auth_command("PLAIN", b"\0user\0pass") == b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
    assert auth_command("PLAIN", b"") == b"AUTH PLAIN =\r\n"
    assert auth_command("LOGIN", None) == b"AUTH LOGIN\r\n"
    assert auth_answer(b"user@example.com") == b"dXNlckBleGFtcGxlLmNvbQ==\r\n"
    assert auth_answer(b"") == b"\r\n"


@pytest.mark.parametrize("wire, challenge", [
    ("334 VXNlcm5hbWU6", b"Username:"),
    ("334 UGFzc3dvcmQ6", b"Password:"),
    ("334 ", b""),
    ("334", b""),
    ("334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+",
     b"<1896.697170952@postoffice.reston.mci.net>"),
])
def test_decode_challenge(wire, challenge):
    assert decode_challenge(reply(wire)) == challenge


@pytest.mark.parametrize("wire", ["334 not base64!", "334 VXNlcm5hbWU", "334 VXNl cm5h"])
def test_malformed_challenge(wire):
    with pytest.raises(ClientProtocolError, match="^malformed SASL challenge from server: '"):
        decode_challenge(reply(wire))


def test_mail_command():
    assert mail_command("a@example.com") == b"MAIL FROM:<a@example.com>\r\n"
    assert mail_command("") == b"MAIL FROM:<>\r\n"
    assert mail_command("<>") == b"MAIL FROM:<>\r\n"
    assert mail_command("a@example.com", size=123, body="8BITMIME", ret="HDRS", envid="QID.1",
                        smtputf8=True) == \
        b"MAIL FROM:<a@example.com> SIZE=123 BODY=8BITMIME RET=HDRS ENVID=QID.1 SMTPUTF8\r\n"
    assert mail_command("", size=0, ret="FULL") == b"MAIL FROM:<> SIZE=0 RET=FULL\r\n"
    assert mail_command("josé@exämple.com", smtputf8=True) == \
        "MAIL FROM:<josé@exämple.com> SMTPUTF8\r\n".encode()


def test_envid_goes_out_as_xtext():
    assert mail_command("", envid="a b+c=d") == b"MAIL FROM:<> ENVID=a+20b+2Bc+3Dd\r\n"


def test_rcpt_command():
    assert rcpt_command("b@example.com") == b"RCPT TO:<b@example.com>\r\n"
    assert rcpt_command("b@example.com", notify="SUCCESS,FAILURE", orcpt="rfc822;b+2Bx@example.com") \
        == b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\n"
    assert rcpt_command("b@example.com", notify="NEVER") == b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"


@pytest.mark.parametrize("build", [
    lambda: mail_command("a@b>\r\nRCPT TO:<victim@example.com"),
    lambda: rcpt_command("b@example.com", orcpt="rfc822;x\nDATA"),
    lambda: hello_command("client\r", lmtp=False),
    lambda: auth_command("PLAIN\0", None),
])
def test_no_command_can_carry_a_line_end(build):
    with pytest.raises(ValueError):
        build()


def test_mail_size_is_not_negative():
    with pytest.raises(ValueError):
        mail_command("a@b", size=-1)


@pytest.mark.parametrize("text, xtext", [
    ("plain-id.123@host", "plain-id.123@host"),
    ("+", "+2B"), ("=", "+3D"), (" ", "+20"), ("\t", "+09"), ("é", "+C3+A9"), ("~!", "~!"),
])
def test_encode_xtext(text, xtext):
    assert encode_xtext(text) == xtext


# --- Dot-stuffing -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, payload", [
    (b"", b".\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
    (b".hidden\r\n", b"..hidden\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b".\r\n.\r\n.\r\n", b"..\r\n..\r\n..\r\n.\r\n"),
    (b"..x\r\n...\r\n", b"...x\r\n....\r\n.\r\n"),
    (b"a.b\r\n .c\r\n", b"a.b\r\n .c\r\n.\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
    (b"a\r\n\r\n.", b"a\r\n\r\n..\r\n.\r\n"),
])
def test_data_payload(content, payload):
    assert data_payload(content) == payload


def stuffed_line_by_line(content: bytes) -> bytes:
    """The obvious per-line version, as the reference."""
    if not content:
        return b".\r\n"
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    lines = content[:-2].split(b"\r\n")
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


crlf_content = st.lists(st.sampled_from([b".", b"..", b"\r\n", b"a", b" ", b"\r", b"\n", b"x.y"]),
                        max_size=30).map(b"".join)


@given(crlf_content)
@hypothesis_settings(max_examples=500, deadline=None)
def test_data_payload_matches_the_line_by_line_version(content):
    assert data_payload(content) == stuffed_line_by_line(content)


@pytest.mark.parametrize("content", [
    b"Subject: x\r\n\r\nbody\r\n",
    b".\r\n",
    b".first\r\n.\r\n..\r\nlast",
    b"\r\n.\r\n\r\n",
    b"x" * 100000 + b"\r\n." * 1000 + b"\r\n",
])
def test_our_server_reads_back_what_was_stuffed(content):
    conn = ServerConnection(ServerSettings(hostname="mx.example"))
    conn.greeting()
    received = []
    for data in (b"EHLO c.example\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@mx.example>\r\n",
                 DATA, data_payload(content)):
        conn.receive(data)
        while (event := conn.next_event()) is not NEED_DATA:
            if isinstance(event, MessageReceived):
                received.append(event.content)
                conn.accept_message("QID")
            elif isinstance(event, DECISIONS):
                conn.accept()
    expected = content if content.endswith(b"\r\n") else content + b"\r\n"
    assert received == [expected]
    assert conn.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"
                                        b"250 2.0.0 Ok: queued as QID\r\n")


# --- Transactions -------------------------------------------------------------------------------

MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPTS = [b"RCPT TO:<r1@example.net>\r\n", b"RCPT TO:<r2@example.net>\r\n", b"RCPT TO:<r3@example.net>\r\n"]
PAYLOAD = b"Subject: hi\r\n\r\nbody\r\n.\r\n"

MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
QUEUED = "250 2.0.0 Ok: queued as 4Q1D"


def new(recipients: int = 2, *, pipelining: bool, lmtp: bool = False) -> Transaction:
    return Transaction(MAIL, RCPTS[:recipients], PAYLOAD, pipelining=pipelining, lmtp=lmtp)


def converse(txn: Transaction, first: bytes, script: list[tuple[str, bytes]]) -> None:
    """A dialog script: the bytes start() sends, then per reply what goes out."""
    assert txn.start() == first
    for number, (wire, expected) in enumerate(script):
        assert not txn.done, f"done before reply {number}: {wire}"
        assert txn.receive(reply(wire)) == expected, f"after reply {number}: {wire}"
    assert txn.done


def results(txn: Transaction) -> list[tuple[str, str] | None]:
    return [None if result is None else (str(result[0]), result[1]) for result in txn.results]


def pipelined_start(recipients: int = 2) -> bytes:
    return MAIL + b"".join(RCPTS[:recipients]) + b"DATA\r\n"


def test_smtp_one_by_one_all_accepted():
    txn = new(pipelining=False)
    converse(txn, MAIL, [(MAIL_OK, RCPTS[0]), (RCPT_OK, RCPTS[1]), (RCPT_OK, DATA),
                         (GO_AHEAD, PAYLOAD), (QUEUED, b"")])
    assert results(txn) == [(QUEUED, "end of DATA")] * 2
    assert (txn.needs_reset, txn.session_usable) == (False, True)


def test_smtp_pipelined_all_accepted():
    txn = new(pipelining=True)
    converse(txn, pipelined_start(), [(MAIL_OK, b""), (RCPT_OK, b""), (RCPT_OK, b""),
                                      (GO_AHEAD, PAYLOAD), (QUEUED, b"")])
    assert results(txn) == [(QUEUED, "end of DATA")] * 2
    assert (txn.needs_reset, txn.session_usable) == (False, True)


def test_rcpt_accepted_with_other_2xx_codes():
    txn = new(pipelining=False)
    converse(txn, MAIL, [(MAIL_OK, RCPTS[0]), ("251 2.1.5 User not local; will forward", RCPTS[1]),
                         ("252 2.1.5 Cannot VRFY user", DATA), (GO_AHEAD, PAYLOAD), (QUEUED, b"")])
    assert results(txn) == [(QUEUED, "end of DATA")] * 2


@pytest.mark.parametrize("pipelining", [False, True])
def test_lmtp_one_reply_per_accepted_recipient(pipelining):
    txn = new(3, pipelining=pipelining, lmtp=True)
    if pipelining:
        first, rcpt_script = pipelined_start(3), [(MAIL_OK, b""), (RCPT_OK, b""),
                                                  ("550 5.1.1 <r2@example.net>: User unknown", b""),
                                                  (RCPT_OK, b""), (GO_AHEAD, PAYLOAD)]
    else:
        first, rcpt_script = MAIL, [(MAIL_OK, RCPTS[0]), (RCPT_OK, RCPTS[1]),
                                    ("550 5.1.1 <r2@example.net>: User unknown", RCPTS[2]),
                                    (RCPT_OK, DATA), (GO_AHEAD, PAYLOAD)]
    converse(txn, first, rcpt_script + [("250 2.0.0 <r1@example.net> Saved", b""),
                                        ("452 4.2.2 <r3@example.net> Quota exceeded", b"")])
    assert results(txn) == [("250 2.0.0 <r1@example.net> Saved", "end of DATA"),
                            ("550 5.1.1 <r2@example.net>: User unknown", "RCPT TO"),
                            ("452 4.2.2 <r3@example.net> Quota exceeded", "end of DATA")]
    assert (txn.needs_reset, txn.session_usable) == (False, True)


def test_lmtp_waits_for_every_recipient_reply():
    txn = new(2, pipelining=True, lmtp=True)
    txn.start()
    for wire in (MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD, "250 2.0.0 <r1@example.net> Saved"):
        txn.receive(reply(wire))
    assert not txn.done
    assert results(txn) == [("250 2.0.0 <r1@example.net> Saved", "end of DATA"), None]
    txn.receive(reply("250 2.0.0 <r2@example.net> Saved"))
    assert txn.done


def test_mail_refused_one_by_one_sends_nothing_more():
    txn = new(pipelining=False)
    converse(txn, MAIL, [("553 5.7.1 <a@example.com>: Sender address rejected: not owned", b"")])
    assert results(txn) == [("553 5.7.1 <a@example.com>: Sender address rejected: not owned",
                             "MAIL FROM")] * 2
    assert (txn.needs_reset, txn.session_usable) == (True, True)


def test_mail_refused_pipelined_reads_the_rest():
    txn = new(pipelining=True)
    converse(txn, pipelined_start(), [("451 4.3.0 Temporary failure", b""),
                                      ("503 5.5.1 Error: need MAIL command", b""),
                                      ("503 5.5.1 Error: need MAIL command", b""),
                                      ("503 5.5.1 Error: need RCPT command", b"")])
    assert results(txn) == [("451 4.3.0 Temporary failure", "MAIL FROM")] * 2
    assert (txn.needs_reset, txn.session_usable) == (True, True)


def test_mail_refused_pipelined_and_354_anyway():
    txn = new(pipelining=True)
    converse(txn, pipelined_start(), [("550 5.7.1 No", b""), ("250 2.1.5 Ok", b""), ("250 2.1.5 Ok", b""),
                                      (GO_AHEAD, b".\r\n"), ("554 5.5.1 Error: no valid recipients", b"")])
    assert results(txn) == [("550 5.7.1 No", "MAIL FROM")] * 2
    assert (txn.needs_reset, txn.session_usable) == (True, True)


def test_some_recipients_refused_one_by_one():
    txn = new(3, pipelining=False)
    converse(txn, MAIL, [(MAIL_OK, RCPTS[0]), ("450 4.2.0 <r1@example.net>: greylisted", RCPTS[1]),
                         (RCPT_OK, RCPTS[2]), ("550 5.1.1 <r3@example.net>: unknown", DATA),
                         (GO_AHEAD, PAYLOAD), (QUEUED, b"")])
    assert results(txn) == [("450 4.2.0 <r1@example.net>: greylisted", "RCPT TO"),
                            (QUEUED, "end of DATA"),
                            ("550 5.1.1 <r3@example.net>: unknown", "RCPT TO")]
    assert (txn.needs_reset, txn.session_usable) == (False, True)


def test_no_recipient_accepted_one_by_one_sends_no_data():
    txn = new(pipelining=False)
    converse(txn, MAIL, [(MAIL_OK, RCPTS[0]), ("550 5.1.1 unknown", RCPTS[1]), ("450 4.7.1 later", b"")])
    assert results(txn) == [("550 5.1.1 unknown", "RCPT TO"), ("450 4.7.1 later", "RCPT TO")]
    assert (txn.needs_reset, txn.session_usable) == (True, True)


def test_no_recipient_accepted_pipelined():
    txn = new(pipelining=True)
    converse(txn, pipelined_start(), [(MAIL_OK, b""), ("550 5.1.1 unknown", b""),
                                      ("450 4.7.1 later", b""),
                                      ("554 5.5.1 Error: no valid recipients", b"")])
    assert results(txn) == [("550 5.1.1 unknown", "RCPT TO"), ("450 4.7.1 later", "RCPT TO")]
    assert (txn.needs_reset, txn.session_usable) == (True, True)


@pytest.mark.parametrize("lmtp", [False, True])
def test_no_recipient_accepted_pipelined_but_354(lmtp):
    txn = new(pipelining=True, lmtp=lmtp)
    converse(txn, pipelined_start(), [(MAIL_OK, b""), ("550 5.1.1 unknown", b""),
                                      ("550 5.1.1 unknown", b""),
                                      (GO_AHEAD, b".\r\n"), ("250 2.0.0 Ok: queued as ignored", b"")])
    assert results(txn) == [("550 5.1.1 unknown", "RCPT TO")] * 2
    assert not txn.payload_sent
    assert (txn.needs_reset, txn.session_usable) == (True, True)


@pytest.mark.parametrize("pipelining", [False, True])
def test_data_refused(pipelining):
    txn = new(3, pipelining=pipelining)
    refusal = "554 5.5.1 Error: no valid recipients"
    if pipelining:
        converse(txn, pipelined_start(3), [(MAIL_OK, b""), (RCPT_OK, b""), ("550 5.1.1 unknown", b""),
                                           (RCPT_OK, b""), (refusal, b"")])
    else:
        converse(txn, MAIL, [(MAIL_OK, RCPTS[0]), (RCPT_OK, RCPTS[1]), ("550 5.1.1 unknown", RCPTS[2]),
                             (RCPT_OK, DATA), (refusal, b"")])
    assert results(txn) == [(refusal, "DATA"), ("550 5.1.1 unknown", "RCPT TO"), (refusal, "DATA")]
    assert (txn.needs_reset, txn.session_usable) == (True, True)


@pytest.mark.parametrize("pipelining", [False, True])
def test_end_of_data_refused_smtp(pipelining):
    txn = new(pipelining=pipelining)
    spam = "550 5.7.1 Message rejected as spam"
    script = ([(MAIL_OK, b""), (RCPT_OK, b""), (RCPT_OK, b"")] if pipelining
              else [(MAIL_OK, RCPTS[0]), (RCPT_OK, RCPTS[1]), (RCPT_OK, DATA)])
    converse(txn, pipelined_start() if pipelining else MAIL, script + [(GO_AHEAD, PAYLOAD), (spam, b"")])
    assert results(txn) == [(spam, "end of DATA")] * 2
    assert (txn.needs_reset, txn.session_usable) == (False, True)


CLOSING = "421 4.3.2 mx.example Service shutting down"


@pytest.mark.parametrize("pipelining", [False, True])
def test_421_to_mail(pipelining):
    txn = new(pipelining=pipelining)
    txn.start()
    assert txn.receive(reply(CLOSING)) == b""
    assert txn.done
    assert results(txn) == [(CLOSING, "MAIL FROM")] * 2
    assert not txn.session_usable


@pytest.mark.parametrize("pipelining", [False, True])
def test_421_to_rcpt_decides_every_recipient_not_yet_decided(pipelining):
    txn = new(3, pipelining=pipelining)
    txn.start()
    txn.receive(reply(MAIL_OK))
    txn.receive(reply(RCPT_OK))
    txn.receive(reply("550 5.1.1 unknown"))
    assert txn.receive(reply(CLOSING)) == b""
    assert txn.done
    assert results(txn) == [(CLOSING, "RCPT TO"), ("550 5.1.1 unknown", "RCPT TO"), (CLOSING, "RCPT TO")]
    assert not txn.session_usable


def test_421_to_data():
    txn = new(pipelining=True)
    txn.start()
    for wire in (MAIL_OK, RCPT_OK, "450 4.1.1 later"):
        txn.receive(reply(wire))
    txn.receive(reply(CLOSING))
    assert txn.done
    assert results(txn) == [(CLOSING, "DATA"), ("450 4.1.1 later", "RCPT TO")]
    assert not txn.session_usable


@pytest.mark.parametrize("lmtp", [False, True])
def test_421_to_end_of_data(lmtp):
    txn = new(3, pipelining=True, lmtp=lmtp)
    txn.start()
    for wire in (MAIL_OK, RCPT_OK, RCPT_OK, RCPT_OK, GO_AHEAD):
        txn.receive(reply(wire))
    if lmtp:
        txn.receive(reply("250 2.0.0 Saved"))
    txn.receive(reply(CLOSING))
    assert txn.done
    first = ("250 2.0.0 Saved", "end of DATA") if lmtp else (CLOSING, "end of DATA")
    assert results(txn) == [first, (CLOSING, "end of DATA"), (CLOSING, "end of DATA")]
    assert not txn.session_usable


def test_421_while_reading_replies_after_mail_was_refused():
    txn = new(pipelining=True)
    txn.start()
    txn.receive(reply("550 5.7.1 No"))
    txn.receive(reply(CLOSING))
    assert txn.done
    assert results(txn) == [("550 5.7.1 No", "MAIL FROM")] * 2
    assert not txn.session_usable


def test_421_after_the_empty_message():
    txn = new(1, pipelining=True)
    txn.start()
    for wire in (MAIL_OK, "550 5.1.1 unknown", GO_AHEAD):
        txn.receive(reply(wire))
    assert txn.stage == "end of DATA"
    txn.receive(reply(CLOSING))
    assert txn.done
    assert results(txn) == [("550 5.1.1 unknown", "RCPT TO")]
    assert not txn.session_usable


def test_a_reply_after_the_end_is_an_error():
    txn = new(1, pipelining=False)
    converse(txn, MAIL, [("550 5.7.1 No", b"")])
    with pytest.raises(ClientProtocolError, match="^unexpected reply from server after the transaction: "
                                                  "'250 2.0.0 Ok'$"):
        txn.receive(reply("250 2.0.0 Ok"))


@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("script, stage", [
    ([GO_AHEAD], "MAIL FROM"),
    ([MAIL_OK, GO_AHEAD], "RCPT TO"),
    ([MAIL_OK, RCPT_OK, RCPT_OK, "250 2.0.0 Ok"], "DATA"),
    ([MAIL_OK, RCPT_OK, RCPT_OK, "334 x"], "DATA"),
    ([MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD, GO_AHEAD], "end of DATA"),
])
def test_replies_of_the_wrong_class_break_the_session(script, stage, pipelining):
    txn = new(pipelining=pipelining)
    txn.start()
    for wire in script[:-1]:
        txn.receive(reply(wire))
    with pytest.raises(ClientProtocolError, match=f"^unexpected reply from server to {stage} command: "):
        txn.receive(reply(script[-1]))
    assert txn.done
    assert not txn.session_usable
    assert txn.results == [None, None]     # undecided: to be deferred


def test_decided_recipients_keep_their_result_after_a_protocol_error():
    txn = new(pipelining=True, lmtp=True)
    txn.start()
    for wire in (MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD, "250 2.0.0 Saved"):
        txn.receive(reply(wire))
    with pytest.raises(ClientProtocolError):
        txn.receive(reply(GO_AHEAD))
    assert results(txn) == [("250 2.0.0 Saved", "end of DATA"), None]


def test_stage_and_payload_sent_follow_the_dialog():
    txn = new(1, pipelining=False)
    assert txn.start() == MAIL
    progress = [(txn.stage, txn.payload_sent)]
    for wire in (MAIL_OK, RCPT_OK, GO_AHEAD, QUEUED):
        txn.receive(reply(wire))
        progress.append((txn.stage, txn.payload_sent))
    assert progress == [("MAIL FROM", False), ("RCPT TO", False), ("DATA", False),
                        ("end of DATA", True), (None, True)]


def test_misuse():
    with pytest.raises(ValueError):
        Transaction(MAIL, [], PAYLOAD, pipelining=True, lmtp=False)
    txn = new(pipelining=True)
    with pytest.raises(RuntimeError):
        txn.receive(reply(MAIL_OK))
    txn.start()
    with pytest.raises(RuntimeError):
        txn.start()


@pytest.mark.parametrize("content", [b"Subject: x\r\n\r\n.dot\r\n", b".\r\nno final line end"])
def test_against_our_own_server(content):
    """Client and server sans-IO cores talking to each other, pipelined."""
    server = ServerConnection(ServerSettings(hostname="mx.example"))
    reader = ReplyReader()
    received = []

    def exchange(data: bytes) -> list[ServerReply]:
        server.receive(data)
        while (event := server.next_event()) is not NEED_DATA:
            if isinstance(event, MessageReceived):
                received.append(event.content)
                server.accept_message("QID")
            elif isinstance(event, DECISIONS):
                if isinstance(event, RcptTo) and event.path.address == "r2@example.net":
                    server.reject(550, "5.1.1", "<r2@example.net>: Recipient address rejected")
                else:
                    server.accept()
        return reader.feed(server.data_to_send())

    assert [r.code for r in reader.feed(server.greeting())] == [220]
    extensions = Extensions.from_reply(exchange(hello_command("client.example", lmtp=False))[0])
    assert extensions.pipelining
    txn = Transaction(mail_command("a@example.com", size=len(content)),
                      [rcpt_command("r1@example.net"), rcpt_command("r2@example.net")],
                      data_payload(content), pipelining=extensions.pipelining, lmtp=False)
    outgoing = txn.start()
    while not txn.done:
        outgoing = b"".join(txn.receive(server_reply) for server_reply in exchange(outgoing))
    assert received == [content if content.endswith(b"\r\n") else content + b"\r\n"]
    assert results(txn) == [("250 2.0.0 Ok: queued as QID", "end of DATA"),
                            ("550 5.1.1 <r2@example.net>: Recipient address rejected", "RCPT TO")]
    assert (txn.needs_reset, txn.session_usable) == (False, True)
