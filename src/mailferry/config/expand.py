"""`$name` expansion of parameter values, with Postfix's syntax.

Supported forms:
  $name  ${name}  $(name)          the value of name, itself expanded
  ${name?text}  ${name?{text}}     text when name is set and non-empty
  ${name:text}  ${name:{text}}     text when name is unset or empty
  ${name?{then}:{else}}            either branch
  ${{a} == {b} ? {then} : {else}}  comparisons ==, !=, <, <=, >, >=,
                                   and <level, <=level, >level, >=level
                                   for compatibility levels like 3.6
  $$                               a literal $

An undefined name expands to the empty string, as in Postfix. Names in
`literal` (Postfix's raw parameters) answer with their value as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_NAME = re.compile(r"[A-Za-z0-9_]+")
_CLOSERS = {"{": "}", "(": ")"}
_COMPARISON = re.compile(r"\s*(==|!=|<=level|>=level|<level|>level|<=|>=|<|>)\s*")


class ExpansionError(ValueError):
    """A value that cannot be expanded: a loop or a syntax error."""


class Expander:
    """Expands values against `lookup(name) -> raw value or None`."""

    def __init__(self, lookup: Callable[[str], str | None], literal: frozenset[str] = frozenset()):
        self._lookup = lookup
        self._literal = literal
        self._cache: dict[str, str] = {}

    def value_of(self, name: str, _stack: tuple[str, ...] = ()) -> str:
        if name in _stack:
            loop = " -> ".join(f"${step}" for step in (*_stack[_stack.index(name):], name))
            raise ExpansionError(f"parameter expansion loop: {loop}")
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        raw = self._lookup(name)
        if raw is None:
            return ""
        value = raw if name in self._literal else self.expand(raw, (*_stack, name))
        self._cache[name] = value
        return value

    def expand(self, text: str, _stack: tuple[str, ...] = ()) -> str:
        if "$" not in text:
            return text
        out: list[str] = []
        pos = 0
        while True:
            dollar = text.find("$", pos)
            if dollar < 0:
                out.append(text[pos:])
                return "".join(out)
            out.append(text[pos:dollar])
            replacement, pos = self._expand_reference(text, dollar, _stack)
            out.append(replacement)

    def _expand_reference(self, text: str, dollar: int, stack: tuple[str, ...]) -> tuple[str, int]:
        """Expand the reference at text[dollar] ('$'); return (result, next position)."""
        start = dollar + 1
        if start >= len(text):
            return "$", start
        opener = text[start]
        if opener == "$":
            return "$", start + 1
        if opener in _CLOSERS:
            end = _matching(text, start)
            return self._expand_braced(text[start + 1:end], stack), end + 1
        match = _NAME.match(text, start)
        if not match:
            return "$", start
        return self.value_of(match.group(), stack), match.end()

    def _expand_braced(self, body: str, stack: tuple[str, ...]) -> str:
        if body.startswith("{"):
            return self._expand_comparison(body, stack)
        match = _NAME.match(body)
        if not match:
            raise ExpansionError(f"bad parameter name in ${{{body}}}")
        name, rest = match.group(), body[match.end():]
        if not rest:
            return self.value_of(name, stack)
        operator, operand = rest[0], rest[1:]
        if operator not in "?:":
            raise ExpansionError(f"unexpected {operator!r} after ${{{name}")
        is_set = self.value_of(name, stack) != ""
        then_text, else_text = _branches(operand, operator)
        chosen = then_text if is_set else else_text
        return self.expand(chosen, stack)

    def _expand_comparison(self, body: str, stack: tuple[str, ...]) -> str:
        left_end = _matching(body, 0)
        left = self.expand(body[1:left_end], stack)
        op_match = _COMPARISON.match(body, left_end + 1)
        if not op_match or op_match.end() >= len(body) or body[op_match.end()] != "{":
            raise ExpansionError(f"bad comparison in ${{{body}}}: expected {{a}} OP {{b}} ? {{x}} : {{y}}")
        right_start = op_match.end()
        right_end = _matching(body, right_start)
        right = self.expand(body[right_start + 1:right_end], stack)
        rest = body[right_end + 1:].lstrip()
        if not rest.startswith("?"):
            raise ExpansionError(f"missing '?' in ${{{body}}}")
        then_text, else_text = _branches(rest[1:], "?")
        chosen = then_text if _compare(left, op_match.group(1), right) else else_text
        return self.expand(chosen, stack)


def _matching(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at text[open_at]."""
    opener = text[open_at]
    closer = _CLOSERS[opener]
    depth = 0
    for index in range(open_at, len(text)):
        char = text[index]
        if char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return index
    raise ExpansionError(f"unbalanced {opener!r} in {text!r}: add the missing {closer!r}")


def _branches(operand: str, operator: str) -> tuple[str, str]:
    """Split `text`, `{text}` or `{then}:{else}` into (then, else) for `?`/`:`."""
    stripped = operand.strip()
    if stripped.startswith("{"):
        first_end = _matching(stripped, 0)
        first = stripped[1:first_end]
        rest = stripped[first_end + 1:].strip()
        if rest.startswith(":"):
            second = rest[1:].strip()
            if second.startswith("{") and second.endswith("}"):
                second = second[1:-1]
            return (first, second) if operator == "?" else (second, first)
        return (first, "") if operator == "?" else ("", first)
    return (operand, "") if operator == "?" else ("", operand)


def _compare(left: str, operator: str, right: str) -> bool:
    if operator.endswith("level"):
        return _compare_ordered(_level(left), operator[:-5], _level(right))
    if operator in ("==", "!="):
        return (left == right) == (operator == "==")
    try:
        return _compare_ordered(int(left), operator, int(right))
    except ValueError as exc:
        raise ExpansionError(f"cannot compare {left!r} {operator} {right!r}: not numbers") from exc


def _compare_ordered(left, operator: str, right) -> bool:
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[operator]


def _level(text: str) -> tuple[int, ...]:
    """A compatibility level such as `3.6` or `2`, comparable as a tuple."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError as exc:
        raise ExpansionError(f"bad compatibility level {text!r}") from exc
