"""Reading main.cf exactly as Postfix reads it, plus lint Postfix lacks.

Syntax: `name = value` on a logical line (see mailferry/syntax.py); whitespace around
`=` and at the ends of the value is dropped; `#` starts a comment only at
the start of a line. A later setting of the same name wins.

Lint: a `#` after whitespace inside a value is almost always a comment that
the administrator expected Postfix to strip (the seed's
`smtp_tls_security_level = may # http://...`). Postfix keeps it as part of
the value; we report it as an error naming the value it would produce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.syntax import LogicalLine, logical_lines

_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_INLINE_COMMENT = re.compile(r"(?:^|\s)#")


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    value: str
    file: str
    line: int


@dataclass(slots=True)
class MainCf:
    path: str
    settings: dict[str, Setting]
    diagnostics: list[Diagnostic]


def read_main_cf(path: str) -> MainCf:
    """Parse the main.cf at `path`; a missing file is an error diagnostic."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except FileNotFoundError:
        return MainCf(path, {}, [error(f"cannot open {path}: no such file; create it, "
                                       "or point -c at the directory that holds main.cf", path)])
    except OSError as exc:
        return MainCf(path, {}, [error(f"cannot read {path}: {exc.strerror}", path)])
    return parse_main_cf(text, path)


def parse_main_cf(text: str, path: str) -> MainCf:
    settings: dict[str, Setting] = {}
    diagnostics: list[Diagnostic] = []

    def orphan(line_no: int, _text: str) -> None:
        diagnostics.append(warning(
            "logical line must not start with whitespace: it continues nothing, so it is "
            "ignored, as Postfix ignores it; remove the leading whitespace", path, line_no))

    for logical in logical_lines(text.split("\n"), orphan):
        setting = _parse_setting(logical, path, diagnostics)
        if setting is None:
            continue
        previous = settings.get(setting.name)
        if previous is not None:
            diagnostics.append(warning(
                f"parameter {setting.name} is set again (first on line {previous.line}); "
                "the later value wins, as in Postfix: delete the line you do not mean",
                path, setting.line, setting.name))
        settings[setting.name] = setting
    return MainCf(path, settings, diagnostics)


def _parse_setting(logical: LogicalLine, path: str, diagnostics: list[Diagnostic]) -> Setting | None:
    name, equals, value = logical.text.partition("=")
    name = name.strip()
    if not equals:
        diagnostics.append(error(
            f"missing '=' after parameter name in {logical.text.strip()!r}; "
            "write it as: name = value", path, logical.line))
        return None
    if not _PARAMETER_NAME.fullmatch(name):
        diagnostics.append(error(
            f"bad parameter name {name!r}: use letters, digits and underscores",
            path, logical.line))
        return None
    value_offset = len(logical.text) - len(value.lstrip())
    value = value.strip()
    comment = _INLINE_COMMENT.search(value)
    if comment is not None:
        hash_offset = value_offset + comment.end() - 1
        diagnostics.append(inline_comment_error(
            name, value, path, logical.line_at(hash_offset)))
    return Setting(name, value, path, logical.line)


def has_inline_comment(value: str) -> bool:
    return _INLINE_COMMENT.search(value) is not None


def inline_comment_error(name: str, value: str, path: str, line: int) -> Diagnostic:
    intended = value[:_INLINE_COMMENT.search(value).start()].rstrip()
    return error(
        f"parameter {name}: '#' starts a comment only at the start of a line, "
        f"so the value would be {value!r}; move the comment to a line of its own"
        f" (did you mean {name} = {intended}?)",
        path, line, name)
