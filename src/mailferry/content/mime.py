"""The MIME structure header and body checks need, as Postfix's mime_state(3) finds it.

Input is the message one line at a time (without its CRLF); a line longer than
`line_limit` (line_length_limit) arrives in pieces, as Postfix's queue records
split it, and each piece is a body "line" of its own for body_checks. Output is
a stream of events:

- Header: one logical header (a field with its continuation lines, joined with
  "\n" as Postfix keeps them), with the header block it belongs to: PRIMARY
  (the message's own), MULTIPART (a body part's, after a boundary) or NESTED
  (an attached message/rfc822). From the first continuation line that would take
  it past `header_limit` (header_size_limit) bytes, the rest of a header is dropped,
  as Postfix drops it.
- Body: one body line or piece of one, with its offset in the current body part
  (body_checks_size_limit counts from there), multipart boundary lines included.

Postfix's rules, kept here: "Name : value" is read as "Name: value"; a line in
the primary header block that is neither a header nor empty ends the block, and
an empty line is put before it; multipart boundaries are found at any nesting
depth and a missing closing boundary is recovered from; message/rfc822 (and
message/global) parts start with headers of their own; with `disable_mime`
(disable_mime_input_processing) everything after the primary headers is body.
With `strict_encoding` (strict_mime_encoding_domain) a multipart or message
part whose Content-Transfer-Encoding is not an identity encoding (7bit, 8bit,
binary) is an error, and boundaries nested deeper than `nesting_limit` are one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PRIMARY = "primary"
MULTIPART = "multipart"
NESTED = "nested"
_BODY = "body"

# Content types and subtypes that matter to the structure.
_TEXT, _MESSAGE, _MULTIPART, _OTHER = "text", "message", "multipart", "other"
_PLAIN, _RFC822, _PARTIAL, _EXTERNAL, _GLOBAL = "plain", "rfc822", "partial", "external-body", "global"
_SUBTYPES = {b"rfc822": _RFC822, b"partial": _PARTIAL, b"external-body": _EXTERNAL, b"global": _GLOBAL}

# Content-Transfer-Encoding: (encoding, domain). The identity encodings are their own domain.
_ENCODINGS = {b"7bit": ("7bit", "7bit"), b"8bit": ("8bit", "8bit"), b"binary": ("binary", "binary"),
              b"base64": ("base64", "7bit"), b"quoted-printable": ("quoted-printable", "7bit")}

# The headers Postfix's header_opts marks HDR_OPT_MIME: mime_header_checks inspects them
# wherever they are, the primary header block included.
MIME_HEADERS = frozenset((b"content-description", b"content-disposition", b"content-id",
                          b"content-transfer-encoding", b"content-type", b"mime-version"))

ENCODING_DOMAIN_ERROR = "invalid message/* or multipart/* encoding domain"
NESTING_ERROR = "MIME nesting exceeds safety limit"
_TSPECIALS = b"()<>@,;:\\\"/[]?="


@dataclass(slots=True)
class Header:
    block: str        # PRIMARY, MULTIPART or NESTED
    text: bytes       # the logical header, continuation lines joined with "\n"
    name: bytes       # lower-cased field name
    start: int        # where its first line begins in the input (for the output's copy)
    end: int          # just past its last line's CRLF
    truncated: bool   # header_size_limit cut it: the output must be made from `text`


@dataclass(slots=True)
class Body:
    text: bytes       # one line, or one piece of a line longer than line_length_limit
    offset: int       # in the current body part, as Postfix counts (each line or piece + 1)
    ends_line: bool   # False for a piece that the next piece continues
    start: int
    end: int          # for the last piece, just past the CRLF
    inserted: bool = False   # the empty line put between primary headers and a non-header line


@dataclass(slots=True)
class MimeError:
    text: str         # Postfix's mime_state_error() text
    detail: bytes     # what it is about (an encoding name, a header)


def header_name_length(line: bytes) -> int:
    """Postfix's is_header_buf: the length of the field name when `line` starts a header
    ("Name:" or the obsolete "Name :"), else 0."""
    length = 0
    spaced = False
    for byte in line:
        if byte == 58:  # ":"
            return length
        if byte in (32, 9):
            if not length:
                return 0
            spaced = True
            continue
        if spaced or byte < 33 or byte > 126:
            return 0
        length += 1
    return 0


def _tokens(value: bytes) -> Iterator[list[bytes]]:
    """RFC 2045 tokens of a Content-Type value, grouped by ";": specials are single bytes,
    quoted strings lose their quotes, comments are skipped (Postfix's header_token)."""
    group: list[bytes] = []
    index, size = 0, len(value)
    while index < size:
        byte = value[index:index + 1]
        if byte in b" \t\r\n":
            index += 1
        elif byte == b"(":
            depth = 0
            while index < size:
                char = value[index:index + 1]
                if char == b"\\":
                    index += 1
                elif char == b"(":
                    depth += 1
                elif char == b")":
                    depth -= 1
                    if depth == 0:
                        break
                index += 1
            index += 1
        elif byte == b'"':
            index += 1
            text = bytearray()
            while index < size and value[index:index + 1] != b'"':
                if value[index:index + 1] == b"\\" and index + 1 < size:
                    index += 1
                text += value[index:index + 1]
                index += 1
            index += 1
            group.append(bytes(text))
        elif byte == b";":
            yield group
            group = []
            index += 1
        elif byte in _TSPECIALS:
            group.append(byte)
            index += 1
        else:
            begin = index
            while index < size and value[index:index + 1] not in _TSPECIALS and value[index] > 32:
                index += 1
            group.append(value[begin:index])
    yield group


class MimeParser:
    """Feed it lines with `line(text, start, end)`, then `finish()`; both return events."""

    def __init__(self, header_limit: int = 102400, line_limit: int = 2048, disable_mime: bool = False,
                 strict_encoding: bool = False, report_nesting: bool = False, boundary_limit: int = 2048,
                 nesting_limit: int = 100):
        self.header_limit = header_limit
        self.line_limit = line_limit if line_limit > 0 else 1 << 62
        self.disable_mime = disable_mime
        self.strict_encoding = strict_encoding and not disable_mime
        self.report_nesting = report_nesting and not disable_mime
        self.boundary_limit = boundary_limit
        self.nesting_limit = nesting_limit
        self.errors: list[MimeError] = []
        self._state = PRIMARY
        self._ctype, self._stype = _TEXT, _PLAIN
        self._encoding = self._domain = "7bit"
        self._stack: list[tuple[bytes, str, str]] = []   # (boundary, default type, default subtype), top last
        self._nesting = -1
        self._header: bytearray | None = None
        self._header_start = 0
        self._header_end = 0
        self._truncated = False
        self._dropping = False
        self._previous_continued = False
        self._body_offset = 0

    # --- input

    def line(self, text: bytes, start: int, end: int) -> list[Header | Body]:
        """One input line (no CRLF) that occupies input[start:end] (CRLF included)."""
        if len(text) <= self.line_limit:
            return self._record(text, False, start, end)
        events: list[Header | Body] = []
        limit = self.line_limit
        for piece_start in range(0, len(text), limit):
            piece = text[piece_start:piece_start + limit]
            last = piece_start + limit >= len(text)
            events += self._record(piece, not last, start + piece_start,
                                   end if last else start + piece_start + len(piece))
        return events

    def finish(self) -> list[Header | Body]:
        flushed = self._flush_header()
        return [] if flushed is None else [flushed]

    # --- Postfix's mime_state_update, one record at a time

    def _record(self, text: bytes, continued: bool, start: int, end: int) -> list[Header | Body]:
        events: list[Header | Body] = []
        if self._state != _BODY:
            if self._header is not None:
                if self._previous_continued or text[:1] in (b" ", b"\t"):
                    self._append_header(text, joined=self._previous_continued)
                    self._header_end = end
                    self._previous_continued = continued
                    return events
                flushed = self._flush_header()
                if flushed is not None:
                    events.append(flushed)
            name_length = header_name_length(text)
            if name_length:
                self._header = bytearray(text[:name_length])
                self._header += text[name_length:].lstrip(b" \t")
                self._truncated = len(self._header) != len(text)  # "Name :" was normalized
                self._dropping = False
                self._header_start, self._header_end = start, end
                self._previous_continued = continued
                return events
            self._end_of_header_block(text, events, start)
        self._body(text, continued, start, end, events)
        self._previous_continued = continued
        return events

    def _append_header(self, text: bytes, joined: bool) -> None:
        header = self._header
        assert header is not None
        added = len(text) + (0 if joined else 1)
        # Measured against Postfix 3.7: a continuation line is kept only when the whole header,
        # with it, stays within header_size_limit; from the first line that does not fit, the
        # rest of the header is dropped.
        if not self._dropping and len(header) + added <= self.header_limit:
            if not joined:
                header += b"\n"
            header += text
        else:
            self._truncated = self._dropping = True

    def _flush_header(self) -> Header | None:
        header = self._header
        if header is None:
            return None
        self._header = None
        text = bytes(header)
        name = text[:text.index(b":")].rstrip(b" \t").lower()
        if not self.disable_mime:
            if name == b"content-type":
                self._content_type(text[len(name) + 1:])
            elif name == b"content-transfer-encoding":
                self._content_encoding(text[len(name) + 1:])
        return Header(self._state, text, name, self._header_start, self._header_end, self._truncated)

    def _end_of_header_block(self, text: bytes, events: list[Header | Body], start: int) -> None:
        if self.strict_encoding:
            self._check_encoding_domain()
        if not text:
            self._body_offset = 0
            if self._ctype == _MESSAGE and self._stype in (_RFC822, _GLOBAL) and not self.disable_mime:
                self._set(NESTED, _TEXT, _PLAIN)
            elif self._ctype == _MULTIPART and not self.disable_mime:
                self._set(_BODY, _OTHER, _OTHER)
            else:
                self._state = _BODY
                self._body_offset = 0
        elif self._state == PRIMARY:
            self._state = _BODY
            self._body_offset = 0
            events.append(Body(b"", 0, True, start, start, inserted=True))
            self._body_offset = 1
        else:
            self._state = _BODY
            self._body_offset = 0

    def _body(self, text: bytes, continued: bool, start: int, end: int, events: list[Header | Body]) -> None:
        if (self._stack and not self._previous_continued and len(text) > 2 and text[:2] == b"--"):
            self._boundary(text)
        events.append(Body(text, self._body_offset, not continued, start, end))
        self._body_offset += len(text) + 1

    def _boundary(self, text: bytes) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            boundary, default_type, default_subtype = self._stack[depth]
            size = len(boundary)
            if len(text) >= 2 + size and text[2:2 + size] == boundary:
                while len(self._stack) - 1 > depth:
                    self._pop()
                if text[2 + size:4 + size] == b"--":
                    self._pop()
                    self._set(_BODY, _OTHER, _OTHER)
                else:
                    self._set(MULTIPART, default_type, default_subtype)
                return

    # --- state

    def _set(self, state: str, ctype: str, stype: str) -> None:
        self._state, self._ctype, self._stype = state, ctype, stype
        self._encoding = self._domain = "7bit"
        if state == _BODY:
            self._body_offset = 0

    def _pop(self) -> None:
        self._stack.pop()
        self._nesting -= 1

    def _content_type(self, value: bytes) -> None:
        groups = _tokens(value)
        first = next(groups, [])
        if not first:
            return
        main = first[0].lower()
        subtype = first[2].lower() if len(first) >= 3 and first[1] == b"/" else b""
        if main == b"text":
            self._ctype, self._stype = _TEXT, _PLAIN if subtype == b"plain" else _OTHER
        elif main == b"message":
            self._ctype, self._stype = _MESSAGE, _SUBTYPES.get(subtype, _OTHER)
        elif main == b"multipart":
            self._ctype = _MULTIPART
            defaults = (_MESSAGE, _RFC822) if subtype == b"digest" else (_TEXT, _PLAIN)
            for group in groups:
                if len(group) >= 3 and group[0].lower() == b"boundary" and group[1] == b"=":
                    if self._nesting > self.nesting_limit:
                        if self.report_nesting:
                            self._error(NESTING_ERROR, value)
                    else:
                        self._nesting += 1
                        self._stack.append((group[2][:self.boundary_limit], *defaults))
        else:
            self._ctype = _OTHER

    def _content_encoding(self, value: bytes) -> None:
        group = next(_tokens(value), [])
        known = _ENCODINGS.get(group[0].lower()) if group else None
        if known is not None:
            self._encoding, self._domain = known

    def _check_encoding_domain(self) -> None:
        if self._ctype == _MESSAGE:
            if self._stype in (_PARTIAL, _EXTERNAL):
                if self._domain != "7bit":
                    self._error(ENCODING_DOMAIN_ERROR, self._encoding.encode())
            elif self._stype == _RFC822 and self._encoding != self._domain:
                self._error(ENCODING_DOMAIN_ERROR, self._encoding.encode())
        elif self._ctype == _MULTIPART and self._encoding != self._domain:
            self._error(ENCODING_DOMAIN_ERROR, self._encoding.encode())

    def _error(self, text: str, detail: bytes) -> None:
        if all(error.text != text for error in self.errors):
            self.errors.append(MimeError(text, detail))


def lines(content: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(line without its CRLF, start, end) of each line of `content`; a last line without
    CRLF counts as a line."""
    start, size = 0, len(content)
    find = content.find
    while start < size:
        end = find(b"\r\n", start)
        if end < 0:
            yield content[start:], start, size
            return
        yield content[start:end], start, end + 2
        start = end + 2


def parse(content: bytes, parser: MimeParser | None = None) -> Iterator[Header | Body]:
    """Every event of `content`, in order."""
    parser = parser or MimeParser()
    for text, start, end in lines(content):
        yield from parser.line(text, start, end)
    yield from parser.finish()
