"""ldap_table(5) `%` templates: query_filter, search_base and result_format, as Postfix expands them.

Flags gathered over all three templates decide which keys are looked up at all: a template that
needs the key's domain (%d, %D, %1-%9) skips keys without one, one that needs its local part (%u, %U)
skips "@domain" keys, and %N skips keys with fewer than N domain labels. A skipped key is "not
found" without a search. Every value put into a filter is escaped per RFC 4515 and every value put
into a DN per RFC 4514, with Postfix's exact escapes (`\\2A`, upper-case hex), so a key such as
`*@example.com` or `a)(mail=*` never widens a search.
"""

from __future__ import annotations

from collections.abc import Callable

KEY_DOMAIN = 1
KEY_USER = 2
VALUE_DOMAIN = 4
VALUE_USER = 8

_FILTER_SPECIALS = frozenset("*()\\\0")
_DN_SPECIALS = frozenset(" \t\"#+,;<>\\=\0")


def escape_filter_value(text: str) -> str:
    """RFC 4515: `*`, `(`, `)`, `\\` (and NUL) as `\\XX`, as Postfix's rfc2254_quote writes them."""
    return "".join(f"\\{ord(char):02X}" if char in _FILTER_SPECIALS else char for char in text)


def escape_dn_value(text: str) -> str:
    """RFC 4514 attribute value escaping, as Postfix's rfc2253_quote (it also escapes every blank,
    `#` and `=`, which is harmless and never wrong)."""
    return "".join(f"\\{ord(char):02X}" if char in _DN_SPECIALS else char for char in text)


class TemplateError(ValueError):
    pass


class Templates:
    """The three templates of one table, parsed once; `flags` and `parts` are shared as in Postfix."""

    def __init__(self, search_base: str, query_filter: str, result_format: str):
        self.flags = 0
        self.parts = 0
        self.dynamic_base = self._parse(search_base, query=True)
        self.dynamic_query = self._parse(query_filter, query=True)
        self._parse(result_format, query=False)
        self.search_base = search_base
        self.query_filter = query_filter
        self.result_format = result_format

    def _parse(self, template: str, query: bool) -> bool:
        dynamic = False
        index = 0
        while index < len(template):
            if template[index] != "%":
                index += 1
                continue
            code = template[index + 1:index + 2]
            index += 2
            if code == "%":
                continue
            if code == "u":
                self.flags |= KEY_USER if query else VALUE_USER
            elif code == "d":
                self.flags |= KEY_DOMAIN if query else VALUE_DOMAIN
            elif code == "U":
                self.flags |= KEY_USER
            elif code == "D":
                self.flags |= KEY_DOMAIN
            elif code and code in "123456789":
                self.parts = max(self.parts, int(code))
                self.flags |= KEY_DOMAIN
            elif code not in ("s", "S"):
                raise TemplateError(f"invalid {'query' if query else 'result'} template: {template} "
                                    f"(%{code} is not one of %s %u %d %S %U %D %1-%9 %%)")
            dynamic = True
        return dynamic

    def key_is_eligible(self, key: str) -> bool:
        """False when the key cannot fill every template: Postfix skips the search, "not found"."""
        if not key or _lacks_a_part(key, self.flags & KEY_DOMAIN, self.flags & KEY_USER):
            return False
        if self.parts and len(_labels(key)) < self.parts:
            return False
        return True

    def base(self, key: str) -> str:
        return _expand(self.search_base, key, None, escape_dn_value, self.parts)

    def query(self, key: str) -> str:
        return _expand(self.query_filter, key, None, escape_filter_value, self.parts)

    def key_text(self, template: str, key: str) -> str:
        """A template filled from the key with no quoting at all: the SQL tables bind the
        text as a query parameter (tables/sql/query.py), so the driver keeps it a value."""
        return _expand(template, key, None, None, self.parts)

    def result(self, value: str, key: str) -> str | None:
        """One result value formatted, or None when Postfix skips it (empty, or lacking the
        local part or domain the format needs)."""
        if not value or _lacks_a_part(value, self.flags & VALUE_DOMAIN, self.flags & VALUE_USER):
            return None
        return _expand(self.result_format, value, key, None, self.parts)


def _lacks_a_part(address: str, needs_domain: int, needs_local_part: int) -> bool:
    """No domain (or an empty one) where one is needed, or an empty local part ("@domain")."""
    at = address.rfind("@")
    return bool(needs_domain and (at < 0 or at == len(address) - 1) or needs_local_part and at == 0)


def _labels(address: str) -> list[str]:
    at = address.rfind("@")
    return [label for label in address[at + 1:].split(".") if label] if at >= 0 else []


def _split(address: str) -> tuple[str, str | None]:
    at = address.rfind("@")
    return (address, None) if at < 0 else (address[:at], address[at + 1:])


def _expand(template: str, value: str, key: str | None, quote: Callable[[str], str] | None,
            parts: int) -> str:
    """Postfix's db_common_expand: lower case letters are the value (the key in a query, the
    attribute value in a result), upper case ones and digits the lookup key."""
    quote = quote or (lambda text: text)
    value_user, value_domain = _split(value)
    key_text = value if key is None else key
    key_user, key_domain = _split(key_text)
    labels = _labels(key_text) if parts else []
    pieces = {"s": value, "u": value_user, "d": value_domain or "",
              "S": key_text, "U": key_user, "D": key_domain or ""}
    out = []
    index = 0
    while index < len(template):
        char = template[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        code = template[index + 1:index + 2]
        index += 2
        if code == "%":
            out.append("%")
        elif code in pieces:
            out.append(quote(pieces[code]))
        else:
            out.append(quote(labels[len(labels) - int(code)]))
    return "".join(out)
