"""regexp: lookup tables, as regexp_table(5) describes them.

A table is a list of rules tried in file order. The first rule whose POSIX
regular expression matches the whole key (or, for `!/re/`, does not match
it) answers, with `$n` in its result replaced by the text of group n.
`if /re/` ... `endif` guards the rules between them.

Postfix compiles patterns with the C library's regcomp(3) in the C locale,
so matching works on bytes and case folding is ASCII-only; we match the
key's UTF-8 bytes for the same reason. Python's `re` speaks another dialect,
so each pattern is rewritten once, at load, into an equivalent Python
pattern (`_PosixTranslator`). The dialect followed is glibc's, the C library
of the Postfix these tables were checked against, including its GNU
extensions: `\\w \\W \\s \\S \\b \\B \\< \\>` everywhere and `\\| \\+ \\?` in basic
syntax. Perl-only syntax is not POSIX: `\\d` means the letter "d", `(?` is
an error and `*?` is a greedy `*` made optional, as they are for regcomp.

Malformed rules are skipped with a warning, as Postfix skips them; see
`RegexpTable.warnings`. Only an unreadable file or a malformed inline table
("regexp:{ {rule}, ... }") is an error.

Known differences from Postfix:
- POSIX takes the leftmost-longest match; Python takes the first
  alternative that succeeds. Whether a rule matches never differs, but the
  text a group captures can: `/^(a|ab)/ $1` gives "ab" in Postfix and "a"
  here. Reorder such alternatives longest-first to get the same answer.
- Patterns that backtrack exponentially in Python, such as `(a*)*b`, are
  slow here on long non-matching keys; regcomp does not backtrack.
- A `$n` index too big for a C int is "out of range" here; Postfix wraps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found

# C isspace() and isalnum() in the C locale; str.isspace() and str.isalnum()
# accept far more, which Postfix would treat as ordinary text.
_SPACE = " \t\n\v\f\r"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS = frozenset("0123456789")

Warn = Callable[[int, str], None]


class RegexpTable(Table):
    type_name = "regexp"
    is_pattern = True
    folds_keys = False  # the `i` flag, on by default, makes each pattern caseless

    def __init__(self, name: str):
        super().__init__(name)
        # (line, message) for each rule Postfix would warn about and skip.
        self.warnings: list[tuple[int, str]] = []
        text = _inline_text(name) if name.startswith("{") else _read_file(name)
        self._rules = _RuleLoader(self._warn).load(text)

    def _warn(self, line: int, message: str) -> None:
        self.warnings.append((line, message))

    def lookup_now(self, key: str) -> LookupResult:
        subject = key.encode("utf-8", "surrogateescape")
        rules = self._rules
        index, count = 0, len(rules)
        while index < count:
            rule = rules[index]
            match = rule.search(subject)
            if (match is None) is rule.negated:
                if rule.result is None:  # an `if` whose condition holds: enter its block
                    index += 1
                    continue
                return rule.result.answer(match)
            index = rule.skip_to
        return MISSING


# --- where the rules come from ---------------------------------------------


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise TableError("no such file; create it, or fix the table name", path) from None
    except OSError as exc:
        raise TableError(f"cannot open: {exc.strerror}", path) from None
    return data.decode("utf-8", "surrogateescape")


def _inline_text(name: str) -> str:
    """The in-memory file Postfix 3.7 makes of "{ {rule-1}, {rule-2} }": one line per rule."""
    close = _closing_brace(name, 0)
    if close < 0:
        raise TableError(f"missing '}}' in \"{name}\"")
    if close != len(name) - 1:
        raise TableError(f"syntax error after '}}' in \"{name}\"")
    return "".join(rule + "\n" for rule in _inline_rules(name[1:close]))


def _inline_rules(text: str) -> Iterator[str]:
    separators = _SPACE + ","
    pos = 0
    while True:
        while pos < len(text) and text[pos] in separators:
            pos += 1
        if pos == len(text):
            return
        end = pos
        while end < len(text) and text[end] not in separators:
            end += 1
        if text[pos] != "{":
            raise TableError(f"no '{{' at start of text in \"{text[pos:end]}\"")
        close = _closing_brace(text, pos)
        if close < 0:
            raise TableError(f"missing '}}' in \"{text[pos:]}\"")
        if close + 1 < len(text) and text[close + 1] not in separators:
            end = max(end, close + 1)
            while end < len(text) and text[end] not in separators:
                end += 1
            raise TableError(f"syntax error after '}}' in \"{text[pos:end]}\"")
        yield text[pos + 1:close].strip(_SPACE)
        pos = close + 1


def _closing_brace(text: str, opening: int) -> int:
    depth = 0
    for index in range(opening, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _logical_lines(text: str, warn: Warn) -> Iterator[tuple[int, str]]:
    """(first physical line number, text) of each logical line, right-stripped.

    Postfix joins continuation lines as written, skips blank and comment
    lines without ending the logical line, and drops (with a warning) a
    logical line that starts with whitespace, which happens only at the top
    of the file.
    """
    pending, start = "", 0
    for number, physical in enumerate(text.split("\n"), 1):
        stripped = physical.lstrip(_SPACE)
        if not stripped or stripped[0] == "#":
            continue
        if physical[0] in _SPACE and pending:
            pending += physical
            continue
        if pending:
            yield from _finished_line(start, pending, warn)
        pending, start = physical, number
    if pending:
        yield from _finished_line(start, pending, warn)


def _finished_line(start: int, text: str, warn: Warn) -> Iterator[tuple[int, str]]:
    text = text.rstrip(_SPACE)
    if text[0] in _SPACE:
        warn(start, f'logical line must not start with whitespace: "{text}"')
    else:
        yield start, text


# --- rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Result:
    """A rule's result text, split at its `$n` references."""

    parts: tuple[str | int, ...]
    constant: LookupResult | None  # the answer when the text has no `$n`

    def answer(self, match: re.Match[bytes] | None) -> LookupResult:
        if self.constant is not None:
            return self.constant
        assert match is not None  # negated rules may not use $n, so they are constant
        return found("".join(
            part if isinstance(part, str) else (match.group(part) or b"").decode("utf-8", "surrogateescape")
            for part in self.parts))


@dataclass(slots=True)
class _Rule:
    search: Callable[[bytes], re.Match[bytes] | None]
    negated: bool
    line: int
    result: _Result | None  # None for an `if`
    # Where to go when the rule does not apply: the next rule, or for an
    # `if`, the rule after its `endif`.
    skip_to: int = 0


@dataclass(frozen=True, slots=True)
class _Pattern:
    negated: bool
    regex: str
    icase: bool
    multiline: bool
    extended: bool
    rest: str  # the text after the flags, leading whitespace removed


class _RuleLoader:
    """Turns the statements of one table into a flat list of `_Rule`s."""

    def __init__(self, warn: Warn):
        self.warn = warn
        self.rules: list[_Rule] = []
        self.open_ifs: list[_Rule] = []

    def load(self, text: str) -> list[_Rule]:
        for line, statement in _logical_lines(text, self.warn):
            self._statement(line, statement)
        for rule in reversed(self.open_ifs):
            self.warn(rule.line, "IF has no matching ENDIF")
            rule.skip_to = len(self.rules)
        return self.rules

    def _statement(self, line: int, text: str) -> None:
        if _starts_with_keyword(text, "if"):
            self._if(line, text[2:])
        elif _starts_with_keyword(text, "endif"):
            self._endif(line, text[5:])
        elif text[0] in _ALNUM:
            self.warn(line, "ignoring unrecognized request")
        else:
            self._match_rule(line, text)

    def _if(self, line: int, text: str) -> None:
        pattern = self._pattern(line, text)
        if pattern is None:
            return
        if pattern.rest:
            self.warn(line, f'ignoring extra text after IF statement: "{pattern.rest}"')
            # Extra text usually means a rule was indented and so joined to the `if` line.
            self.warn(line, "do not prepend whitespace to statements between IF and ENDIF")
        compiled = self._compile(line, pattern)
        if compiled is None:
            return
        rule = _Rule(compiled.search, pattern.negated, line, None)
        self.rules.append(rule)
        self.open_ifs.append(rule)

    def _endif(self, line: int, text: str) -> None:
        if not self.open_ifs:
            self.warn(line, "ignoring ENDIF without matching IF")
            return
        if text.strip(_SPACE):
            self.warn(line, "ignoring extra text after ENDIF")
        self.open_ifs.pop().skip_to = len(self.rules)

    def _match_rule(self, line: int, text: str) -> None:
        pattern = self._pattern(line, text)
        if pattern is None:
            return
        if not pattern.rest:
            self.warn(line, "no replacement text: using empty string")
        parts = self._result_parts(line, pattern.rest)
        if parts is None:
            return
        indexes = [part for part in parts if isinstance(part, int)]
        if pattern.negated and indexes:
            self.warn(line, "$number found in negative match replacement text: skipping this rule")
            return
        compiled = self._compile(line, pattern)
        if compiled is None:
            return
        if indexes and max(indexes) > compiled.groups:
            self.warn(line, f'out of range replacement index "{max(indexes)}": skipping this rule')
            return
        constant = None if indexes else found("".join(parts))  # type: ignore[arg-type]
        result = _Result(tuple(parts), constant)
        self.rules.append(_Rule(compiled.search, pattern.negated, line, result, len(self.rules) + 1))

    def _pattern(self, line: int, text: str) -> _Pattern | None:
        """Parse `[!]<delim>regex<delim>flags`, warning about what Postfix rejects."""
        pos, negated = 0, False
        while True:
            pos = _skip_space(text, pos)
            if pos < len(text) and text[pos] == "!":
                negated = not negated
                pos += 1
                continue
            break
        if pos == len(text):
            self.warn(line, "no regexp: skipping this rule")
            return None
        opening, delimiter = pos, text[pos]
        close = _closing_delimiter(text, opening + 1, delimiter)
        if close < 0:
            self.warn(line, f'no closing regexp delimiter "{delimiter}": skipping this rule')
            return None
        icase, multiline, extended = True, False, True
        pos = close + 1
        while pos < len(text) and text[pos] not in _SPACE:
            flag = text[pos]
            if flag == "i":
                icase = not icase
            elif flag == "m":
                multiline = not multiline
            elif flag == "x":
                extended = not extended
            else:
                self.warn(line, f'unknown regexp option "{flag}": skipping this rule')
                return None
            pos += 1
        rest = text[_skip_space(text, pos):]
        return _Pattern(negated, text[opening + 1:close], icase, multiline, extended, rest)

    def _result_parts(self, line: int, text: str) -> list[str | int] | None:
        parts, problems = _parse_result(text)
        if problems:
            for problem in problems:
                self.warn(line, problem)
            self.warn(line, "bad replacement syntax: skipping this rule")
            return None
        return parts

    def _compile(self, line: int, pattern: _Pattern) -> re.Pattern[bytes] | None:
        try:
            return compile_posix(pattern.regex.encode("utf-8", "surrogateescape"),
                                 extended=pattern.extended, icase=pattern.icase,
                                 multiline=pattern.multiline)
        except PosixRegexError as exc:
            self.warn(line, str(exc))
            return None


def _starts_with_keyword(text: str, keyword: str) -> bool:
    size = len(keyword)
    return text[:size].lower() == keyword and (len(text) == size or text[size] not in _ALNUM)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _closing_delimiter(text: str, pos: int, delimiter: str) -> int:
    """Index of the delimiter closing a regex that starts at `pos`; a backslash hides one character."""
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
        elif char == delimiter:
            return pos
        else:
            pos += 1
    return -1


def _parse_result(text: str) -> tuple[list[str | int], list[str]]:
    """Split result text into literal text and group numbers, and list what Postfix rejects.

    `$$` is a dollar; `$n`, `${n}` and `$(n)` are group n. A reference that
    cannot be read ends the scan, as it does for Postfix.
    """
    parts: list[str | int] = []
    problems: list[str] = []
    literal: list[str] = []
    pos = 0
    while pos < len(text):
        dollar = text.find("$", pos)
        if dollar < 0:
            literal.append(text[pos:])
            break
        literal.append(text[pos:dollar])
        pos = dollar + 1
        if text.startswith("$", pos):
            literal.append("$")
            pos += 1
            continue
        if pos < len(text) and text[pos] in "{(":
            close = _closing_bracket(text, pos)
            if close < 0:
                problems.append(f'truncated macro reference: "{text}"')
                break
            name, pos = text[pos + 1:close], close + 1
        else:
            end = pos
            while end < len(text) and (text[end] in _ALNUM or text[end] == "_"):
                end += 1
            name, pos = text[pos:end], end
        if not name:
            problems.append(f'empty macro name: "{text}"')
            break
        if not set(name) <= _DIGITS:
            problems.append(f'non-numeric replacement index "{name}"')
        elif int(name) == 0:
            problems.append(f'out-of-range replacement index "{name}"')
        else:
            parts.append("".join(literal))
            literal.clear()
            parts.append(int(name))
    parts.append("".join(literal))
    return [part for part in parts if part != ""] or [""], problems


def _closing_bracket(text: str, opening: int) -> int:
    open_char = text[opening]
    close_char = "}" if open_char == "{" else ")"
    depth = 0
    for index in range(opening, len(text)):
        if text[index] == open_char:
            depth += 1
        elif text[index] == close_char:
            depth -= 1
            if depth == 0:
                return index
    return -1


# --- POSIX regular expressions, rewritten for Python's re --------------------


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

# GNU escapes, in both syntaxes. Word boundaries are anchors: nothing to repeat.
_ESCAPED_ATOMS = {ord("w"): r"\w", ord("W"): r"\W", ord("s"): r"\s", ord("S"): r"\S"}
_ESCAPED_ANCHORS = {
    ord("b"): r"\b", ord("B"): r"(?:\B|\A\Z)", ord("<"): r"(?:\b(?=\w))", ord(">"): r"(?:\b(?<=\w))",
    ord("`"): r"\A", ord("'"): r"\Z",
}

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
    translated = _PosixTranslator(pattern, extended, icase, multiline).translate()
    flags = re.IGNORECASE if icase else 0
    # Without REG_NEWLINE a newline is an ordinary character, so `.` matches it.
    flags |= re.MULTILINE if multiline else re.DOTALL
    try:
        return re.compile(translated.encode("ascii"), flags)
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
