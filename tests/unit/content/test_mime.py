"""content/mime.py: the structure Postfix's mime_state finds, event by event."""

from __future__ import annotations

from mailferry.content.mime import (ENCODING_DOMAIN_ERROR, MULTIPART, NESTED, PRIMARY, Body, Header, MimeParser,
                                    header_name_length, parse)


def events(content: bytes, **options) -> list[tuple[str, bytes]]:
    found = []
    for event in parse(content, MimeParser(**options)):
        if isinstance(event, Header):
            found.append((event.block, event.text))
        else:
            found.append(("body", event.text))
    return found


def test_header_names_as_postfix_reads_them():
    assert header_name_length(b"Subject: x") == 7
    assert header_name_length(b"Subject : x") == 7        # obsolete "name space colon"
    assert header_name_length(b" folded") == 0
    assert header_name_length(b"no colon here") == 0
    assert header_name_length(b"two words: x") == 0
    assert header_name_length(b": empty name") == 0


def test_folded_headers_are_one_logical_header_joined_with_newlines():
    assert events(b"Subject: a\r\n\tb\r\n c\r\nTo: d\r\n\r\nbody\r\n") == [
        (PRIMARY, b"Subject: a\n\tb\n c"), (PRIMARY, b"To: d"), ("body", b""), ("body", b"body")]


def test_obsolete_space_before_the_colon_is_normalized():
    [header, *_] = parse(b"Subject : hi\r\n\r\n")
    assert header.text == b"Subject: hi" and header.truncated   # the output must be rewritten


def test_a_line_that_is_no_header_ends_the_primary_headers_with_an_empty_line_put_before_it():
    found = list(parse(b"Subject: a\r\nnot a header\r\nmore\r\n"))
    assert [(type(e).__name__, e.text) for e in found] == [
        ("Header", b"Subject: a"), ("Body", b""), ("Body", b"not a header"), ("Body", b"more")]
    assert found[1].inserted


def test_multipart_parts_have_mime_headers_and_boundaries_are_body_lines():
    content = (b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nX-In-Part: 1\r\n"
               b"Content-Type: text/plain\r\n\r\none\r\n--b--\r\nepilogue\r\n")
    assert events(content) == [
        (PRIMARY, b'Content-Type: multipart/mixed; boundary="b"'), ("body", b""), ("body", b"preamble"),
        ("body", b"--b"), (MULTIPART, b"X-In-Part: 1"), (MULTIPART, b"Content-Type: text/plain"),
        ("body", b""), ("body", b"one"), ("body", b"--b--"), ("body", b"epilogue")]


def test_message_rfc822_parts_have_nested_headers():
    content = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
               b"Subject: inner\r\n\r\ninner body\r\n--b--\r\n")
    found = events(content)
    assert (NESTED, b"Subject: inner") in found
    assert ("body", b"inner body") in found


def test_multipart_digest_parts_default_to_message_rfc822():
    content = (b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: digested\r\n\r\nx\r\n"
               b"--d--\r\n")
    assert (NESTED, b"Subject: digested") in events(content)


def test_an_inner_boundary_that_is_never_closed_is_recovered_from_at_the_outer_one():
    content = (b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n"
               b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\n\r\ntext\r\n"
               b"--outer\r\nX-Second: part\r\n\r\nsecond\r\n--outer--\r\n")
    assert (MULTIPART, b"X-Second: part") in events(content)


def test_disable_mime_makes_everything_after_the_primary_headers_body():
    content = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nX-In-Part: 1\r\n\r\none\r\n--b--\r\n")
    found = events(content, disable_mime=True)
    assert ("body", b"X-In-Part: 1") in found
    assert not any(block == MULTIPART for block, _ in found)


def test_header_size_limit_drops_the_rest_of_a_header_from_the_line_that_does_not_fit():
    content = b"X-A: ssss\r\n" + b" ccccccccc\r\n" * 200 + b"X-B: kept\r\n\r\n"
    headers = [e for e in parse(content, MimeParser(header_limit=2000)) if isinstance(e, Header)]
    assert len(headers[0].text) == 2000 and headers[0].text.count(b"\n") == 181   # measured on Postfix 3.7
    assert headers[0].truncated
    assert headers[1].text == b"X-B: kept"


def test_long_body_lines_are_checked_in_pieces_of_line_length_limit():
    found = [e for e in parse(b"S: x\r\n\r\n" + b"a" * 5000 + b"\r\n", MimeParser(line_limit=2048))
             if isinstance(e, Body) and e.text]
    assert [len(e.text) for e in found] == [2048, 2048, 904]
    assert [e.ends_line for e in found] == [False, False, True]
    assert [e.offset for e in found] == [1, 2050, 4099]


def test_body_offsets_restart_in_each_part():
    content = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + b"x" * 100 + b"\r\n"
               b"--b\r\n\r\nsecond part\r\n--b--\r\n")
    [second] = [e for e in parse(content) if isinstance(e, Body) and e.text == b"second part"]
    assert second.offset == 1   # after the part's empty separator line


def test_strict_mime_encoding_domain_refuses_an_encoded_multipart():
    content = (b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               b"--b\r\n\r\nx\r\n--b--\r\n")
    parser = MimeParser(strict_encoding=True)
    list(parse(content, parser))
    assert [(e.text, e.detail) for e in parser.errors] == [(ENCODING_DOMAIN_ERROR, b"base64")]
    relaxed = MimeParser()
    list(parse(content, relaxed))
    assert relaxed.errors == []


def test_identity_encodings_of_a_multipart_are_fine_when_strict():
    parser = MimeParser(strict_encoding=True)
    list(parse(b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n--b--\r\n",
               parser))
    assert parser.errors == []


def test_event_spans_cover_the_input_so_unchanged_content_can_be_copied():
    content = b"Subject: a\r\n b\r\nTo: c\r\n\r\nline\r\n"
    spans = [(e.start, e.end) for e in parse(content) if not (isinstance(e, Body) and e.inserted)]
    assert spans[0] == (0, 16) and spans[1] == (16, 23)
    assert content[spans[-1][0]:spans[-1][1]] == b"line\r\n"
