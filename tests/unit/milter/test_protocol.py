"""The milter wire codec: every command and every reply, both ways, and what is malformed."""

from __future__ import annotations

import struct

import pytest

from mailferry.milter import protocol as p


def one_packet(data: bytes) -> tuple[bytes, bytes]:
    reader = p.PacketReader()
    reader.feed(data)
    packet = reader.next_packet()
    assert packet is not None and reader.next_packet() is None
    return packet


def test_a_packet_is_length_command_data():
    assert p.packet(b"T") == b"\0\0\0\x01T"
    assert p.encode_helo("client.example") == struct.pack("!I", 16) + b"Hclient.example\0"


def test_optneg_both_ways():
    command, data = one_packet(p.encode_optneg(6, p.MY_ACTIONS, p.V6_PROTOCOL))
    assert command == p.SMFIC_OPTNEG
    assert p.parse_command(command, data) == (6, 0x1FF, p.V6_PROTOCOL)
    reply = p.Negotiated(6, p.SMFIF_ADDHDRS | p.SMFIF_CHGBODY, p.SMFIP_NOHELO | p.SMFIP_NR_HDR,
                         {p.SMFIM_CONNECT: ["j", "{daemon_name}"], p.SMFIM_EOM: ["i"]})
    command, data = one_packet(p.encode_optneg_reply(reply))
    assert p.parse_optneg(data) == reply


@pytest.mark.parametrize("encoded, command, fields", [
    (p.encode_macros(p.SMFIC_CONNECT, [("j", "mx.example"), ("{daemon_name}", "mx")]), p.SMFIC_MACRO,
     (b"C", [("j", "mx.example"), ("{daemon_name}", "mx")])),
    (p.encode_connect("client.example", "192.0.2.1", 40000, p.FAMILY_INET), p.SMFIC_CONNECT,
     ("client.example", b"4", 40000, "192.0.2.1")),
    (p.encode_connect("v6.example", "2001:db8::1", 25, p.FAMILY_INET6), p.SMFIC_CONNECT,
     ("v6.example", b"6", 25, "2001:db8::1")),
    (p.encode_connect("unknown", "", 0, p.FAMILY_UNKNOWN), p.SMFIC_CONNECT, ("unknown", b"U", 0, "")),
    (p.encode_helo("client.example"), p.SMFIC_HELO, ("client.example",)),
    (p.encode_mail(["<a@example.test>", "SIZE=10", "BODY=8BITMIME"]), p.SMFIC_MAIL,
     ("<a@example.test>", "SIZE=10", "BODY=8BITMIME")),
    (p.encode_rcpt(["<b@example.test>", "NOTIFY=NEVER"]), p.SMFIC_RCPT, ("<b@example.test>", "NOTIFY=NEVER")),
    (p.encode_header("Subject", "hello\n\tfolded"), p.SMFIC_HEADER, ("Subject", "hello\n\tfolded")),
    (p.encode_unknown("XYZZY plugh"), p.SMFIC_UNKNOWN, ("XYZZY plugh",)),
    (p.encode_simple(p.SMFIC_DATA), p.SMFIC_DATA, ()),
    (p.encode_simple(p.SMFIC_EOH), p.SMFIC_EOH, ()),
    (p.encode_simple(p.SMFIC_BODYEOB), p.SMFIC_BODYEOB, ()),
    (p.encode_simple(p.SMFIC_ABORT), p.SMFIC_ABORT, ()),
    (p.encode_simple(p.SMFIC_QUIT), p.SMFIC_QUIT, ()),
    (p.encode_simple(p.SMFIC_QUIT_NC), p.SMFIC_QUIT_NC, ()),
])
def test_every_command_reads_back(encoded, command, fields):
    got_command, data = one_packet(encoded)
    assert got_command == command
    assert p.parse_command(got_command, data) == fields


def test_a_body_goes_in_chunks_of_at_most_65535_octets():
    body = bytes(range(256)) * 600   # 153,600 octets
    chunks = p.encode_body_chunks(body)
    assert len(chunks) == 3
    payloads = [one_packet(chunk) for chunk in chunks]
    assert all(command == p.SMFIC_BODY and len(data) <= 65535 for command, data in payloads)
    assert b"".join(data for _, data in payloads) == body


@pytest.mark.parametrize("reply", [
    p.Reply(p.SMFIR_ACCEPT), p.Reply(p.SMFIR_CONTINUE), p.Reply(p.SMFIR_REJECT), p.Reply(p.SMFIR_TEMPFAIL),
    p.Reply(p.SMFIR_DISCARD), p.Reply(p.SMFIR_PROGRESS), p.Reply(p.SMFIR_SKIP), p.Reply(p.SMFIR_SHUTDOWN),
    p.Reply(p.SMFIR_REPLYCODE, ("550 5.7.1 go away",)),
    p.Reply(p.SMFIR_QUARANTINE, ("suspicious",)),
    p.Reply(p.SMFIR_ADDHEADER, ("X-Spam", "yes")),
    p.Reply(p.SMFIR_CHGHEADER, (2, "Subject", "new")),
    p.Reply(p.SMFIR_INSHEADER, (0, "DKIM-Signature", "v=1; a=rsa-sha256")),
    p.Reply(p.SMFIR_REPLBODY, (b"new body\r\n",)),
    p.Reply(p.SMFIR_ADDRCPT, ("<c@example.test>",)),
    p.Reply(p.SMFIR_ADDRCPT_PAR, ("<c@example.test>", "NOTIFY=NEVER")),
    p.Reply(p.SMFIR_DELRCPT, ("<b@example.test>",)),
    p.Reply(p.SMFIR_CHGFROM, ("<new@example.test>", "RET=HDRS")),
    p.Reply(p.SMFIR_SETSYMLIST, (p.SMFIM_ENVFROM, ["i", "{auth_authen}"])),
])
def test_every_reply_reads_back(reply):
    assert p.parse_reply(*one_packet(p.encode_reply(reply))) == reply


def test_optional_esmtp_args_may_be_missing():
    assert p.parse_reply(p.SMFIR_CHGFROM, b"<x@example.test>\0").args == ("<x@example.test>", "")
    assert p.parse_reply(p.SMFIR_ADDRCPT_PAR, b"<y@example.test>\0").args == ("<y@example.test>", "")


@pytest.mark.parametrize("command, data", [
    (p.SMFIR_CONTINUE, b"x"),                      # no data allowed
    (p.SMFIR_ADDHEADER, b"X-Only-Name\0"),         # one string of two
    (p.SMFIR_ADDHEADER, b"X-Name\0value"),         # not NUL-terminated
    (p.SMFIR_CHGHEADER, b"\0\0"),                  # too short for the index
    (p.SMFIR_SETSYMLIST, b"\0"),
    (b"Z", b""),                                   # no such reply
])
def test_malformed_replies_raise_protocol_errors(command, data):
    with pytest.raises(p.MilterProtocolError):
        p.parse_reply(command, data)


@pytest.mark.parametrize("data", [b"\0\0\0\0", b"\x7f\xff\xff\xff"])
def test_bad_and_overlong_packet_lengths_are_refused_before_reading_them(data):
    reader = p.PacketReader()
    reader.feed(data)
    with pytest.raises(p.MilterProtocolError):
        reader.next_packet()


def test_the_reader_waits_for_a_whole_packet():
    reader = p.PacketReader()
    whole = p.encode_reply(p.Reply(p.SMFIR_ADDHEADER, ("X", "y"))) + p.encode_reply(p.Reply(p.SMFIR_CONTINUE))
    for octet in whole[:-1]:
        reader.feed(bytes([octet]))
    assert reader.next_packet() == (p.SMFIR_ADDHEADER, b"X\0y\0")
    assert reader.next_packet() is None
    reader.feed(whole[-1:])
    assert reader.next_packet() == (p.SMFIR_CONTINUE, b"")


def test_truncated_optneg_replies_raise():
    with pytest.raises(p.MilterProtocolError):
        p.parse_optneg(b"\0\0\0\x06")
    with pytest.raises(p.MilterProtocolError):
        p.parse_optneg(struct.pack("!III", 6, 0, 0) + b"\0\0\0\x01i")   # macro list without its NUL
