"""Find the addresses in an address header (From:, To:...) and replace them.

Used by cleanup (canonical maps, masquerading) and by the SMTP client
(smtp_generic_maps); the lookups are theirs, the header syntax is here.

Postfix (cleanup_message.c) parses the header with tok822, rewrites each
address and, only when one changed, writes the header again. Here the
value is scanned once: quoted strings and comments are skipped, the list is
split at top-level commas, and in each item the address is what is inside
`<...>`, or else the item without its comments. Only the address text is
replaced, so display names, comments and spacing stay as the sender wrote
them (Postfix re-spaces a rewritten header; the addresses are the same).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

# Which headers carry which class of address (Postfix's header_opts.c).
# Resent-Reply-To: is a recipient header there, and so here.
SENDER_HEADERS = frozenset({
    "from", "sender", "reply-to", "errors-to", "resent-from", "resent-sender",
    "return-receipt-to", "disposition-notification-to", "mail-followup-to",
})
RECIPIENT_HEADERS = frozenset({
    "to", "cc", "bcc", "apparently-to", "resent-to", "resent-cc", "resent-bcc", "resent-reply-to",
})


def address_spans(value: str) -> list[tuple[int, int]]:
    """(start, end) of each address in a header value."""
    spans: list[tuple[int, int]] = []
    item_start = 0
    angle_start = -1
    depth = 0
    quoted = False
    index = 0
    plain: list[tuple[int, int]] = []   # runs of the current item outside comments and quotes
    run_start = 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif depth:
            if char == "\\":
                index += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if not depth:
                    run_start = index + 1
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
            plain.append((run_start, index))
        elif char == "<":
            angle_start = index + 1
        elif char == ">" and angle_start >= 0:
            spans.append((angle_start, index))
            angle_start = -2    # this item's address is found
        elif char in ",;:":
            _end_item(value, spans, plain, run_start, index, angle_start, char)
            plain, run_start, angle_start, item_start = [], index + 1, -1, index + 1
        index += 1
    _end_item(value, spans, plain, run_start, len(value), angle_start, ",")
    del item_start
    return spans


def _end_item(value: str, spans: list[tuple[int, int]], plain: list[tuple[int, int]],
              run_start: int, end: int, angle_start: int, separator: str) -> None:
    """An item without `<...>` is an addr-spec: its one non-blank run outside comments.
    `name:` before a group is not an address, nor is an item with a quoted phrase."""
    if angle_start != -1 or separator == ":":
        return
    runs = [(start, stop) for start, stop in [*plain, (run_start, end)] if value[start:stop].strip()]
    if len(runs) != 1:
        return
    start, stop = runs[0]
    text = value[start:stop]
    start += len(text) - len(text.lstrip())
    stop -= len(text) - len(text.rstrip())
    if " " not in value[start:stop] and value[start:stop] not in ("", ";"):
        spans.append((start, stop))


def replace_spans(value: str, spans: list[tuple[int, int]], new: list[str]) -> str:
    for (start, stop), address in sorted(zip(spans, new), reverse=True):
        value = value[:start] + address + value[stop:]
    return value


_SIMPLE = re.compile(r'^(?:[ \t]*[^<>()",;:@\\\r\n]*<([^<>()",;:\\\s]*)>|[ \t]*([^<>()",;:\\\s]+))[ \t]*$')


def _spans(value: str) -> list[tuple[int, int]]:
    """address_spans, with a shortcut for the common one-address value."""
    simple = _SIMPLE.match(value)
    if simple is None:
        return address_spans(value)
    group = 1 if simple.group(1) is not None else 2
    return [simple.span(group)]


_KINDS = {name.encode(): "sender" for name in SENDER_HEADERS} | {
    name.encode(): "recipient" for name in RECIPIENT_HEADERS}


async def rewrite_address_headers(content: bytes, rewrite: Callable[[str, str], Awaitable[str]],
                                  unchanged: Callable[[str], bool] | None = None) -> bytes:
    """`content` with every address of its sender and recipient headers passed
    through `rewrite(address, kind)`, kind "sender" or "recipient". A header
    whose addresses all stay the same is kept byte for byte. `unchanged`, when
    given, says cheaply of an address that `rewrite` would leave it as it is."""
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return content
    lines = content[:end].split(b"\r\n")
    changed = False
    index = 0
    while index < len(lines):
        name, colon, _ = lines[index].partition(b":")
        kind = _KINDS.get(name.rstrip(b" \t").lower()) if colon else None
        last = index
        while last + 1 < len(lines) and lines[last + 1][:1] in (b" ", b"\t"):
            last += 1
        if kind is not None:
            field = b"\r\n".join(lines[index:last + 1])
            new = await _rewrite_field(field, kind, rewrite, unchanged)
            if new is not field:
                lines[index:last + 1] = [new]
                last = index
                changed = True
        index = last + 1
    if not changed:
        return content
    return b"\r\n".join(lines) + content[end:]


async def _rewrite_field(field: bytes, kind: str, rewrite: Callable[[str, str], Awaitable[str]],
                         unchanged: Callable[[str], bool] | None) -> bytes:
    colon = field.index(b":")
    text = field[colon + 1:].decode("utf-8", "surrogateescape")
    spans = _spans(text)
    if not spans:
        return field
    old = [text[start:stop] for start, stop in spans]
    if unchanged is not None and all(unchanged(address) for address in old):
        return field
    new = [await rewrite(address, kind) if address else address for address in old]  # <> stays
    if new == old:
        return field
    return field[:colon + 1] + replace_spans(text, spans, new).encode("utf-8", "surrogateescape")
