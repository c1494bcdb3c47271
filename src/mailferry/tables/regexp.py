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

from collections.abc import Callable

from mailferry.tables.pattern_rules import Compiled, PatternError, RuleTable, RuleWarning
from mailferry.tables.posix_regex import PosixRegexError, compile_posix

__all__ = ["PosixRegexError", "RegexpTable", "RegexpWarning", "compile_posix"]

RegexpWarning = RuleWarning


class _PosixDialect:
    """regexp_table(5)'s flags: `i` (on by default), `m`, `x` (on by default) each toggle."""

    unclosed_delimiter_action = "skipping"
    zero_index_message = "out-of-range replacement index"

    def flags(self, letters: str, warn: Callable[[str], None]) -> tuple[bool, bool, bool] | None:
        """(icase, multiline, extended) after toggling the defaults once per letter."""
        settings = {"i": True, "m": False, "x": True}
        for letter in letters:
            if letter not in settings:
                warn(f'unknown regexp option "{letter}": skipping this rule')
                return None
            settings[letter] = not settings[letter]
        return settings["i"], settings["m"], settings["x"]

    def compile(self, pattern: bytes, options: tuple[bool, bool, bool], negated: bool) -> Compiled:
        icase, multiline, extended = options
        try:
            compiled = compile_posix(pattern, extended=extended, icase=icase, multiline=multiline)
        except PosixRegexError as exc:
            raise PatternError(str(exc)) from None
        return Compiled(compiled.search, compiled.groups)


class RegexpTable(RuleTable):
    type_name = "regexp"
    dialect = _PosixDialect()
