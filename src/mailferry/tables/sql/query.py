"""A Postfix `query` template turned into a parameterised query, once, when the table opens.

Postfix splices the key into the SQL text, escaped by the server library (`'%s'` becomes
`'it''s'`). mailferry never puts the key into the SQL text. Each `%` expansion becomes a
driver placeholder, and its text is sent as a bound parameter:

    WHERE address='%s' AND active='1'       →  WHERE address=%s AND active='1'   params: [%s]
    WHERE address='%u@%d'                   →  WHERE address=%s                  params: [%u@%d]
    WHERE id=%s                             →  WHERE id=%s                       params: [%s]
    WHERE domain LIKE '%%.%d'               →  WHERE domain LIKE %s              params: [%%.%d]

A quoted literal holding expansions becomes ONE parameter, whose value is the literal's text
filled in: the same string Postfix's escaped literal would have meant. A literal without
expansions stays in the text (its `%%` becomes `%`, as Postfix writes it). An expansion inside
an identifier (`"..."` in PostgreSQL and SQLite, `` `...` `` in MySQL), or a MySQL literal that
mixes backslash escapes with expansions, has no parameterised equivalent: that is an error,
naming the file and line of `query`.
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEHOLDER = object()

_KEY_CODES = frozenset("suUdDS123456789")


class QueryTranslationError(ValueError):
    pass


@dataclass(frozen=True)
class SqlQuery:
    """`pieces`: SQL text (str) and PLACEHOLDER, in order; `parameters`: one template each."""
    pieces: tuple
    parameters: tuple[str, ...]

    def render(self, paramstyle: str) -> str:
        """The SQL text for a driver: `format` (PyMySQL, psycopg: %s, and a literal % doubled)
        or `qmark` (sqlite3: ?)."""
        out = []
        for piece in self.pieces:
            if piece is PLACEHOLDER:
                out.append("%s" if paramstyle == "format" else "?")
            else:
                out.append(piece.replace("%", "%%") if paramstyle == "format" else piece)
        return "".join(out)


def translate(template: str, dialect: str) -> SqlQuery:
    """`dialect`: mysql, pgsql or sqlite (which quote marks make a string and which a name)."""
    string_quotes = "'\"" if dialect == "mysql" else "'"
    name_quotes = "`" if dialect == "mysql" else "\""
    pieces: list = []
    parameters: list[str] = []
    text: list[str] = []
    index = 0
    while index < len(template):
        char = template[index]
        if char in string_quotes:
            end, content, has_escape = _literal(template, index, dialect)
            if _has_expansion(content):
                if has_escape:
                    raise QueryTranslationError(
                        f"query: the literal {template[index:end]} mixes backslash escapes with % "
                        f"expansions; mailferry binds the key as a parameter and cannot translate "
                        f"this: write the literal without backslashes")
                _flush(text, pieces)
                pieces.append(PLACEHOLDER)
                parameters.append(content)
            else:
                text.append(template[index:end].replace("%%", "%"))
            index = end
        elif char in name_quotes:
            end = template.find(char, index + 1)
            end = len(template) if end < 0 else end + 1
            if _has_expansion(template[index:end]):
                raise QueryTranslationError(
                    f"query: {template[index:end]} puts a % expansion into a quoted name "
                    f"(identifier); a name cannot be a bound parameter")
            text.append(template[index:end])
            index = end
        elif char == "%":
            code = template[index + 1:index + 2]
            if code == "%":
                text.append("%")
            elif code in _KEY_CODES and code:
                _flush(text, pieces)
                pieces.append(PLACEHOLDER)
                parameters.append("%" + code)
            else:
                raise QueryTranslationError(
                    f"query: invalid template {template}: %{code} is not one of "
                    f"%s %u %d %S %U %D %1-%9 %%")
            index += 2
        else:
            text.append(char)
            index += 1
    _flush(text, pieces)
    return SqlQuery(tuple(pieces), tuple(parameters))


def _flush(text: list[str], pieces: list) -> None:
    if text:
        pieces.append("".join(text))
        text.clear()


def _literal(template: str, start: int, dialect: str) -> tuple[int, str, bool]:
    """(index after the closing quote, the literal's value, whether a backslash escape was in it).
    `''` inside is one quote in every dialect; MySQL also reads backslash escapes."""
    quote = template[start]
    content: list[str] = []
    has_escape = False
    index = start + 1
    while index < len(template):
        char = template[index]
        if char == "\\" and dialect == "mysql":
            has_escape = True
            content.append(template[index:index + 2])
            index += 2
            continue
        if char == quote:
            if template[index + 1:index + 2] == quote:
                content.append(quote)
                index += 2
                continue
            return index + 1, "".join(content), has_escape
        content.append(char)
        index += 1
    raise QueryTranslationError(f"query: unterminated {quote}...{quote} literal in {template}")


def _has_expansion(text: str) -> bool:
    """Any `%X` other than `%%`, read left to right as Postfix does."""
    index = 0
    while index < len(text):
        if text[index] == "%":
            if text[index + 1:index + 2] != "%":
                return True
            index += 2
        else:
            index += 1
    return False
