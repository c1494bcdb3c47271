"""mysql_table(5), pgsql_table(5) and sqlite_table(5) files: read, checked and converted once.

The files are read as ldap_table files are (tables/ldap/settings.py: `name = value` lines, no
`$name` expansion); the query template is parsed by Postfix's db_common rules (the same %
codes as LDAP: tables/ldap/templates.py) and translated to a parameterised query (query.py).
Nothing here talks to a server, so `check` and `postmap -q` read files without a driver.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailferry.tables.base import TableError
from mailferry.tables.ldap.settings import LdapSettings, read_settings
from mailferry.tables.ldap.templates import TemplateError, Templates
from mailferry.tables.sql.query import QueryTranslationError, SqlQuery, translate

_COMMON = {
    "query": "",
    "result_format": "%s",
    "expansion_limit": "0",
    "domain": "",
    # The form before `query` (Postfix 2.2): SELECT select_field FROM table WHERE where_field='%s'
    "select_field": "", "table": "", "where_field": "", "additional_conditions": "",
}
_SERVER = {
    "hosts": "",
    "user": "",
    "password": "",
    "dbname": "",
    "retry_interval": "60",
    "idle_interval": "60",
}

DEFAULTS = {
    "mysql": {**_COMMON, **_SERVER,
              "charset": "utf8mb4", "option_file": "", "option_group": "client",
              "tls_cert_file": "", "tls_key_file": "", "tls_CAfile": "", "tls_CApath": "",
              "tls_ciphers": "", "tls_verify_cert": "", "require_result_set": "yes"},
    "pgsql": {**_COMMON, **_SERVER, "encoding": "UTF8", "select_function": ""},
    "sqlite": {**_COMMON, "dbpath": ""},
}

_MISTAKES = {
    "host": "the parameter is 'hosts'",
    "port": "write the port in hosts: inet:host:port",
    "database": "the parameter is 'dbname'",
    "username": "the parameter is 'user'",
    "select": "the parameter is 'query'",
}


@dataclass(frozen=True)
class Host:
    """One `hosts` entry: `unix:/path`, `inet:host[:port]`, `host[:port]`, or for pgsql a
    `postgresql://` URI. `localhost` in MySQL means its default unix socket, as libmysqlclient."""
    text: str
    kind: str            # unix, inet or uri
    address: str         # socket path, host name, or the URI
    port: int | None


@dataclass
class SqlConfig:
    type_name: str
    settings: LdapSettings
    templates: Templates
    query: SqlQuery
    query_text: str
    result_format: str
    expansion_limit: int
    domains: list[str]
    hosts: list[Host]
    warnings: list[str]

    @property
    def path(self) -> str:
        return self.settings.path

    def get(self, name: str) -> str:
        return self.settings.get(name)

    def ordered_hosts(self) -> list[Host]:
        """Postfix's order: unix sockets first, then TCP hosts, each group in random order."""
        unix = [host for host in self.hosts if host.kind == "unix"]
        other = [host for host in self.hosts if host.kind != "unix"]
        random.shuffle(unix)
        random.shuffle(other)
        return unix + other


MYSQL_DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"   # Debian's; an option_file may name another


def read(type_name: str, path: str) -> LdapSettings:
    return read_settings(path, DEFAULTS[type_name], type_name, _MISTAKES)


def load_config(type_name: str, path: str) -> SqlConfig:
    settings = read(type_name, path)
    where = settings._where
    query_text = settings.values.get("query") or _legacy_query(type_name, settings)
    try:
        query = translate(query_text, type_name)
        templates = Templates("", query_text, settings.get("result_format"))
    except (QueryTranslationError, TemplateError) as exc:
        name = "result_format" if "result template" in str(exc) else \
            "query" if "query" in settings.values else "table"
        raise TableError(str(exc), *where(name)) from None
    if type_name == "sqlite":
        if not settings.get("dbpath"):
            raise TableError("dbpath is not set: name the SQLite database file (dbpath = /path/file.db)",
                             path)
        hosts: list[Host] = []
    else:
        if not settings.get("dbname"):
            # Postfix 3.7 requires it for both, even beside a postgresql:// URI
            raise TableError("dbname is not set (Postfix stops: bad string length 0 < 1: dbname = ); "
                             "name the database: dbname = NAME", path)
        hosts = _hosts(type_name, settings)
    if type_name == "mysql":
        verify = settings.get("tls_verify_cert").lower()
        if verify not in ("", "yes", "no"):
            raise TableError(f"bad boolean configuration: tls_verify_cert = {verify} (yes or no)",
                             *where("tls_verify_cert"))
        settings.boolean("require_result_set")
    if type_name != "sqlite":
        for name in ("retry_interval", "idle_interval"):
            settings.number(name, minimum=1)     # checked here: a bad value is an error at its line
    return SqlConfig(
        type_name=type_name, settings=settings, templates=templates, query=query,
        query_text=query_text, result_format=settings.get("result_format"),
        expansion_limit=settings.number("expansion_limit"),
        domains=[domain.lower() for domain in settings.words("domain")], hosts=hosts,
        warnings=[])


def _legacy_query(type_name: str, settings: LdapSettings) -> str:
    """Postfix's db_common_sql_build_query, and pgsql's select_function."""
    if type_name == "pgsql" and settings.get("select_function"):
        return f"SELECT {settings.get('select_function')}('%s')"
    missing = [name for name in ("table", "select_field", "where_field") if not settings.get(name)]
    if missing:
        raise TableError(f"neither query nor the older {', '.join(missing)} is set: write "
                         f"query = SELECT ... WHERE ...='%s' ({type_name}_table(5))", settings.path)
    return (f"SELECT {settings.get('select_field')} FROM {settings.get('table')} "
            f"WHERE {settings.get('where_field')}='%s' {settings.get('additional_conditions')}")


def _hosts(type_name: str, settings: LdapSettings) -> list[Host]:
    hosts = []
    for text in settings.words("hosts") or ["localhost"]:
        hosts.append(_host(type_name, text, settings))
    return hosts


def _host(type_name: str, text: str, settings: LdapSettings) -> Host:
    if type_name == "pgsql" and text.startswith(("postgresql://", "postgres://")):
        return Host(text, "uri", text, None)
    address = text
    if address.startswith("unix:"):
        return Host(text, "unix", address[5:], None)
    address = address.removeprefix("inet:")
    if type_name == "pgsql" and address.startswith("/"):
        return Host(text, "unix", address, None)
    port = None
    if address.startswith("["):
        close = address.find("]")
        name, rest = address[1:close], address[close + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, colon, port_text = address.rpartition(":") if ":" in address else (address, "", "")
    if port_text:
        if not port_text.isdigit():
            raise TableError(f"hosts: {text}: unknown service {port_text}/tcp (write a port number)",
                             *settings._where("hosts"))
        port = int(port_text)
    if type_name == "mysql" and name.lower() == "localhost":
        return Host(text, "unix", MYSQL_DEFAULT_SOCKET, None)
    return Host(text, "inet", name, port)
