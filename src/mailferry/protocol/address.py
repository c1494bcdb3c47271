"""Envelope addresses: the Reverse-path and Forward-path of RFC 5321 4.1.2.

    parse_path("<user@example.com>", allow_smtputf8=False)           -> Path
    parse_path("<>", allow_smtputf8=False)                           -> NULL_PATH
    parse_path("<>", allow_smtputf8=False, role=RECIPIENT)           -> AddressError 501 5.1.3
    split_path("<a@example.com> SIZE=10")                            -> ("<a@example.com>", "SIZE=10")

Two levels of strictness:

- The default follows what Postfix's smtpd accepts with its default
  `strict_rfc821_envelopes = no`, because that is what the mail already flowing
  through our users' servers looks like: angle brackets may be left out; a
  local part may have leading, trailing or doubled dots (`a..b@`, common from
  some mobile carriers) and may exceed 64 octets (SRS and VERP addresses do);
  domains may contain `_` and end in a dot; an address without a domain
  (`<root>`) is accepted and left for the restrictions and cleanup to qualify
  or refuse; a second `@` in the local part (`<a@b@c>`) is accepted and marked
  as routed.
- `strict=True` is RFC 5321 to the letter: brackets, dot-strings, length
  limits (local part 64, path 256 octets), no domain-less address except
  `<postmaster>`.

Some things Postfix accepts are refused at both levels, on purpose: RFC 822
comments and stray backslashes in the local part, doubled brackets
(`<<a@b>>`), an empty local part (`<@example.com>`), a broken source route
(`<@:a@b>`), and 8-bit text anywhere without SMTPUTF8 (Postfix refuses it only
in the domain).

Source routes (`<@a,@b:user@c>`) are parsed and dropped, as RFC 5321 C says a
server SHOULD; the Path remembers that there was one. A Path `is_routed` when
its local part asks for further routing (`%`, `!`, `@`) or it had a source
route: relay control must never treat such an address as local.

Errors carry Postfix's replies: 501 5.1.7 for senders, 501 5.1.3 for
recipients.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass

from mailferry.protocol.replies import BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX, Reply, ReplyError

SENDER = "sender"         # MAIL FROM: the null path <> is allowed
RECIPIENT = "recipient"   # RCPT TO and VRFY

LOCAL_PART_LIMIT = 64     # octets, RFC 5321 4.5.3.1.1 (strict mode only)
DOMAIN_LIMIT = 255        # octets, RFC 5321 4.5.3.1.2
LABEL_LIMIT = 63          # octets, RFC 1035 2.3.4
PATH_LIMIT = 256          # octets including the brackets, RFC 5321 4.5.3.1.3 (strict mode only)

# RFC 5322 atext: the characters of an unquoted local part besides dots.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-")
_LENIENT_LABEL_CHARS = _LABEL_CHARS | {"_"}
_LENIENT_LOCAL = _ATEXT | {".", "@"}
_DIGITS_AND_DOTS = frozenset("0123456789.")
# Characters in an unquoted local part that ask for more routing.
_ROUTING_OPERATORS = frozenset("%!@")


class AddressError(ReplyError):
    """A path that cannot be parsed; `reply` is what the client gets."""

    def __init__(self, code: int, enhanced: str, text: str):
        super().__init__(Reply(code, enhanced, text))
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed envelope address. `local` is kept as the client wrote it,
    quotes included; `domain` is "" for the null path and for a domain-less
    address such as `postmaster`."""

    local: str
    domain: str
    had_source_route: bool = False

    @property
    def address(self) -> str:
        if not self.domain:
            return self.local
        return f"{self.local}@{self.domain}"

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def local_unquoted(self) -> str:
        """The local part with its quoting removed: what it names."""
        return unquote_local_part(self.local)

    @property
    def is_routed(self) -> bool:
        return self.had_source_route or not _ROUTING_OPERATORS.isdisjoint(self.local_unquoted)

    @property
    def is_postmaster(self) -> bool:
        return not self.domain and self.local_unquoted.lower() == "postmaster"

    def bracketed(self) -> str:
        return f"<{self.address}>"


NULL_PATH = Path("", "")


def parse_path(text: str, *, allow_smtputf8: bool, role: str = SENDER,
               strict: bool = False, numeric_domain: bool = False) -> Path:
    """Parse one path as it follows `MAIL FROM:` or `RCPT TO:` (without the
    ESMTP parameters: see split_path). `numeric_domain` (resolve_numeric_domain):
    `user@192.0.2.1` is accepted, for routing to resolve as `user@[192.0.2.1]`."""
    try:
        return _parsed_path(text, allow_smtputf8, role, strict, numeric_domain)
    except _BadPath:
        raise _error_for(role) from None


class _BadPath(Exception):
    """Raised (as a class: nothing is built) by the path grammar's pieces; parse_path turns it
    into the role's AddressError. Making that error for every good path cost a sixth of a
    RCPT's parse."""


def _parsed_path(text: str, allow_smtputf8: bool, role: str, strict: bool, numeric_domain: bool) -> Path:
    error = _BadPath
    if not text:
        raise error
    if not allow_smtputf8 and not text.isascii():
        raise error
    if not _is_valid_unicode(text):
        raise error
    if strict and len(text.encode("utf-8")) > PATH_LIMIT:
        raise error
    inner = _strip_brackets(text, strict=strict, error=error)
    if not inner:
        if role == RECIPIENT:
            raise error
        return NULL_PATH
    had_source_route = inner.startswith("@")
    if had_source_route:
        inner = _drop_source_route(inner, strict=strict, error=error)
    local, domain = _split_mailbox(inner, error)
    _check_local_part(local, strict=strict, error=error)
    if domain is None:
        if strict and local.lower() != "postmaster":
            raise error
        return Path(local, "", had_source_route)
    if numeric_domain and not strict and is_ipv4(domain):
        return Path(local, domain, had_source_route)
    return Path(local, _checked_domain(domain, strict=strict, error=error), had_source_route)


def split_path(argument: str) -> tuple[str, str]:
    """Split what follows `FROM:`/`TO:` into the path and its parameters.

    The path ends at the `>` that closes the opening `<` (quotes respected),
    or, for a path without brackets, at the first space outside quotes.
    Text glued to the `>` (`<a@b>SIZE=1`) stays part of the path, which then
    fails to parse, as in Postfix."""
    argument = argument.lstrip(" \t")
    end = _end_of_path(argument)
    return argument[:end], argument[end:].strip(" \t")


def unquote_local_part(local: str) -> str:
    if len(local) < 2 or not (local.startswith('"') and local.endswith('"')):
        return local
    content = local[1:-1]
    if "\\" not in content:
        return content
    chars, escaped = [], False
    for char in content:
        if escaped or char != "\\":
            chars.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(chars)


def quote_local_part(local: str) -> str:
    """The form of `local` to write in a path: quoted only when a dot-string
    cannot carry it."""
    if local and all(atom and _is_atext(atom) for atom in local.split(".")):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- Pieces of the grammar ----------------------------------------------------------------------

def _error_for(role: str) -> AddressError:
    # Made per parse, raised only on a bad path: cheap to make, as the hot path makes one.
    reply = BAD_RECIPIENT_SYNTAX if role == RECIPIENT else BAD_SENDER_SYNTAX
    return AddressError(reply.code, reply.enhanced, reply.text)


def _is_valid_unicode(text: str) -> bool:
    # Command lines are decoded with surrogateescape: invalid UTF-8 shows up
    # as lone surrogates. Controls are never part of an address.
    if text.isascii():       # the usual case, at C speed: printable ASCII is 0x20-0x7E
        return text.isprintable()
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            return False
    return True


def _end_of_path(argument: str) -> int:
    """Index just past the path at the start of `argument`."""
    bracketed = argument.startswith("<")
    in_quotes = escaped = False
    for index, char in enumerate(argument):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif in_quotes:
            continue
        elif bracketed and char == ">":
            # Anything glued to the bracket belongs to the path (and spoils it).
            return _find_space(argument, index + 1)
        elif not bracketed and char in " \t":
            return index
    return len(argument)


def _find_space(text: str, start: int) -> int:
    for index in range(start, len(text)):
        if text[index] in " \t":
            return index
    return len(text)


def _strip_brackets(text: str, *, strict: bool, error: type[Exception]) -> str:
    if text.startswith("<") and text.endswith(">") and len(text) >= 2:
        inner = text[1:-1]
    elif strict:
        raise error
    else:
        inner = text
    if _has_unquoted(inner, "<>"):
        raise error
    return inner


def _has_unquoted(text: str, specials: str) -> bool:
    """Whether one of `specials` stands outside quotes in a path's brackets (`\\` escapes there too)."""
    if '"' not in text and "\\" not in text:     # nothing quoted or escaped: every character counts
        return any(char in text for char in specials)
    kept, _ = unquoted_characters(text, escapes_outside_quotes=True)
    return any(char in specials for _, char in kept)


def unquoted_characters(text: str, *, escapes_outside_quotes: bool = False) -> tuple[list[tuple[int, str]], bool]:
    """The characters of `text` outside its quoted strings, with their indexes, and whether a
    quoted string is left open at the end. A quote mark is never kept; `\\` escapes the next
    character inside a quoted string (both dropped), and outside one only when
    `escapes_outside_quotes` (else it is an ordinary character, kept). The one scanner for an
    address's operators: the last `@` (last_unquoted_at), and trivial-rewrite's `!`, `%`, `@`
    that count as such (routing/addresses.py)."""
    kept: list[tuple[int, str]] = []
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or escapes_outside_quotes):
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted:
            kept.append((index, char))
    return kept, quoted


def last_unquoted_at(address: str) -> int:
    """The index of the last `@` outside a quoted string, or -1."""
    if '"' not in address:      # no quoted string (a `\\` outside one is an ordinary character)
        return address.rfind("@")
    kept, _ = unquoted_characters(address)
    return max((index for index, char in kept if char == "@"), default=-1)


def _drop_source_route(inner: str, *, strict: bool, error: type[Exception]) -> str:
    """`@a,@b:user@c` -> `user@c`, after checking that each hop is a domain.
    A hop may be an address literal, whose IPv6 form contains colons."""
    position = 0
    while True:
        if inner[position:position + 1] != "@":
            raise error
        end = _end_of_hop(inner, position + 1)
        _checked_domain(inner[position + 1:end], strict=strict, error=error)
        if end >= len(inner):
            raise error
        position = end + 1
        if inner[end] == ":":
            break
    if position >= len(inner):
        raise error
    return inner[position:]


def _end_of_hop(inner: str, start: int) -> int:
    in_literal = False
    for index in range(start, len(inner)):
        char = inner[index]
        if char == "[":
            in_literal = True
        elif char == "]":
            in_literal = False
        elif char in ",:" and not in_literal:
            return index
    return len(inner)


def _split_mailbox(mailbox: str, error: type[Exception]) -> tuple[str, str | None]:
    """Split at the last `@` outside quotes; (local, None) when there is none."""
    if '"' not in mailbox:      # no quoted string: the last `@` is the one (a fast path: RCPT by RCPT)
        at = mailbox.rfind("@")
    else:
        kept, open_quote = unquoted_characters(mailbox)
        if open_quote:
            raise error
        at = max((index for index, char in kept if char == "@"), default=-1)
    if at < 0:
        return mailbox, None
    return mailbox[:at], mailbox[at + 1:]


def _check_local_part(local: str, *, strict: bool, error: type[Exception]) -> None:
    if not local:
        raise error
    if strict and len(local.encode("utf-8")) > LOCAL_PART_LIMIT:
        raise error
    if local.startswith('"'):
        if not _is_quoted_string(local):
            raise error
    elif strict:
        if not all(atom and _is_atext(atom) for atom in local.split(".")):
            raise error
    elif not _is_lenient_dot_string(local) or local.startswith("@"):
        # A bare local part that starts with `@` (left by <@a:@b@c>) would
        # read back as a source route: refuse it rather than change meaning.
        raise error


def _is_atext(text: str) -> bool:
    return all(char in _ATEXT or not char.isascii() for char in text)


def _is_lenient_dot_string(local: str) -> bool:
    # Dots anywhere, and `@` from addresses such as <a@b@c> (split at the last @).
    if local.isascii():
        return _LENIENT_LOCAL.issuperset(local)
    return all(char in _ATEXT or char in ".@" or not char.isascii() for char in local)


def _is_quoted_string(local: str) -> bool:
    """RFC 5321 Quoted-string: qtextSMTP or backslash + printable ASCII."""
    if len(local) < 2 or not local.endswith('"'):
        return False
    content = local[1:-1]
    escaped = False
    for char in content:
        if escaped:
            if not (" " <= char <= "~"):
                return False
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return False
        elif char.isascii() and not (" " <= char <= "~"):
            return False
    return not escaped


def _checked_domain(domain: str, *, strict: bool, error: type[Exception]) -> str:
    """The domain as it should be stored, or AddressError."""
    if domain.startswith("["):
        if not _is_address_literal(domain):
            raise error
        return domain
    if domain.endswith(".") and not strict:
        domain = domain[:-1]
    if not domain or len(domain.encode("utf-8")) > DOMAIN_LIMIT:
        raise error
    allowed = _LABEL_CHARS if strict else _LENIENT_LABEL_CHARS
    for label in domain.split("."):
        if not label or len(label.encode("utf-8")) > LABEL_LIMIT:
            raise error
        if label[0] == "-" or label[-1] == "-":
            raise error
        if not (allowed.issuperset(label) if label.isascii()
                else all(char in allowed or not char.isascii() for char in label)):
            raise error
    # A domain of digits and dots is an IP address written without brackets.
    if _DIGITS_AND_DOTS.issuperset(domain):
        raise error
    return domain


def is_ipv4(text: str) -> bool:
    """`192.0.2.1`: an IPv4 address, written without brackets."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_address_literal(literal: str) -> bool:
    if not literal.endswith("]") or len(literal) < 3:
        return False
    content = literal[1:-1]
    try:
        if content[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(content[5:])
        else:
            ipaddress.IPv4Address(content)
    except ValueError:
        return False
    return True
