r"""regexp: lookup tables, as regexp_table(5) describes them.

A table is a list of rules tried in file order. The first rule whose POSIX
regular expression matches the key (anywhere in it, unless anchored), or
for `!/re/` does not match it, answers with its result, in which `$n` is
replaced by the text of group n. `if /re/` ... `endif` guards the rules
between them.

Postfix compiles patterns with the C library's regcomp(3) in the C locale,
so matching works on bytes and case folding is ASCII-only; we match the
key's UTF-8 bytes for the same reason. Python's `re` speaks another dialect,
so each pattern is rewritten once, at load, into an equivalent Python
pattern (`_PosixTranslator`). The dialect followed is glibc's, the C library
of the Postfix these tables were checked against, including its GNU
extensions (`\w \W \s \S \b \B \< \>` and, in basic syntax, `\| \+ \?`) and
its quirks: with the default `i` flag an escaped lower-case letter matches
nothing, so `\d` never matches (without `i` it is the letter "d"). Perl-only
syntax is not POSIX: `(?` is an error and `*?` is a greedy `*` made
optional, as they are for regcomp.

Malformed rules are skipped with a warning, as Postfix skips them; see
`RegexpTable.warnings`. Only an unreadable file or a malformed inline table
("regexp:{ {rule}, ... }") is an error.

Known differences from Postfix:
- POSIX takes the leftmost-longest match; Python takes the first
  alternative that succeeds. Whether a rule matches never differs, but the
  text a group captures can: `/^(a|ab)/ $1` gives "ab" in Postfix and "a"
  here, and a group repeated by `*` may end on an empty final iteration
  here. Order alternatives longest-first to get the same answer.
- Patterns with nested repetition, such as `(.+)+@`, backtrack
  exponentially in Python on long keys that do not match; regcomp does not.
- Without the `m` flag glibc also lets `^` match just after, and `$` just
  before, a newline that the same match consumes (`/a$./`); here they
  match only at the start and end of the key, as the manual says.
- A `$n` index too big for a C int is "out of range" here; Postfix wraps it.
- Groups nested more than about a hundred deep are refused with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from mailferry.syntax import logical_lines
from mailferry.tables.base import Table, TableError
from mailferry.tables.posix_regex import PosixRegexError, compile_posix
from mailferry.tables.result import MISSING, LookupResult, found

# C isspace() and isalnum() in the C locale; str.isspace() and str.isalnum()
# accept far more, which Postfix would treat as ordinary text.
_SPACE = " \t\n\v\f\r"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS = frozenset("0123456789")

_Warn = Callable[[int, str], None]


class RegexpWarning(NamedTuple):
    """Something Postfix warns about when it opens the table, with Postfix's wording.

    As text, "FILE, line N: message", like every table's warnings.
    """

    line: int
    message: str
    file: str

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}: {self.message}"


class RegexpTable(Table):
    type_name = "regexp"
    is_pattern = True
    folds_keys = False  # the `i` flag, on by default, makes each pattern caseless

    def __init__(self, name: str):
        super().__init__(name)
        # What Postfix would warn about; most are rules it skips.
        self.warnings: list[RegexpWarning] = []
        text = _inline_text(name) if name.startswith("{") else _read_file(name)
        self._rules = _RuleLoader(self._warn).load(text)

    def _warn(self, line: int, message: str) -> None:
        self.warnings.append(RegexpWarning(line, message, "regexp:{inline}" if self.name.startswith("{") else self.name))

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


def _logical_lines(text: str, warn: _Warn) -> Iterator[tuple[int, str]]:
    """(first physical line number, text) of each logical line, as mailferry.syntax reads them."""
    def dropped(line: int, joined: str) -> None:
        warn(line, f'logical line must not start with whitespace: "{joined}"')

    for logical in logical_lines(text.split("\n"), dropped):
        yield logical.line, logical.text


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

    def __init__(self, warn: _Warn):
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
        constant = None if indexes else found("".join(part for part in parts if isinstance(part, str)))
        result = _Result(tuple(parts), constant)
        self.rules.append(_Rule(compiled.search, pattern.negated, line, result, len(self.rules) + 1))

    def _pattern(self, line: int, text: str) -> _Pattern | None:
        """Parse `[!]<delim>regex<delim>flags`, warning about what Postfix rejects."""
        opening, negated = _skip_negations(text)
        if opening == len(text):
            self.warn(line, "no regexp: skipping this rule")
            return None
        delimiter = text[opening]
        close = _closing_delimiter(text, opening + 1, delimiter)
        if close < 0:
            self.warn(line, f'no closing regexp delimiter "{delimiter}": skipping this rule')
            return None
        flags_end = close + 1
        while flags_end < len(text) and text[flags_end] not in _SPACE:
            flags_end += 1
        flags = self._flags(line, text[close + 1:flags_end])
        if flags is None:
            return None
        icase, multiline, extended = flags
        rest = text[_skip_space(text, flags_end):]
        return _Pattern(negated, text[opening + 1:close], icase, multiline, extended, rest)

    def _flags(self, line: int, letters: str) -> tuple[bool, bool, bool] | None:
        """(icase, multiline, extended) after toggling the defaults once per letter."""
        settings = {"i": True, "m": False, "x": True}
        for letter in letters:
            if letter not in settings:
                self.warn(line, f'unknown regexp option "{letter}": skipping this rule')
                return None
            settings[letter] = not settings[letter]
        return settings["i"], settings["m"], settings["x"]

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


def _skip_negations(text: str) -> tuple[int, bool]:
    """Where the pattern starts after any `!`s, and whether they negate it (each one toggles)."""
    pos, negated = _skip_space(text, 0), False
    while pos < len(text) and text[pos] == "!":
        pos, negated = _skip_space(text, pos + 1), not negated
    return pos, negated


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
    while (dollar := text.find("$", pos)) >= 0:
        literal.append(text[pos:dollar])
        if text.startswith("$$", dollar):
            literal.append("$")
            pos = dollar + 2
            continue
        name, pos = _reference_name(text, dollar + 1)
        if pos < 0:
            problems.append(f'truncated macro reference: "{text}"')
            break
        if not name:
            problems.append(f'empty macro name: "{text}"')
            break
        if problem := _group_number_problem(name):
            problems.append(problem)
            continue
        parts += ["".join(literal), int(name)]
        literal.clear()
    else:
        literal.append(text[pos:])
    parts.append("".join(literal))
    return [part for part in parts if part != ""] or [""], problems


def _reference_name(text: str, pos: int) -> tuple[str, int]:
    """The name of the reference starting at `pos` (after `$`) and where it ends; -1 if unclosed."""
    if pos < len(text) and text[pos] in "{(":
        close = _closing_bracket(text, pos)
        return (text[pos + 1:close], close + 1) if close >= 0 else ("", -1)
    end = pos
    while end < len(text) and (text[end] in _ALNUM or text[end] == "_"):
        end += 1
    return text[pos:end], end


def _group_number_problem(name: str) -> str | None:
    if not set(name) <= _DIGITS:
        return f'non-numeric replacement index "{name}"'
    if int(name) == 0:
        return f'out-of-range replacement index "{name}"'
    return None


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
