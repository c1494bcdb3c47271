"""What regexp: and pcre: tables share: their file format and their rule engine.

Both are lists of rules tried in file order, as regexp_table(5) and
pcre_table(5) describe them: `[!]/pattern/flags result`, `if /pattern/` ...
`endif`, `$n` in results, the "{ {rule}, ... }" inline form, and the same
warnings for the rules Postfix skips. What differs is the pattern language
and its flags; a `Dialect` supplies those (regexp.py: POSIX regcomp rewritten
for Python's re; pcre.py: PCRE2 itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from mailferry.syntax import logical_lines
from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found

# C isspace() and isalnum() in the C locale; str.isspace() and str.isalnum()
# accept far more, which Postfix would treat as ordinary text.
_SPACE = " \t\n\v\f\r"
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS = frozenset("0123456789")

_Warn = Callable[[int, str], None]


class Match(Protocol):
    def group(self, index: int) -> bytes | None: ...


class Compiled(NamedTuple):
    """A pattern ready to run: `search(key bytes)` gives a match or None; `groups` counts its groups."""

    search: Callable[[bytes], Match | None]
    groups: int


class PatternError(ValueError):
    """A pattern its engine refuses; the message is the warning Postfix gives for it."""


class Dialect(Protocol):
    """The pattern language of one table type."""

    # How Postfix ends the warning about a missing closing delimiter.
    unclosed_delimiter_action: str
    # How Postfix spells the warning about `$0`.
    zero_index_message: str

    def flags(self, letters: str, warn: Callable[[str], None]) -> Any | None:
        """The options that the flag letters after a pattern select; None (after warning) to skip the rule."""

    def compile(self, pattern: bytes, options: Any, negated: bool) -> Compiled:
        """Raises PatternError."""


class RuleWarning(NamedTuple):
    """Something Postfix warns about when it opens the table, with Postfix's wording.

    As text, "FILE, line N: message", like every table's warnings.
    """

    line: int
    message: str
    file: str

    def __str__(self) -> str:
        return f"{self.file}, line {self.line}: {self.message}"


class RuleTable(Table):
    """A table of pattern rules; subclasses set `type_name` and `dialect`."""

    is_pattern = True
    folds_keys = False  # the `i` flag, on by default, makes each pattern caseless
    dialect: Dialect

    def __init__(self, name: str):
        super().__init__(name)
        # What Postfix would warn about; most are rules it skips.
        self.warnings: list[RuleWarning] = []
        text = inline_text(name) if name.startswith("{") else read_file(name)
        self._rules = self._load(text)

    def _load(self, text: str) -> list[Rule]:
        return _RuleLoader(self.dialect, self._warn).load(text)

    def _warn(self, line: int, message: str) -> None:
        where = f"{self.type_name}:{{inline}}" if self.name.startswith("{") else self.name
        self.warnings.append(RuleWarning(line, message, where))

    def lookup_now(self, key: str) -> LookupResult:
        return run_rules(self._rules, key.encode("utf-8", "surrogateescape"))


def run_rules(rules: list[Rule], subject: Any) -> LookupResult:
    """The first rule that applies answers; an `if` that does not apply skips its block."""
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


def read_file(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise TableError("no such file; create it, or fix the table name", path) from None
    except OSError as exc:
        raise TableError(f"cannot open: {exc.strerror}", path) from None
    return data.decode("utf-8", "surrogateescape")


def inline_text(name: str) -> str:
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


def statements(text: str, warn: _Warn) -> Iterator[tuple[int, str]]:
    """(first physical line number, text) of each logical line, as mailferry.syntax reads them."""
    def dropped(line: int, joined: str) -> None:
        warn(line, f'logical line must not start with whitespace: "{joined}"')

    for logical in logical_lines(text.split("\n"), dropped):
        yield logical.line, logical.text


# --- rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """A rule's result text, split at its `$n` references."""

    parts: tuple[str | int, ...]
    constant: LookupResult | None  # the answer when the text has no `$n`

    def answer(self, match: Match | None) -> LookupResult:
        if self.constant is not None:
            return self.constant
        assert match is not None  # negated rules may not use $n, so they are constant
        return found("".join(
            part if isinstance(part, str) else (match.group(part) or b"").decode("utf-8", "surrogateescape")
            for part in self.parts))


@dataclass(slots=True)
class Rule:
    search: Callable[[bytes], Match | None]
    negated: bool
    line: int
    result: Result | None  # None for an `if`
    # Where to go when the rule does not apply: the next rule, or for an
    # `if`, the rule after its `endif`.
    skip_to: int = 0


@dataclass(frozen=True, slots=True)
class _Pattern:
    negated: bool
    regex: str
    options: Any  # what the dialect made of the flags
    rest: str  # the text after the flags, leading whitespace removed


class _RuleLoader:
    """Turns the statements of one table into a flat list of `Rule`s."""

    def __init__(self, dialect: Dialect, warn: _Warn):
        self.dialect = dialect
        self.warn = warn
        self.rules: list[Rule] = []
        self.open_ifs: list[Rule] = []

    def load(self, text: str) -> list[Rule]:
        for line, statement in statements(text, self.warn):
            self._statement(line, statement)
        for rule in reversed(self.open_ifs):
            self.warn(rule.line, "IF has no matching ENDIF")
            rule.skip_to = len(self.rules)
        return self.rules

    def _statement(self, line: int, text: str) -> None:
        if starts_with_keyword(text, "if"):
            self._if(line, text[2:])
        elif starts_with_keyword(text, "endif"):
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
        rule = Rule(compiled.search, pattern.negated, line, None)
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
        result = Result(tuple(parts), constant)
        self.rules.append(Rule(compiled.search, pattern.negated, line, result, len(self.rules) + 1))

    def _pattern(self, line: int, text: str) -> _Pattern | None:
        """Parse `[!]<delim>regex<delim>flags`, warning about what Postfix rejects."""
        opening, negated = _skip_negations(text)
        if opening == len(text):
            self.warn(line, "no regexp: skipping this rule")
            return None
        delimiter = text[opening]
        close = _closing_delimiter(text, opening + 1, delimiter)
        if close < 0:
            self.warn(line, f'no closing regexp delimiter "{delimiter}": '
                            f'{self.dialect.unclosed_delimiter_action} this rule')
            return None
        flags_end = close + 1
        while flags_end < len(text) and text[flags_end] not in _SPACE:
            flags_end += 1
        options = self.dialect.flags(text[close + 1:flags_end], lambda message: self.warn(line, message))
        if options is None:
            return None
        rest = text[_skip_space(text, flags_end):]
        return _Pattern(negated, text[opening + 1:close], options, rest)

    def _result_parts(self, line: int, text: str) -> list[str | int] | None:
        parts, problems = _parse_result(text, self.dialect.zero_index_message)
        if problems:
            for problem in problems:
                self.warn(line, problem)
            self.warn(line, "bad replacement syntax: skipping this rule")
            return None
        return parts

    def _compile(self, line: int, pattern: _Pattern) -> Compiled | None:
        try:
            return self.dialect.compile(pattern.regex.encode("utf-8", "surrogateescape"),
                                        pattern.options, pattern.negated)
        except PatternError as exc:
            self.warn(line, str(exc))
            return None


def starts_with_keyword(text: str, keyword: str) -> bool:
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


def _parse_result(text: str, zero_index_message: str) -> tuple[list[str | int], list[str]]:
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
        if problem := _group_number_problem(name, zero_index_message):
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


def _group_number_problem(name: str, zero_index_message: str) -> str | None:
    if not set(name) <= _DIGITS:
        return f'non-numeric replacement index "{name}"'
    if int(name) == 0:
        return f'{zero_index_message} "{name}"'
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
