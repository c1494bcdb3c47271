"""sendmail -t extraction. The expected recipients are what Postfix 3.7's sendmail -t
recorded (postcat's HEADER EXTRACTED section) for the same headers."""

import pytest

from mailferry.local.recipient_headers import extract_recipients, header_fields, remove_hidden_recipients


@pytest.mark.parametrize("headers, expected", [
    # group with no members, quoted name with a comma, comment, folded line, Bcc
    (b'To: Undisclosed:;\nCc: "Doe, J" <j@example.com>, (comment) k@example.com,\n  l@example.com\n'
     b"Bcc: hidden@example.com\nSubject: x\n",
     ["j@example.com", "k@example.com", "l@example.com", "hidden@example.com"]),
    # encoded word, group with members, repeated To:, case of field names
    (b"To: =?utf-8?q?J=C3=B6rg?= <j@example.net>, undisclosed-recipients:;\n"
     b'CC: group: g1@example.net, "x y" <g2@example.net>;\nTo: second@example.net\n',
     ["j@example.net", "g1@example.net", "g2@example.net", "second@example.net"]),
    # Resent- recipients replace the others
    (b"To: a@example.net\nResent-To: b@example.net\nResent-Bcc: c@example.net\nBcc: d@example.net\n",
     ["b@example.net", "c@example.net"]),
    # Resent-From alone does not
    (b"Resent-From: x@example.net\nTo: a@example.net, a@example.net\n", ["a@example.net", "a@example.net"]),
    # an unqualified name is kept for cleanup to qualify
    (b"To: bare\n", ["bare"]),
    # nothing usable
    (b"To: (only a comment)\nCc: <>\n", []),
    (b"Subject: no recipients\n", []),
])
def test_extraction_matches_postfix(headers, expected):
    assert extract_recipients(headers + b"\nTo: in-body@example.net\n") == expected


def test_header_section_ends_at_a_line_that_is_no_header():
    content = b"To: a@example.net\nX-Bad header line\nCc: notheader@example.net\n\nbody\n"
    assert extract_recipients(content) == ["a@example.net"]


def test_crlf_and_folded_continuation_lines():
    content = b"To: first@example.net,\r\n\tsecond@example.net\r\nSubject: s\r\n\r\nbody\r\n"
    assert extract_recipients(content) == ["first@example.net", "second@example.net"]
    [to, subject] = header_fields(content)
    assert (to.name, content[to.start:to.end]) == ("to", b"To: first@example.net,\r\n\tsecond@example.net\r\n")
    assert subject.name == "subject"


def test_a_body_without_headers_has_no_recipients():
    assert extract_recipients(b" To: a@example.net\n") == []
    assert extract_recipients(b"") == []


def test_bcc_and_resent_bcc_are_removed_with_their_continuation_lines():
    content = (b"To: a@example.net\r\nBcc: secret@example.net,\r\n other@example.net\r\n"
               b"Subject: s\r\nresent-bcc: x@example.net\r\n\r\nBcc: stays in the body\r\n")
    assert remove_hidden_recipients(content) == (
        b"To: a@example.net\r\nSubject: s\r\n\r\nBcc: stays in the body\r\n")


def test_nothing_to_remove_returns_the_same_bytes():
    content = b"To: a@example.net\n\nbody\n"
    assert remove_hidden_recipients(content) is content
