"""An ldap_table(5) file: `name = value` logical lines, as main.cf, with Postfix's defaults.

Nothing here talks to a server, so `mailferry check` and the unit tests read files without
python-ldap. Values are taken as written: Postfix expands no `$name` in these files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailferry.syntax import logical_lines, split_list
from mailferry.tables.base import TableError
from mailferry.tables.ldap.templates import TemplateError, Templates

# Every parameter ldap_table(5) documents, with Postfix's default ("" where it has none).
DEFAULTS = {
    "server_host": "localhost",
    "server_port": "389",
    "search_base": "",
    "scope": "sub",
    "timeout": "10",
    "query_filter": "(mailacceptinggeneralid=%s)",
    "result_format": "%s",
    "result_filter": "",          # result_format's name before Postfix 2.2
    "result_attribute": "maildrop",
    "special_result_attribute": "",
    "terminal_result_attribute": "",
    "leaf_result_attribute": "",
    "domain": "",
    "bind": "yes",
    "bind_dn": "",
    "bind_pw": "",
    "version": "3",               # Debian's Postfix 3.7 uses 3 (`postmap -v` shows it); old manuals say 2
    "recursion_limit": "1000",
    "expansion_limit": "0",
    "size_limit": "",             # default: $expansion_limit
    "dereference": "0",
    "chase_referrals": "no",
    "start_tls": "no",
    "tls_ca_cert_file": "",
    "tls_ca_cert_dir": "",
    "tls_cert": "",
    "tls_key": "",
    "tls_require_cert": "no",
    "tls_random_file": "",
    "tls_cipher_suite": "",
    "sasl_mechs": "",
    "sasl_realm": "",
    "sasl_authz_id": "",
    "sasl_minssf": "0",
    "debuglevel": "0",
    "cache": "no",                # never worked in Postfix; read and ignored, as Postfix does
    "cache_expiry": "",
    "cache_size": "",
}

SCOPES = {"sub": 2, "one": 1, "base": 0}   # ldap.SCOPE_SUBTREE, _ONELEVEL, _BASE
BIND_MODES = {"no": "none", "none": "none", "yes": "simple", "simple": "simple", "sasl": "sasl"}

# Names people write that Postfix does not read, with what they probably meant.
_MISTAKES = {
    "special_result_filter": "Postfix ignores it; result_format (old name result_filter) is the "
                             "result template, and it applies to the result value: with "
                             "'%s@%d' a result 'a@b' would become 'a@b@b'",
    "ldap_version": "the parameter is 'version'",
    "port": "the parameter is 'server_port'",
    "filter": "the parameter is 'query_filter'",
}


@dataclass
class Problem:
    """Something `check` reports about the file, at its line."""
    line: int
    message: str


@dataclass
class LdapSettings:
    path: str
    values: dict[str, str]
    lines: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=lambda: DEFAULTS)

    def get(self, name: str) -> str:
        return self.values.get(name, self.defaults[name])

    def _where(self, name: str) -> tuple[str, int | None]:
        return self.path, self.lines.get(name)

    def number(self, name: str, minimum: int = 0, default: str | None = None) -> int:
        text = self.values.get(name, default if default is not None else self.defaults[name])
        try:
            number = int(text)
        except ValueError:
            raise TableError(f"bad numerical configuration: {name} = {text}", *self._where(name)) from None
        if number < minimum:
            raise TableError(f"invalid {name} parameter value {number} < {minimum}", *self._where(name))
        return number

    def boolean(self, name: str) -> bool:
        text = self.get(name).lower()
        if text not in ("yes", "no"):
            raise TableError(f"bad boolean configuration: {name} = {self.get(name)} (yes or no)",
                             *self._where(name))
        return text == "yes"

    def words(self, name: str) -> list[str]:
        return split_list(self.get(name))


def read_settings(path: str, defaults: dict[str, str] = DEFAULTS, kind: str = "ldap",
                  mistakes: dict[str, str] = _MISTAKES) -> LdapSettings:
    """Read the file; raise TableError for one that cannot be read or a line that is not
    `name = value`. Unknown names are kept as problems, for `check`: Postfix ignores them.
    `kind` and `defaults` let the SQL tables (mysql_table(5)...) read their files the same way."""
    if not path.startswith(("/", ".")):
        raise TableError(f"{kind}:{path}: mailferry reads {kind} tables from a file only; give its "
                         f"path ({kind}:/etc/postfix/{path}), not a main.cf parameter prefix")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            physical = handle.readlines()
    except OSError as exc:
        raise TableError(f"cannot open this {kind}_table(5) file: {exc.strerror}", path) from None
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    for line in logical_lines(physical):
        name, equals, value = line.text.partition("=")
        name = name.strip()
        if not equals or not name or any(char.isspace() for char in name):
            raise TableError(f"missing '=' after attribute name: {line.text.strip()!r}; "
                             f"write 'name = value'", path, line.line)
        if name in lines:
            problems.append(Problem(line.line, f"{name} is also set at line {lines[name]}; "
                                               f"this later value is used"))
        values[name] = value.strip()
        lines[name] = line.line
        if name not in defaults:
            hint = mistakes.get(name, f"{kind}_table(5) lists the parameters")
            problems.append(Problem(line.line, f"unknown {kind}_table parameter {name!r}: {hint}"))
    return LdapSettings(path, values, lines, problems, defaults)


@dataclass
class LdapConfig:
    """The settings a client needs, checked and converted once at open."""
    settings: LdapSettings
    server_urls: list[str]
    templates: Templates
    scope: int
    timeout: int
    result_attributes: list[str]   # terminal, leaf, ordinary, special: Postfix's order
    terminal: int
    leaf: int
    ordinary: int                  # count of terminal + leaf + ordinary
    bind: str
    version: int
    recursion_limit: int
    expansion_limit: int
    size_limit: int
    dereference: int
    chase_referrals: bool
    start_tls: bool
    tls_require_cert: bool
    domains: list[str]
    warnings: list[str]


def load_config(path: str) -> LdapConfig:
    settings = read_settings(path)
    warnings: list[str] = []
    version = settings.number("version", minimum=2)
    if version not in (2, 3):
        warnings.append(f"{path}: unknown version {version}, using 2")
        version = 2
    port = settings.number("server_port")
    urls = []
    for host in settings.words("server_host"):
        if "://" in host:
            scheme = host.split("://", 1)[0].lower()
            if scheme not in ("ldap", "ldaps", "ldapi"):
                raise TableError(f"server_host: {host}: unknown URL scheme {scheme!r} "
                                 f"(ldap, ldaps or ldapi)", *settings._where("server_host"))
            if scheme != "ldap" and version != 3:
                warnings.append(f"{path}: URL scheme {scheme} requires protocol version 3")
                version = 3
            urls.append(host)
        elif ":" in host:
            urls.append(f"ldap://{host}")
        else:
            urls.append(f"ldap://{host}:{port}")
    scope_name = settings.get("scope").lower()
    if scope_name not in SCOPES:
        warnings.append(f"{path}: unrecognized value {settings.get('scope')} specified for scope; using sub")
        scope_name = "sub"
    result_format = settings.values.get("result_format") or settings.get("result_filter") or "%s"
    try:
        templates = Templates(settings.get("search_base"), settings.get("query_filter"), result_format)
    except TemplateError as exc:
        raise TableError(str(exc), path) from None
    terminal = settings.words("terminal_result_attribute")
    leaf = settings.words("leaf_result_attribute")
    ordinary = settings.words("result_attribute")
    special = settings.words("special_result_attribute")
    bind = BIND_MODES.get(settings.get("bind").lower())
    if bind is None:
        raise TableError(f"unsupported parameter value: bind = {settings.get('bind')} "
                         f"(no, yes or sasl)", *settings._where("bind"))
    expansion_limit = settings.number("expansion_limit")
    dereference = settings.number("dereference")
    if dereference > 3:
        warnings.append(f"{path}: unrecognized value {dereference} specified for dereference; using 0")
        dereference = 0
    start_tls = settings.boolean("start_tls")
    if start_tls and version < 3:
        warnings.append(f"{path}: start_tls requires protocol version 3")
        version = 3
    for name in ("cache", "cache_expiry", "cache_size"):
        if name in settings.values:
            warnings.append(f"{path}: ignoring {name}, as Postfix does")
    return LdapConfig(
        settings=settings, server_urls=urls, templates=templates, scope=SCOPES[scope_name],
        timeout=settings.number("timeout"),
        result_attributes=terminal + leaf + ordinary + special,
        terminal=len(terminal), leaf=len(leaf), ordinary=len(terminal) + len(leaf) + len(ordinary),
        bind=bind, version=version, recursion_limit=settings.number("recursion_limit", minimum=1),
        expansion_limit=expansion_limit,
        size_limit=settings.number("size_limit", default=str(expansion_limit)),
        dereference=dereference, chase_referrals=settings.boolean("chase_referrals"),
        start_tls=start_tls, tls_require_cert=settings.boolean("tls_require_cert"),
        domains=[domain.lower() for domain in settings.words("domain")], warnings=warnings)
