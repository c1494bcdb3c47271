"""POSIX regular expressions (regcomp(3), as glibc has them), rewritten for Python's re.

regexp tables are written for Postfix, which hands each pattern to the
system's regcomp. Each pattern is translated once, when the table is
opened, so that lookups run on Python's compiled re.
"""

from __future__ import annotations

import re

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class PosixRegexError(ValueError):
    """A pattern regcomp(3) rejects; the message is glibc's regerror() text."""


_EPAREN = "Unmatched ( or \\("
_EBRACK = "Unmatched [, [^, [:, [., or [="
_EBRACE = "Unmatched \\{"
_BADBR = "Invalid content of \\{\\}"
_ERANGE = "Invalid range end"
_ECTYPE = "Invalid character class name"
_ECOLLATE = "Invalid collation character"
_BADRPT = "Invalid preceding regular expression"
_ESUBREG = "Invalid back reference"
_EESCAPE = "Trailing backslash"
_ESIZE = "Regular expression too big"
_BADPAT = "Invalid regular expression"

_DUP_MAX = 0x7FFF  # RE_DUP_MAX: the largest count glibc accepts in {n,m}

# [[:name:]] in the C locale, as byte ranges.
_CHARACTER_CLASSES: dict[bytes, tuple[tuple[int, int], ...]] = {
    b"alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    b"upper": ((0x41, 0x5A),),
    b"lower": ((0x61, 0x7A),),
    b"digit": ((0x30, 0x39),),
    b"xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
    b"alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    b"space": ((0x09, 0x0D), (0x20, 0x20)),
    b"blank": ((0x09, 0x09), (0x20, 0x20)),
    b"punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    b"print": ((0x20, 0x7E),),
    b"graph": ((0x21, 0x7E),),
    b"cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
}

# GNU escapes, in both syntaxes. Word boundaries and the like are anchors,
# which cannot be repeated.
_ESCAPED_ATOMS = {ord("w"): r"\w", ord("W"): r"\W", ord("s"): r"\s", ord("S"): r"\S"}
_ESCAPED_ANCHORS = {
    ord("b"): r"\b", ord("B"): r"(?:\B|\A\Z)", ord("<"): r"(?:\b(?=\w))", ord(">"): r"(?:\b(?<=\w))",
    ord("`"): r"\A", ord("'"): r"\Z",
}

# Matches no byte at all.
_NEVER = r"[^\x00-\xff]"

# What the previous element of a branch was, which decides how `*` and
# friends are read.
_START, _ANCHOR, _ATOM, _REPEATED = range(4)

# How one number of an interval ended, and a number spoiled by other text.
_CLOSE, _COMMA, _END = range(3)
_INVALID = -1

# The kinds of bracket expression element.
_BYTE, _CLASS, _EQUIVALENCE = range(3)


def compile_posix(pattern: bytes, *, extended: bool = True, icase: bool = True,
                  multiline: bool = False) -> re.Pattern[bytes]:
    """Compile a POSIX regular expression as glibc's regcomp(3) would read it.

    `extended`, `icase` and `multiline` are REG_EXTENDED, REG_ICASE and
    REG_NEWLINE. Raises PosixRegexError for a pattern regcomp rejects.
    """
    flags = re.IGNORECASE if icase else 0
    # Without REG_NEWLINE a newline is an ordinary character, so `.` matches it.
    flags |= re.MULTILINE if multiline else re.DOTALL
    try:
        translated = _PosixTranslator(pattern, extended, icase, multiline).translate()
        return re.compile(translated.encode("ascii"), flags)
    except RecursionError:  # glibc takes deeper nesting than either parser here
        raise PosixRegexError("groups nested too deeply for mailferry") from None
    except re.error as exc:  # a translation we did not foresee; report, don't crash
        raise PosixRegexError(f"unsupported regular expression: {exc}") from None


class _PosixTranslator:
    """Reads one POSIX pattern (extended or basic syntax) and writes Python re syntax.

    Every literal byte is written as an escape, so nothing in the pattern
    can take on a meaning it lacks in POSIX.
    """

    def __init__(self, pattern: bytes, extended: bool, icase: bool, multiline: bool):
        self.pattern = pattern
        self.extended = extended
        self.icase = icase
        self.multiline = multiline
        self.pos = 0
        self.groups_opened = 0
        self.groups_closed: set[int] = set()

    def translate(self) -> str:
        translated = self._alternation(depth=0)
        if self.pos < len(self.pattern):  # only a basic-syntax `\)` with no `\(` stops early
            raise PosixRegexError(_EPAREN)
        return translated

    # Structure: alternation, branch, group.

    def _alternation(self, depth: int) -> str:
        # A back reference may name only a group closed before it in its own
        # branch (or before the alternation); after the alternation all count.
        closed_before = set(self.groups_closed)
        closed_in_branches = set()
        branches = [self._branch(depth)]
        while self._at_alternation():
            self.pos += 1 if self.extended else 2
            closed_in_branches |= self.groups_closed
            self.groups_closed = set(closed_before)
            branches.append(self._branch(depth))
        self.groups_closed |= closed_in_branches
        return "|".join(branches)

    def _branch(self, depth: int) -> str:
        pieces: list[str] = []
        previous = _START
        while self.pos < len(self.pattern) and not self._at_branch_end(depth):
            previous = self._element(pieces, previous, depth)
        return "".join(pieces)

    def _at_alternation(self) -> bool:
        if self.extended:
            return self._peek() == b"|"
        return self._peek(2) == b"\\|"

    def _at_branch_end(self, depth: int) -> bool:
        if self._at_alternation():
            return True
        if self.extended:
            return depth > 0 and self._peek() == b")"
        return self._peek(2) == b"\\)"

    def _group(self, depth: int) -> str:
        self.groups_opened += 1
        number = self.groups_opened
        inner = self._alternation(depth + 1)
        closing = b")" if self.extended else b"\\)"
        if self._peek(len(closing)) != closing:
            raise PosixRegexError(_EPAREN)
        self.pos += len(closing)
        self.groups_closed.add(number)
        return f"({inner})"

    # One element of a branch: an atom, an anchor or a repetition.

    def _element(self, pieces: list[str], previous: int, depth: int) -> int:
        if self.extended:
            return self._extended_element(pieces, previous, depth)
        return self._basic_element(pieces, previous, depth)

    def _extended_element(self, pieces: list[str], previous: int, depth: int) -> int:
        char = self.pattern[self.pos]
        self.pos += 1
        if char in b"*+?{":
            if previous in (_START, _ANCHOR):
                raise PosixRegexError(_BADRPT)
            quantifier = self._interval() if char == ord("{") else chr(char)
            return _repeat(pieces, previous, quantifier)
        if char == ord("("):
            pieces.append(self._group(depth))
            return _ATOM
        if char == ord("^"):
            pieces.append("^")
            return _ANCHOR
        if char == ord("$"):
            pieces.append(self._end_anchor())
            return _ANCHOR
        return self._common_atom(pieces, char)

    def _basic_element(self, pieces: list[str], previous: int, depth: int) -> int:
        char = self.pattern[self.pos]
        self.pos += 1
        if char == ord("*"):
            if previous in (_START, _ANCHOR):  # a leading `*` is literal in basic syntax
                pieces.append(_literal(char))
                return _ATOM
            if previous == _REPEATED:
                raise PosixRegexError(_BADRPT)
            return _repeat(pieces, previous, "*")
        if char == ord("\\") and self._peek() in (b"(", b"{", b"+", b"?"):
            return self._basic_operator(pieces, previous, depth)
        if char == ord("^") and previous == _START:
            pieces.append("^")
            return _ANCHOR
        if char == ord("$") and self._at_basic_pattern_end():
            pieces.append(self._end_anchor())
            return _ANCHOR
        return self._common_atom(pieces, char)

    def _basic_operator(self, pieces: list[str], previous: int, depth: int) -> int:
        operator = self.pattern[self.pos]
        self.pos += 1
        if operator == ord("("):
            pieces.append(self._group(depth))
            return _ATOM
        if operator == ord("{"):
            if previous in (_START, _ANCHOR, _REPEATED):
                raise PosixRegexError(_BADRPT)
            return _repeat(pieces, previous, self._interval())
        if previous in (_START, _ANCHOR):  # like `*`, a leading `\+` or `\?` is literal
            pieces.append(_literal(operator))
            return _ATOM
        return _repeat(pieces, previous, chr(operator))

    def _at_basic_pattern_end(self) -> bool:
        """Whether a `$` just read ends its branch, which is where it is an anchor in basic syntax."""
        return self.pos == len(self.pattern) or self._peek(2) in (b"\\)", b"\\|")

    def _end_anchor(self) -> str:
        # Python's `$` also matches before a final newline; POSIX's only at the end.
        return "$" if self.multiline else r"\Z"

    def _common_atom(self, pieces: list[str], char: int) -> int:
        """`.`, a bracket expression, an escape, or a literal byte: the same in both syntaxes."""
        if char == ord("."):
            pieces.append(".")
            return _ATOM
        if char == ord("["):
            pieces.append(self._bracket())
            return _ATOM
        if char == ord("\\"):
            return self._escape(pieces)
        pieces.append(_literal(char))
        return _ATOM

    def _escape(self, pieces: list[str]) -> int:
        if self.pos == len(self.pattern):
            raise PosixRegexError(_EESCAPE)
        char = self.pattern[self.pos]
        self.pos += 1
        if ord("1") <= char <= ord("9"):
            number = char - ord("0")
            if number not in self.groups_closed:
                raise PosixRegexError(_ESUBREG)
            pieces.append(f"(?:\\{number})")
            return _ATOM
        if char in _ESCAPED_ATOMS:
            pieces.append(_ESCAPED_ATOMS[char])
            return _ATOM
        if char in _ESCAPED_ANCHORS:
            pieces.append(_ESCAPED_ANCHORS[char])
            return _ANCHOR
        if self.icase and ord("a") <= char <= ord("z"):
            # glibc folds caseless input to upper case but leaves escaped
            # characters alone, so `\d` (say) can never match: keep it so.
            pieces.append(_NEVER)
            return _ATOM
        pieces.append(_literal(char))
        return _ATOM

    # Repetition counts: `{n}`, `{n,}`, `{n,m}` and `{,m}`.

    def _interval(self) -> str:
        """Read the count after `{` (`\\{` in basic syntax) and return it in Python syntax.

        glibc reads up to the closing brace or a comma even past junk, and
        blames a missing closing brace only when the pattern ends first.
        """
        low, stop = self._count()
        if stop == _END:
            raise PosixRegexError(_EBRACE)
        if low is None:
            if stop != _COMMA:  # `{}`
                raise PosixRegexError(_BADBR)
            low = 0
        if low == _INVALID:
            raise PosixRegexError(_BADBR)
        high: int | None = low
        if stop == _COMMA:
            high, stop = self._count()
            if stop == _END:
                raise PosixRegexError(_EBRACE)
            if high == _INVALID or stop != _CLOSE:
                raise PosixRegexError(_BADBR)
        if high is not None and high < low:
            raise PosixRegexError(_BADBR)
        if max(low, high or 0) > _DUP_MAX:
            raise PosixRegexError(_ESIZE)
        if high is None:
            return f"{{{low},}}"
        return f"{{{low}}}" if high == low else f"{{{low},{high}}}"

    def _count(self) -> tuple[int | None, int]:
        """One number of an interval and what ended it: _CLOSE, _COMMA or _END.

        The number is None when there are no digits and _INVALID when
        anything else came first.
        """
        number: int | None = None
        while self.pos < len(self.pattern):
            char = self.pattern[self.pos]
            if char == ord("\\"):
                escaped = self._peek(2)
                self.pos += len(escaped)
                if escaped == b"\\}" and not self.extended:
                    return number, _CLOSE
                if escaped == b"\\,":
                    return number, _COMMA
                number = _INVALID
                continue
            self.pos += 1
            if char == ord("}") and self.extended:
                return number, _CLOSE
            if char == ord(","):
                return number, _COMMA
            if ord("0") <= char <= ord("9") and number != _INVALID:
                number = min(_DUP_MAX + 1, (number or 0) * 10 + char - ord("0"))
            else:
                number = _INVALID
        return number, _END

    # Bracket expressions.

    def _bracket(self) -> str:
        negated = self._peek() == b"^"
        if negated:
            self.pos += 1
        if self.pos == len(self.pattern):
            raise PosixRegexError(_BADPAT)
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.pos >= len(self.pattern):
                raise PosixRegexError(_EBRACK)
            if self._peek() == b"]" and not first:
                self.pos += 1
                break
            first = False
            ranges.extend(self._bracket_term())
        if negated and self.multiline:
            ranges.append((0x0A, 0x0A))  # with REG_NEWLINE no non-matching list matches a newline
        body = "".join(_class_range(low, high) for low, high in ranges)
        return f"[{'^' if negated else ''}{body}]"

    def _bracket_term(self) -> tuple[tuple[int, int], ...]:
        """One item of a bracket expression: a byte, a range, a [:class:] or an [=equivalence=]."""
        kind, value = self._bracket_element()
        if kind in (_CLASS, _EQUIVALENCE):
            self._refuse_range_after_term()
            return _CHARACTER_CLASSES[value] if kind == _CLASS else ((value[0], value[0]),)
        low = value[0]
        if self._peek() != b"-":
            return ((low, low),)
        if self.pos + 1 == len(self.pattern):
            raise PosixRegexError(_EBRACK)
        if self.pattern[self.pos + 1] == ord("]"):  # a trailing `-` is literal
            return ((low, low),)
        self.pos += 1
        if self._peek(2) in (b"[:", b"[="):
            raise PosixRegexError(_ERANGE)
        high = self._bracket_element()[1][0]
        if self.icase:  # glibc compares caseless range ends in upper case
            low, high = _ascii_upper(low), _ascii_upper(high)
        if low > high:
            raise PosixRegexError(_ERANGE)
        self._refuse_range_after_term()
        return ((low, high),)

    def _refuse_range_after_term(self) -> None:
        """A class, an equivalence class or a range cannot start a range."""
        if self._peek() == b"-" and self._peek(2) != b"-]":
            raise PosixRegexError(_ERANGE)

    def _bracket_element(self) -> tuple[int, bytes]:
        """(_CLASS, name), or (_EQUIVALENCE or _BYTE, the byte) for [=c=], [.c.] or a plain byte."""
        opening = self._peek(2)
        if opening not in (b"[:", b"[.", b"[="):
            self.pos += 1
            return _BYTE, self.pattern[self.pos - 1:self.pos]
        end = self.pattern.find(opening[1:] + b"]", self.pos + 2)
        if end < 0:
            raise PosixRegexError(_EBRACK)
        content = self.pattern[self.pos + 2:end]
        self.pos = end + 2
        if opening == b"[:":
            if content not in _CHARACTER_CLASSES:
                raise PosixRegexError(_ECTYPE)
            return _CLASS, content
        if len(content) != 1:  # the C locale has no multi-character collating elements
            raise PosixRegexError(_ECOLLATE)
        return (_EQUIVALENCE if opening == b"[=" else _BYTE), content

    def _peek(self, size: int = 1) -> bytes:
        return self.pattern[self.pos:self.pos + size]


def _repeat(pieces: list[str], previous: int, quantifier: str) -> int:
    # POSIX reads `a*?` or `a{2}*` as a repetition of a repetition; Python would
    # read a lazy or possessive modifier, or refuse, so group the first one.
    atom = pieces.pop()
    if previous == _REPEATED:
        atom = f"(?:{atom})"
    pieces.append(atom + quantifier)
    return _REPEATED


def _literal(byte: int) -> str:
    char = chr(byte)
    return char if char in _ALNUM else f"\\x{byte:02x}"


def _class_range(low: int, high: int) -> str:
    return f"\\x{low:02x}" if low == high else f"\\x{low:02x}-\\x{high:02x}"


def _ascii_upper(byte: int) -> int:
    return byte - 0x20 if 0x61 <= byte <= 0x7A else byte
