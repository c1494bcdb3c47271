"""A message as milters see and change it: its header fields, its body, its envelope.

Pure: no I/O. The index rules are Postfix's (cleanup_milter.c): a change (SMFIR_CHGHEADER)
counts the fields of that name as the milter saw them, without our own Received: header, which
milters are not shown; an insert (SMFIR_INSHEADER) counts every field of the message as it will
be delivered, ours included, so index 0 puts a field at the very top (where OpenDKIM's
signature goes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailferry.milter import protocol as p


@dataclass(slots=True)
class HeaderField:
    raw: bytes            # "Name: value\r\n" with any continuation lines, CRLF-terminated
    hidden: bool = False  # our own Received: the milters are not shown it

    @property
    def name(self) -> str:
        return self.raw.split(b":", 1)[0].rstrip(b" \t").decode("utf-8", "surrogateescape")

    def name_and_value(self, leading_space: bool) -> tuple[str, str]:
        """As Postfix sends a field: continuation lines joined by LF, and (unless the milter asked
        for SMFIP_HDR_LEADSPC) the one space after the colon dropped, as Sendmail does."""
        name, _, value = self.raw.rstrip(b"\r\n").partition(b":")
        value = value.replace(b"\r\n", b"\n")
        if not leading_space and value.startswith(b" "):
            value = value[1:]
        return (name.rstrip(b" \t").decode("utf-8", "surrogateescape"),
                value.decode("utf-8", "surrogateescape"))


@dataclass(slots=True)
class EnvelopeRecipient:
    address: str
    args: str = ""        # ESMTP args of SMFIR_ADDRCPT_PAR, e.g. "NOTIFY=NEVER"


@dataclass(slots=True)
class EditableMessage:
    headers: list[HeaderField]
    body: bytes
    sender: str
    recipients: list[str]
    added_recipients: list[EnvelopeRecipient] = field(default_factory=list)
    deleted_recipients: list[str] = field(default_factory=list)
    sender_args: str | None = None       # set when SMFIR_CHGFROM changed the sender
    sender_changed: bool = False
    changed: bool = False
    _new_body: list[bytes] | None = None

    @classmethod
    def parse(cls, content: bytes, sender: str, recipients: list[str], own_header_marker: bytes = b"") -> EditableMessage:
        """Split `content` (CRLF lines) into fields and body. The first Received: field that contains
        `own_header_marker` (" id QUEUEID") is ours and hidden from the milters."""
        if content.startswith(b"\r\n"):
            head, body = b"", content[2:]
        else:
            head, separator, body = content.partition(b"\r\n\r\n")
            if separator:
                head += b"\r\n"
            else:
                head, body = content, b""
        headers: list[HeaderField] = []
        for line in head.split(b"\r\n")[:-1] if head else []:
            if line[:1] in (b" ", b"\t") and headers:
                headers[-1].raw += line + b"\r\n"
            else:
                headers.append(HeaderField(line + b"\r\n"))
        if own_header_marker:
            for header in headers:
                if header.raw[:9].lower() == b"received:" and own_header_marker in header.raw:
                    header.hidden = True
                    break
        return cls(headers, body, sender, list(recipients))

    def content(self) -> bytes:
        return b"".join(header.raw for header in self.headers) + b"\r\n" + self.body

    def visible_headers(self) -> list[HeaderField]:
        return [header for header in self.headers if not header.hidden]

    # --- the modifications
    def apply(self, reply: p.Reply, leading_space: bool) -> None:
        command, args = reply.command, reply.args
        self.changed = True
        if command == p.SMFIR_ADDHEADER:
            self.headers.append(HeaderField(_field(args[0], args[1], leading_space)))
        elif command == p.SMFIR_CHGHEADER:
            self._change_header(max(args[0], 1), args[1], args[2], leading_space)
        elif command == p.SMFIR_INSHEADER:
            self._insert_header(args[0] + 1, _field(args[1], args[2], leading_space))
        elif command == p.SMFIR_REPLBODY:
            if self._new_body is None:
                self._new_body = []
            self._new_body.append(args[0])
        elif command == p.SMFIR_CHGFROM:
            self.sender, self.sender_args, self.sender_changed = _unbracket(args[0]), args[1], True
        elif command in (p.SMFIR_ADDRCPT, p.SMFIR_ADDRCPT_PAR):
            self.added_recipients.append(EnvelopeRecipient(_unbracket(args[0]), args[1] if len(args) > 1 else ""))
        elif command == p.SMFIR_DELRCPT:
            self.deleted_recipients.append(_unbracket(args[0]))

    def finish_body(self) -> None:
        """After a milter's replies: a body replacement it sent in pieces becomes the body."""
        if self._new_body is None:
            return
        text = b"".join(self._new_body).replace(b"\r\n", b"\n")
        lines = text.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        self.body = b"".join(line + b"\r\n" for line in lines)
        self._new_body = None

    def _change_header(self, index: int, name: str, value: str, leading_space: bool) -> None:
        matches = [header for header in self.visible_headers() if header.name.lower() == name.lower()]
        if index > len(matches):
            if value:
                self.headers.append(HeaderField(_field(name, value, leading_space)))
            return
        target = matches[index - 1]
        if not value:
            self.headers.remove(target)
        else:
            target.raw = _field(name, value, leading_space)

    def _insert_header(self, position: int, raw: bytes) -> None:
        self.headers.insert(min(position - 1, len(self.headers)), HeaderField(raw))


def _field(name: str, value: str, leading_space: bool) -> bytes:
    """A field from a milter's name and value (continuation lines by LF or CRLF)."""
    separator = "" if leading_space else " "
    text = f"{name}:{separator}{value}".replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode("utf-8", "surrogateescape") + b"\r\n"


def _unbracket(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address
