"""sendmail -t: the recipients that a message's own header names, and hiding Bcc.

As Postfix's sendmail -t does:
- To:, Cc: and Bcc:, in header order, duplicates kept (cleanup removes them);
- but a message being re-sent (it has Resent-To:, Resent-Cc: or
  Resent-Bcc:) goes to those alone;
- field names are matched without regard to case;
- the header section ends at the first empty line or at the first line that
  is not a header field, so `To:` in the body never counts.

Address lists are parsed by the stdlib's `email.utils.getaddresses`, which
knows groups (`undisclosed-recipients:;`), comments, quoted names with
commas and folded lines. Empty results (`<>`, a lone comment) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import getaddresses

RECIPIENT_FIELDS = ("to", "cc", "bcc")
RESENT_RECIPIENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
HIDDEN_FIELDS = ("bcc", "resent-bcc")

# RFC 5322 ftext: printable US-ASCII except the colon.
_FIELD_NAME_BYTES = frozenset(range(33, 127)) - {ord(":")}


@dataclass(slots=True)
class HeaderField:
    name: str          # lower case
    start: int         # byte offsets of the whole field, continuation lines and line ends included
    end: int
    value: bytes       # after the colon, still folded


def header_fields(content: bytes) -> list[HeaderField]:
    """The fields of the header section, in order."""
    fields: list[HeaderField] = []
    offset = 0
    for line in _lines(content):
        bare = line.rstrip(b"\r\n")
        if not bare:
            break
        if bare[:1] in (b" ", b"\t"):
            if not fields:
                break  # a body that starts with white space: there is no header section
            fields[-1].value += line
            fields[-1].end = offset + len(line)
        else:
            name, colon, value = line.partition(b":")
            if not colon or not _is_field_name(name.rstrip(b" \t")):
                break
            fields.append(HeaderField(name.rstrip(b" \t").decode("ascii").lower(),
                                      offset, offset + len(line), value))
        offset += len(line)
    return fields


def _lines(content: bytes):
    """Lines with their endings; only LF ends a line (a bare CR is part of the line)."""
    start = 0
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end + 1
        yield content[start:end]
        start = end


def _is_field_name(name: bytes) -> bool:
    return bool(name) and all(byte in _FIELD_NAME_BYTES for byte in name)


def extract_recipients(content: bytes) -> list[str]:
    """The addresses sendmail -t sends to, in header order."""
    fields = header_fields(content)
    chosen = [field for field in fields if field.name in RESENT_RECIPIENT_FIELDS]
    if not chosen:
        chosen = [field for field in fields if field.name in RECIPIENT_FIELDS]
    addresses = []
    for field in chosen:
        text = field.value.decode("utf-8", "surrogateescape")
        addresses += [address for _, address in getaddresses([_unfold(text)]) if address]
    return addresses


def _unfold(text: str) -> str:
    return text.replace("\r\n", "").replace("\n", "").strip()


def remove_hidden_recipients(content: bytes) -> bytes:
    """`content` without its Bcc: and Resent-Bcc: fields; every other byte is kept."""
    hidden = [field for field in header_fields(content) if field.name in HIDDEN_FIELDS]
    if not hidden:
        return content
    pieces, position = [], 0
    for field in hidden:
        pieces.append(content[position:field.start])
        position = field.end
    pieces.append(content[position:])
    return b"".join(pieces)
