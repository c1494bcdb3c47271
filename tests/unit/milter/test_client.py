"""The milter client against scripted milters on loopback: negotiation, the steps a milter asks
to skip or not to answer, and Postfix's default action when a milter is down, slow or speaks
garbage (never a crash). The real-milter tests are in tests/integration/test_milter.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from mailferry.milter import protocol as p
from mailferry.milter.client import HOLD, REJECT, TEMPFAIL, MilterConnection, Verdict
from mailferry.milter.edits import EditableMessage
from mailferry.milter.session import MilterSession
from mailferry.milter.settings import MilterSettings, MilterSpec

Script = Callable[[bytes, bytes], bytes | None]


def optneg_reply(version: int = 6, actions: int = p.MY_ACTIONS, protocol: int = 0) -> bytes:
    return p.encode_optneg_reply(p.Negotiated(version, actions, protocol))


CONTINUE = p.encode_reply(p.Reply(p.SMFIR_CONTINUE))
HANG_UP = b"hang up"


class ScriptedMilter:
    """A loopback server that answers each packet with script(command, data) (None: no answer)."""

    def __init__(self, script: Script):
        self.script = script
        self.received: list[tuple[bytes, bytes]] = []
        self.hung_up = asyncio.Event()   # the client's connection ended (all it sent was read)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                body = await reader.readexactly(length)
                self.received.append((body[:1], body[1:]))
                answer = self.script(body[:1], body[1:])
                if answer == HANG_UP:
                    return
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.hung_up.set()

    def commands(self) -> list[bytes]:
        return [command for command, _ in self.received]


def run(script: Script, scenario, **spec):
    """Start a scripted milter, run scenario(connection, milter) and return what it returns, plus warnings."""
    warnings: list[str] = []

    async def main():
        milter = ScriptedMilter(script)
        server = await asyncio.start_server(milter.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = MilterConnection(MilterSpec(f"inet:127.0.0.1:{port}", **spec), warnings.append)
        try:
            return await scenario(connection, milter), warnings
        finally:
            await connection.close()
            server.close()
    return asyncio.run(main())


def answering(**answers: bytes) -> Script:
    """OPTNEG gets a v6 reply; a command named in `answers` gets that; others CONTINUE (MACRO: nothing)."""
    names = {value: key for key, value in vars(p).items() if key.startswith("SMFIC_")}

    def script(command: bytes, data: bytes) -> bytes | None:
        if command == p.SMFIC_OPTNEG:
            return answers.get("SMFIC_OPTNEG", optneg_reply())
        if command in (p.SMFIC_MACRO, p.SMFIC_QUIT, p.SMFIC_ABORT):
            return None
        return answers.get(names[command], CONTINUE)
    return script


async def helo(connection: MilterConnection, milter=None) -> Verdict | None:
    await connection.open()
    return await connection.event(p.SMFIC_HELO, p.encode_helo("client.example"), [("j", "mx.example")])


def test_negotiation_offers_all_actions_and_the_v6_steps():
    verdict, warnings = run(answering(), helo)
    assert verdict is None and warnings == []


def test_the_offered_version_and_steps_follow_milter_protocol():
    seen = []

    async def scenario(connection, milter):
        await connection.open()
        seen.append(p.parse_command(*milter.received[0]))
    run(answering(SMFIC_OPTNEG=optneg_reply(version=2)), scenario, protocol=2)
    assert seen == [(2, p.MY_ACTIONS, p.V2_PROTOCOL)]


def test_a_reply_code_is_the_verdict_with_percent_signs_undoubled():
    code = p.encode_reply(p.Reply(p.SMFIR_REPLYCODE, ("550 5.7.1 100%% spam",)))
    verdict, _ = run(answering(SMFIC_HELO=code), helo)
    assert verdict == Verdict(REJECT, "550 5.7.1 100% spam")


def test_a_reject_at_helo_answers_every_later_command():
    async def scenario(connection, milter):
        first = await helo(connection)
        later = await connection.event(p.SMFIC_MAIL, p.encode_mail(["<a@b>"]), [])
        return first, later, milter.commands()
    (first, later, commands), _ = run(answering(SMFIC_HELO=p.encode_reply(p.Reply(p.SMFIR_REJECT))), scenario)
    assert first == later == Verdict(REJECT, "550 5.7.1 Command rejected")
    assert p.SMFIC_MAIL not in commands


def test_steps_the_milter_declined_are_not_sent_but_their_macros_are():
    optneg = optneg_reply(protocol=p.SMFIP_NOHELO)

    async def scenario(connection, milter):
        verdict = await helo(connection)
        await connection.close()   # QUIT: everything before it has been sent
        await asyncio.wait_for(milter.hung_up.wait(), 30)
        return verdict, milter.commands()
    (verdict, commands), _ = run(answering(SMFIC_OPTNEG=optneg), scenario)
    assert verdict is None
    assert commands == [p.SMFIC_OPTNEG, p.SMFIC_MACRO, p.SMFIC_QUIT]


def test_steps_without_a_reply_do_not_wait_for_one():
    optneg = optneg_reply(protocol=p.SMFIP_NR_HELO)
    # The milter would answer REJECT, but it said it does not reply to HELO: nothing is read.
    verdict, warnings = run(answering(SMFIC_OPTNEG=optneg), helo)
    assert verdict is None and warnings == []


@pytest.mark.parametrize("action, expected", [
    ("tempfail", Verdict(TEMPFAIL, "451 4.7.1 Service unavailable - try again later")),
    ("reject", Verdict(REJECT, "550 5.5.0 Service unavailable")),
    ("accept", None),
    ("quarantine", Verdict(HOLD, reason="default_action")),
])
def test_garbage_gets_the_default_action(action, expected):
    garbage = b"\0\0\0\x03zzz"
    verdict, warnings = run(answering(SMFIC_HELO=garbage), helo, default_action=action)
    assert verdict == expected
    assert any("unknown reply code" in warning for warning in warnings)


def test_an_overlong_packet_gets_the_default_action_without_reading_it():
    verdict, warnings = run(answering(SMFIC_HELO=b"\x7f\xff\xff\xffy"), helo)
    assert verdict.kind == TEMPFAIL
    assert any("unreasonable packet length" in warning for warning in warnings)


def test_a_milter_that_hangs_up_at_negotiation_gets_the_default_action():
    verdict, warnings = run(lambda command, data: HANG_UP if command == p.SMFIC_OPTNEG else None, helo)
    assert verdict.kind == TEMPFAIL
    assert warnings == [warnings[0]]
    assert "can't read SMFIC_OPTNEG reply packet header" in warnings[0]


def test_a_silent_milter_times_out_to_the_default_action():
    verdict, warnings = run(answering(SMFIC_HELO=b""), helo, command_timeout=0.2, default_action="accept")
    assert verdict is None
    assert "can't read SMFIC_HELO reply packet header: Connection timed out" in warnings[0]


def test_a_newer_protocol_version_than_offered_is_refused():
    verdict, warnings = run(answering(SMFIC_OPTNEG=optneg_reply(version=6)), helo, protocol=4)
    assert verdict.kind == TEMPFAIL
    assert "protocol version 6 conflict with MTA protocol version 4" in warnings[0]


def test_a_milter_that_is_down_gets_the_default_action():
    warnings: list[str] = []

    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        connection = MilterConnection(MilterSpec(f"inet:127.0.0.1:{port}", default_action="reject"), warnings.append)
        return await helo(connection)
    verdict = asyncio.run(main())
    assert verdict == Verdict(REJECT, "550 5.5.0 Service unavailable")
    assert warnings[0].startswith("connect to Milter service inet:127.0.0.1:") and "Connection refused" in warnings[0]


def test_a_malformed_reply_code_is_a_configuration_error():
    bad = p.encode_reply(p.Reply(p.SMFIR_REPLYCODE, ("250 fine",)))
    verdict, warnings = run(answering(SMFIC_HELO=bad), helo)
    assert verdict == Verdict(TEMPFAIL, "451 4.3.5 Server configuration problem - try again later")
    assert "malformed reply: 250 fine" in warnings[0]


def content_session(script: Script, content: bytes):
    """Run the content phase of one message through a scripted milter; (outcome, milter, warnings)."""
    warnings: list[str] = []

    async def main():
        milter = ScriptedMilter(script)
        server = await asyncio.start_server(milter.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = MilterSettings((MilterSpec(f"inet:127.0.0.1:{port}"),), {p.SMFIC_EOH: ("i",)})
        session = MilterSession(settings, warnings.append, lambda name: "QID1" if name == "i" else None)
        try:
            await session.connect("client.example", "192.0.2.1", 1234)
            message = EditableMessage.parse(content, "a@example.test", ["b@example.test"], b" id QID1")
            return await session.message(message), milter
        finally:
            await session.close()
            server.close()
    outcome, milter = asyncio.run(main())
    return outcome, milter, warnings


CONTENT = (b"Received: from x by mx id QID1\r\nSubject: hi\r\nX-Long: one\r\n two\r\n\r\n"
           b"body line\r\n")


def test_headers_reach_the_milter_without_our_received_and_with_sendmail_spacing():
    outcome, milter, _ = content_session(answering(), CONTENT)
    headers = [p.parse_command(command, data) for command, data in milter.received if command == p.SMFIC_HEADER]
    assert headers == [("Subject", "hi"), ("X-Long", "one\n two")]
    body = [data for command, data in milter.received if command == p.SMFIC_BODY]
    assert body == [b"body line\r\n"]
    assert outcome.verdict is None


def test_modifications_at_end_of_message_are_applied_in_order():
    edits = b"".join(p.encode_reply(reply) for reply in [
        p.Reply(p.SMFIR_INSHEADER, (0, "DKIM-Signature", "v=1")),
        p.Reply(p.SMFIR_CHGHEADER, (1, "Subject", "changed")),
        p.Reply(p.SMFIR_ADDHEADER, ("X-Spam", "no")),
        p.Reply(p.SMFIR_REPLBODY, (b"new ",)), p.Reply(p.SMFIR_REPLBODY, (b"body\r\n",)),
        p.Reply(p.SMFIR_CHGFROM, ("<new@example.test>", "")),
        p.Reply(p.SMFIR_ADDRCPT, ("<c@example.test>",)),
        p.Reply(p.SMFIR_DELRCPT, ("<b@example.test>",)),
        p.Reply(p.SMFIR_CONTINUE)])
    outcome, _, warnings = content_session(answering(SMFIC_BODYEOB=edits), CONTENT)
    assert warnings == [] and outcome.verdict is None
    message = outcome.message
    assert message.content() == (b"DKIM-Signature: v=1\r\nReceived: from x by mx id QID1\r\nSubject: changed\r\n"
                                 b"X-Long: one\r\n two\r\nX-Spam: no\r\n\r\nnew body\r\n")
    assert message.sender == "new@example.test"
    assert [r.address for r in message.added_recipients] == ["c@example.test"]
    assert message.deleted_recipients == ["b@example.test"]


def test_a_quarantine_then_continue_is_a_hold():
    replies = p.encode_reply(p.Reply(p.SMFIR_QUARANTINE, ("looks odd",))) + CONTINUE
    outcome, _, _ = content_session(answering(SMFIC_BODYEOB=replies), CONTENT)
    assert outcome.verdict is None and outcome.hold_reason == "looks odd"


def test_a_modification_outside_end_of_message_is_a_protocol_error():
    outcome, _, warnings = content_session(
        answering(SMFIC_EOH=p.encode_reply(p.Reply(p.SMFIR_ADDHEADER, ("X", "y")))), CONTENT)
    assert outcome.verdict.kind == TEMPFAIL
    assert "unexpected filter response SMFIR_ADDHEADER after event SMFIC_EOH" in warnings[0]


def test_the_non_smtp_envelope_is_connect_helo_mail_rcpt_data_from_localhost():
    from mailferry.milter.session import non_smtp_macros, run_non_smtp_envelope

    async def main():
        milter = ScriptedMilter(answering())
        server = await asyncio.start_server(milter.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = MilterSettings((MilterSpec(f"inet:127.0.0.1:{port}"),),
                                  {p.SMFIC_CONNECT: ("{client_addr}",), p.SMFIC_MAIL: ("i",)})
        session = MilterSession(settings, print, non_smtp_macros("QID7", "a@x", lambda: "b@y", "mx.example"))
        try:
            return await run_non_smtp_envelope(session, "a@x", ["b@y", "c@y"]), milter
        finally:
            await session.close()
            server.close()
    verdict, milter = asyncio.run(main())
    assert verdict is None
    events = [(command, p.parse_command(command, data)) for command, data in milter.received
              if command not in (p.SMFIC_OPTNEG, p.SMFIC_QUIT)]
    assert events == [
        (p.SMFIC_MACRO, (b"C", [("{client_addr}", "127.0.0.1")])),
        (p.SMFIC_CONNECT, ("localhost", b"4", 0, "127.0.0.1")),
        (p.SMFIC_HELO, ("localhost",)),
        (p.SMFIC_MACRO, (b"M", [("i", "QID7")])),
        (p.SMFIC_MAIL, ("<a@x>",)),
        (p.SMFIC_RCPT, ("<b@y>",)),
        (p.SMFIC_RCPT, ("<c@y>",)),
        (p.SMFIC_DATA, ()),
    ]
