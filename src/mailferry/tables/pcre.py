r"""pcre: lookup tables, as pcre_table(5) describes them.

The file format, `if`/`endif`, negation and `$n` results are regexp:'s
(tables/pattern_rules.py); the patterns are PCRE2 patterns, run by PCRE2
itself through the `pcre2` bindings, so they mean what they mean to
Postfix. As Postfix compiles them: on bytes (no UTF mode), caseless and
with `.` matching a newline unless the flags say otherwise.

Flags, each toggling one PCRE2 option: `i` (CASELESS, on by default), `m`
(MULTILINE), `s` (DOTALL, on by default), `x` (EXTENDED), `A` (ANCHORED),
`E` (DOLLAR_ENDONLY), `U` (UNGREEDY); `X` is ignored with Postfix's
warning, as Postfix built with PCRE2 ignores it.

Known differences from Postfix (docs/tables.md lists them too):
- The bindings compile every pattern with PCRE2_ALT_BSUX and
  PCRE2_NEVER_BACKSLASH_C. So `\U` is a literal "U" and `\u` a literal "u"
  (errors for Postfix), `\uHHHH` is a character, `\x` takes exactly two hex
  digits (`\x{41}` and `\x4` are not the escapes they are for Postfix), and
  `\C` is refused (the rule is skipped with a warning).
- The bundled PCRE2 may be a newer release than the system's.
"""

from __future__ import annotations

from collections.abc import Callable

import pcre2

from mailferry.tables.pattern_rules import Compiled, Match, PatternError, RuleTable

# PCRE2's compile options (pcre2.h); the bindings name only some of them.
_CASELESS = 0x00000008
_DOTALL = 0x00000020
_DOLLAR_ENDONLY = 0x00000010
_EXTENDED = 0x00000080
_MULTILINE = 0x00000400
_UNGREEDY = 0x00040000
# PCRE2_ANCHORED. The bindings drop it at compile time, so an anchored
# pattern is run with `match`, which passes it at match time: for PCRE2 the
# two are the same.
_ANCHORED = 0x80000000

_FLAG_OPTIONS = {"i": _CASELESS, "m": _MULTILINE, "s": _DOTALL, "x": _EXTENDED,
                 "A": _ANCHORED, "E": _DOLLAR_ENDONLY, "U": _UNGREEDY}


class _Pcre2Dialect:
    unclosed_delimiter_action = "ignoring"
    zero_index_message = "out of range replacement index"

    def flags(self, letters: str, warn: Callable[[str], None]) -> int | None:
        options = _CASELESS | _DOTALL
        for letter in letters:
            if letter == "X":
                warn(f'ignoring obsolete regexp option "{letter}"')
            elif letter in _FLAG_OPTIONS:
                options ^= _FLAG_OPTIONS[letter]
            else:
                warn(f'unknown regexp option "{letter}": skipping this rule')
                return None
        return options

    def compile(self, pattern: bytes, options: int, negated: bool) -> Compiled:
        try:
            compiled = pcre2.compile(pattern, options & ~_ANCHORED)
        except pcre2.PatternError as exc:
            reason = exc.msg.partition("; ")[2] or exc.msg
            raise PatternError(f"error in regex at offset {exc.pos}: {reason}") from None
        run = compiled.match if options & _ANCHORED else compiled.search
        return Compiled(_guarded(run, negated), compiled.groups)


def _guarded(run: Callable[[bytes], Match | None], negated: bool) -> Callable[[bytes], Match | None]:
    """A match error (a backtracking limit) makes the rule not apply, negated or not, as in Postfix."""
    not_applying: Match | None = _NO_GROUPS if negated else None

    def search(subject: bytes) -> Match | None:
        try:
            return run(subject)
        except pcre2.LibraryError:
            return not_applying
    return search


class _NoGroups:
    """Stands for a match of a negated rule that must not apply; negated rules use no `$n`."""

    def group(self, index: int) -> bytes | None:
        return None


_NO_GROUPS = _NoGroups()


class PcreTable(RuleTable):
    type_name = "pcre"
    dialect = _Pcre2Dialect()
