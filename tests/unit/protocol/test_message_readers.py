"""The DATA and BDAT readers on a bare receive buffer: where a message
ends, what is kept of one over the limit, chunks that arrive in pieces,
and the content as the application gets it."""

from __future__ import annotations

import pytest

from mailferry.protocol import replies
from mailferry.protocol.message_readers import (
    DROP_WITH_ERROR, STORE, ChunkReader, DataReader, as_received, bdat_arguments, has_bare_newline,
    message_refusal,
)
from mailferry.protocol.server_events import BDAT, DATA


def started(data: bytes, size_limit: int = 0) -> tuple[DataReader, bytearray]:
    reader, buffer = DataReader(size_limit), bytearray(data)
    reader.start(buffer)
    return reader, buffer


def test_a_message_ends_at_crlf_dot_crlf_and_what_follows_is_kept():
    reader, buffer = started(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    end = reader.find_end(buffer)
    content, rest = reader.take(buffer, end)
    assert content == b"Subject: x\r\n\r\nbody\r\n"
    assert rest == b"QUIT\r\n"


def test_a_dot_on_the_first_line_ends_an_empty_message():
    reader, buffer = started(b".\r\nQUIT\r\n")
    content, rest = reader.take(buffer, reader.find_end(buffer))
    assert (content, rest) == (b"", b"QUIT\r\n")


@pytest.mark.parametrize("spelling", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
def test_no_smuggling_spelling_ends_the_message(spelling):
    reader, buffer = started(b"a" + spelling + b"MAIL FROM:<x>")
    assert reader.find_end(buffer) == -1


def test_a_terminator_split_across_reads_is_found_without_rescanning():
    reader, buffer = started(b"x" * 1000 + b"\r\n.")
    assert reader.find_end(buffer) == -1
    examined = reader.bytes_examined
    buffer += b"\r\n"
    assert reader.find_end(buffer) == 1002
    # Only the last bytes of the first read are looked at again.
    assert reader.bytes_examined - examined <= len(b"\r\n.\r\n") + 3


def test_a_message_over_the_limit_is_not_stored_and_comes_out_as_none():
    reader, buffer = started(b"", size_limit=10)
    for _ in range(100):
        buffer += b"y" * 100
        assert reader.find_end(buffer) == -1
        assert len(buffer) <= 110
    buffer += b"\r\n.\r\nNOOP\r\n"
    content, rest = reader.take(buffer, reader.find_end(buffer))
    assert (content, rest) == (None, b"NOOP\r\n")


def test_stuffed_dots_do_not_count_toward_the_limit():
    body = b"\r\n".join([b".."] * 5) + b"\r\n"      # 20 bytes as sent, 15 once unstuffed
    reader, buffer = started(body, size_limit=16)
    end = reader.find_end(buffer)
    assert end == -1
    buffer += b".\r\n"
    content, _ = reader.take(buffer, reader.find_end(buffer))
    assert content == body


def test_a_chunk_is_read_as_it_arrives_and_stored():
    reader, buffer = ChunkReader(), bytearray(b"abc")
    reader.start(5, last=False, handling=STORE)
    assert not reader.read(buffer)
    assert buffer == b""
    buffer += b"deNOOP\r\n"
    assert reader.read(buffer)
    assert (reader.message, buffer) == (b"abcde", b"NOOP\r\n")


def test_a_refused_chunk_is_read_but_not_stored():
    reader, buffer = ChunkReader(), bytearray(b"12345RSET\r\n")
    reader.start(5, last=True, handling=DROP_WITH_ERROR, error=replies.CHUNK_TOO_BIG)
    assert reader.read(buffer)
    assert (reader.message, buffer, reader.error) == (b"", b"RSET\r\n", replies.CHUNK_TOO_BIG)


def test_an_empty_chunk_is_complete_at_once():
    reader = ChunkReader()
    reader.start(0, last=True, handling=STORE)
    assert reader.read(bytearray())


@pytest.mark.parametrize("argument, expected", [
    ("10", (10, False)), ("0 LAST", (0, True)), ("7 last", (7, True)),
    ("", None), ("10 LAST more", None), ("10 FIRST", None), ("-1", None), ("1e3", None),
    ("٣", None), (str(2 ** 63), None),
])
def test_bdat_arguments(argument, expected):
    assert bdat_arguments(argument) == expected


def test_as_received_unstuffs_data_and_normalizes_bare_newlines():
    assert as_received(b"..one\r\n..\r\n...x\r\n", DATA, False) == b".one\r\n.\r\n..x\r\n"
    assert has_bare_newline(b"a\nb\r\n")
    assert as_received(b"a\nb\r\n", DATA, True) == b"a\r\nb\r\n"


def test_as_received_leaves_bdat_dots_alone_and_ends_the_last_line():
    assert as_received(b"..x\r\nno end", BDAT, False) == b"..x\r\nno end\r\n"
    assert as_received(b"", BDAT, False) == b""


def test_message_refusal_checks_size_then_hops():
    hops = b"Received: a\r\nReceived: b\r\n\r\nbody\r\n"
    assert message_refusal(hops, size_limit=10, hopcount_limit=3) == replies.MESSAGE_TOO_BIG
    assert message_refusal(hops, size_limit=0, hopcount_limit=3) == replies.TOO_MANY_HOPS
    assert message_refusal(hops, size_limit=0, hopcount_limit=4) is None
    assert message_refusal(hops, size_limit=0, hopcount_limit=0) is None
