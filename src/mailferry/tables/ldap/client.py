"""Talking to the directory with python-ldap (OpenLDAP's libldap, as Postfix), off the event loop.

Failover, better than Postfix on a hung server: each `server_host` is tried in order, the TCP
connect bounded by CONNECT_BOUND and the first answer to each request by FIRST_ANSWER_BOUND
(both at most `timeout`, which still bounds the whole search). A server that fails is warned
about and kept out of rotation for OUT_OF_ROTATION seconds: it is then tried only after the
servers in rotation, and back first once its rest is over. Connections are kept per server, one
per worker thread at most, each used by one thread at a time (an LDAPObject is not shared
between concurrent requests).

Outcome rules as Postfix's dict_ldap: no entry, or entries without result values, is "not found";
more than size_limit entries, more than expansion_limit values, a recursion past recursion_limit,
a missing fixed search base, and every server failing are temporary failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import ldap
import ldap.dn
import ldap.sasl
import ldapurl
from ldap.ldapobject import LDAPObject

from mailferry import metrics
from mailferry.tables.ldap.settings import LdapConfig
from mailferry.tables.result import MISSING, LookupResult, found, tempfail

CONNECT_BOUND = 2.0
FIRST_ANSWER_BOUND = 2.0
OUT_OF_ROTATION = 30.0

# Errors that say "this server, now" rather than "this query": the next server may answer.
_SERVER_ERRORS = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY,
                  ldap.INVALID_CREDENTIALS, ldap.INAPPROPRIATE_AUTH, ldap.STRONG_AUTH_REQUIRED,
                  ldap.PROTOCOL_ERROR, ldap.LOCAL_ERROR, ldap.UNWILLING_TO_PERFORM)


class ServerFailed(Exception):
    """The server did not answer (or refused us): try the next one."""

    def __init__(self, reason: str, connection_lost: bool = False):
        super().__init__(reason)
        self.connection_lost = connection_lost


class QueryFailed(Exception):
    """The directory answered, but the lookup cannot give a sure answer: temporary failure."""


def _error_text(error: ldap.LDAPError) -> str:
    info = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    text = info.get("desc") or type(error).__name__
    if info.get("info"):
        text += f" ({info['info']})"
    return text


class Server:
    def __init__(self, url: str):
        self.url = url
        self.idle: list[LDAPObject] = []
        self.lock = threading.Lock()
        self.resting_until = 0.0

    def take(self) -> LDAPObject | None:
        with self.lock:
            return self.idle.pop() if self.idle else None

    def give_back(self, connection: LDAPObject) -> None:
        with self.lock:
            self.idle.append(connection)

    def drop_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for connection in idle:
            _unbind(connection)


def _unbind(connection: LDAPObject) -> None:
    try:
        connection.unbind_ext()
    except ldap.LDAPError:
        pass


class Directory:
    """One table's servers and its blocking lookup; called from worker threads."""

    def __init__(self, config: LdapConfig, warn: Callable[[str], None]):
        self.config = config
        self.warn = warn
        self.name = config.settings.path
        self.servers = [Server(url) for url in config.server_urls]
        self.timeout = float(config.timeout) if config.timeout > 0 else 10.0
        self.connect_bound = min(CONNECT_BOUND, self.timeout)
        self.first_answer_bound = min(FIRST_ANSWER_BOUND, self.timeout)

    # --- failover -------------------------------------------------------------------------

    def lookup(self, key: str) -> LookupResult:
        return self._failover(lambda server: self._lookup_on(server, key))

    def bind_as_entry(self, key: str, password: str) -> LookupResult:
        """Find the one entry query_filter finds for `key` and bind as its DN with `password`
        (smtpd_sasl_type = ldap): found(dn) when the directory accepts the password, not found
        for no entry, several entries or a wrong password, a temporary failure when no server
        answers. An empty password never binds (it would be an unauthenticated bind)."""
        if not password:
            return MISSING
        found_dn = self._failover(lambda server: self._on_server(
            server, lambda connection: self._only_dn(connection, key)))
        if not found_dn.found:
            return found_dn
        return self._failover(lambda server: self._on_server(
            server, lambda connection: self._bind_check(connection, found_dn.value, password), fresh=True))

    def _failover(self, attempt: Callable[[Server], LookupResult]) -> LookupResult:
        now = time.monotonic()
        order = ([server for server in self.servers if server.resting_until <= now]
                 + [server for server in self.servers if server.resting_until > now])
        tried = []
        for server in order:
            try:
                return attempt(server)
            except ServerFailed as failure:
                server.resting_until = time.monotonic() + OUT_OF_ROTATION
                metrics.ldap_server_failed(self.name, server.url)
                self.warn(f"dict_ldap_lookup: {self.name}: server {server.url} failed: {failure}; "
                          f"out of rotation for {OUT_OF_ROTATION:.0f} s")
                tried.append(f"{server.url} ({failure})")
            except QueryFailed as failure:
                self.warn(f"dict_ldap_lookup: {self.name}: {failure}")
                return tempfail(f"{self.name}: {failure}")
        return tempfail(f"{self.name}: no LDAP server answered: tried {', '.join(tried) or 'none'}")

    def _lookup_on(self, server: Server, key: str) -> LookupResult:
        return self._on_server(server, lambda connection: self._evaluate(connection, key))

    def _on_server(self, server: Server, evaluate: Callable[[LDAPObject], LookupResult],
                   fresh: bool = False) -> LookupResult:
        if fresh:
            # A connection of its own (a user's bind changes who it is): never back to the pool.
            connection = self._connect(server)
            try:
                return self._lookup_with(server, connection, evaluate, keep=False)
            finally:
                _unbind(connection)
        reused = server.take()
        if reused is not None:
            try:
                return self._lookup_with(server, reused, evaluate)
            except ServerFailed as failure:
                if not failure.connection_lost:
                    raise
                # The server closed a kept connection (it restarted, or an idle timeout): as
                # Postfix, reconnect once before calling the server failed.
        return self._lookup_with(server, self._connect(server), evaluate)

    def _lookup_with(self, server: Server, connection: LDAPObject,
                     evaluate: Callable[[LDAPObject], LookupResult], keep: bool = True) -> LookupResult:
        try:
            result = evaluate(connection)
        except (ServerFailed, *_SERVER_ERRORS) as error:
            _unbind(connection)
            server.drop_all()  # its siblings went to the same dead, restarted or hung server
            if isinstance(error, ServerFailed):
                raise
            raise ServerFailed(_error_text(error), connection_lost=isinstance(error, ldap.SERVER_DOWN)) from None
        except QueryFailed:
            if keep:
                server.give_back(connection)
            raise
        except ldap.LDAPError as error:
            _unbind(connection)  # as Postfix: set up afresh next time
            raise QueryFailed(f"search error: {_error_text(error)}") from None
        if keep:
            server.give_back(connection)
        server.resting_until = 0.0
        return result

    def _connect(self, server: Server) -> LDAPObject:
        config = self.config
        settings = config.settings
        try:
            connection = ldap.initialize(server.url, bytes_mode=False)
            connection.set_option(ldap.OPT_PROTOCOL_VERSION, config.version)
            connection.set_option(ldap.OPT_NETWORK_TIMEOUT, self.connect_bound)
            connection.set_option(ldap.OPT_TIMEOUT, self.first_answer_bound)
            connection.set_option(ldap.OPT_REFERRALS, 1 if config.chase_referrals else 0)
            connection.set_option(ldap.OPT_DEREF, config.dereference)
            connection.set_option(ldap.OPT_SIZELIMIT, config.size_limit)
            if server.url.lower().startswith("ldaps://") or config.start_tls:
                self._set_tls(connection)
            if config.start_tls:
                connection.start_tls_s()
            if config.bind == "simple":
                self._wait(connection, connection.simple_bind(settings.get("bind_dn"), settings.get("bind_pw")))
            elif config.bind == "sasl":
                self._sasl_bind(connection)
        except ServerFailed:
            raise
        except ldap.LDAPError as error:
            raise ServerFailed(_error_text(error)) from None
        return connection

    def _set_tls(self, connection: LDAPObject) -> None:
        settings = self.config.settings
        connection.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND
                              if self.config.tls_require_cert else ldap.OPT_X_TLS_NEVER)
        for name, option in (("tls_ca_cert_file", ldap.OPT_X_TLS_CACERTFILE),
                             ("tls_ca_cert_dir", ldap.OPT_X_TLS_CACERTDIR),
                             ("tls_cert", ldap.OPT_X_TLS_CERTFILE), ("tls_key", ldap.OPT_X_TLS_KEYFILE),
                             ("tls_random_file", ldap.OPT_X_TLS_RANDOM_FILE),
                             ("tls_cipher_suite", ldap.OPT_X_TLS_CIPHER_SUITE)):
            if settings.get(name):
                connection.set_option(option, settings.get(name))
        connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)

    def _sasl_bind(self, connection: LDAPObject) -> None:
        settings = self.config.settings
        connection.set_option(ldap.OPT_X_SASL_SECPROPS, f"minssf={settings.number('sasl_minssf')}")
        auth = ldap.sasl.sasl({ldap.sasl.CB_AUTHNAME: settings.get("bind_dn"),
                               ldap.sasl.CB_PASS: settings.get("bind_pw"),
                               ldap.sasl.CB_USER: settings.get("sasl_authz_id"),
                               ldap.sasl.CB_GETREALM: settings.get("sasl_realm")},
                              " ".join(settings.words("sasl_mechs")))
        connection.sasl_interactive_bind_s("", auth)

    def _wait(self, connection: LDAPObject, msgid: int):
        try:
            return connection.result3(msgid, all=1, timeout=self.first_answer_bound)
        except ldap.TIMEOUT:
            connection.abandon(msgid)
            raise ServerFailed(f"no answer within {self.first_answer_bound:g} s") from None

    # --- one lookup on one connection -------------------------------------------------------

    def _search(self, connection: LDAPObject, base: str, scope: int, query: str,
                attributes: list[str]) -> list[tuple[str, dict[str, list[bytes]]]]:
        """Every entry, within `timeout` overall and FIRST_ANSWER_BOUND for the first message."""
        deadline = time.monotonic() + self.timeout
        # timeout: the server's own time limit, as Postfix sends it (not OPT_TIMEOUT's 2 s).
        msgid = connection.search_ext(base, scope, query, attributes or None,
                                      timeout=self.timeout, sizelimit=self.config.size_limit)
        entries = []
        wait = self.first_answer_bound
        while True:
            try:
                kind, data, _, _ = connection.result3(msgid, all=0, timeout=wait)
            except ldap.TIMEOUT:
                connection.abandon(msgid)
                raise ServerFailed(f"no answer within {wait:g} s") from None
            if kind == ldap.RES_SEARCH_RESULT:
                return entries
            if kind == ldap.RES_SEARCH_ENTRY:
                entries.extend(data)
            wait = max(0.01, deadline - time.monotonic())

    def _evaluate(self, connection: LDAPObject, key: str) -> LookupResult:
        config = self.config
        templates = config.templates
        try:
            entries = self._search(connection, templates.base(key), config.scope, templates.query(key),
                                   config.result_attributes)
        except ldap.SIZELIMIT_EXCEEDED:
            raise QueryFailed(f"query size limit ({config.size_limit}) exceeded for key {key!r}") from None
        except ldap.NO_SUCH_OBJECT:
            if templates.dynamic_base:
                return MISSING
            raise QueryFailed(f"search base {templates.base(key)!r} not found") from None
        values: list[str] = []
        self._collect(connection, entries, key, values, depth=1)
        return found(",".join(values)) if values else MISSING

    def _only_dn(self, connection: LDAPObject, key: str) -> LookupResult:
        """The DN of the one entry query_filter finds for `key` (its %s escaped, so a `*` or
        `)(uid=*` in a login name matches only itself)."""
        templates = self.config.templates
        try:
            entries = self._search(connection, templates.base(key), self.config.scope, templates.query(key),
                                   ["1.1"])
        except ldap.NO_SUCH_OBJECT:
            return MISSING
        except ldap.SIZELIMIT_EXCEEDED:
            return MISSING  # more than one entry: whose password would it be?
        dns = [dn for dn, _ in entries if dn]
        return found(dns[0]) if len(dns) == 1 else MISSING

    def _bind_check(self, connection: LDAPObject, dn: str, password: str) -> LookupResult:
        try:
            self._wait(connection, connection.simple_bind(dn, password))
        except (ldap.INVALID_CREDENTIALS, ldap.INAPPROPRIATE_AUTH, ldap.UNWILLING_TO_PERFORM):
            return MISSING
        return found(dn)

    def _collect(self, connection: LDAPObject, entries, key: str, values: list[str], depth: int) -> None:
        config = self.config
        attributes = config.result_attributes
        special_start = config.ordinary
        if config.size_limit and len(entries) > config.size_limit:
            raise QueryFailed(f"query size limit ({config.size_limit}) exceeded for key {key!r}")
        for _dn, entry in entries:
            present = {name: index for name in entry if entry[name]
                       for index in [_attribute_index(attributes, name)] if index is not None}
            terminal = any(index < config.terminal for index in present.values())
            leaf = not any(index >= special_start for index in present.values()) if config.leaf else True
            for name, raw_values in entry.items():
                index = present.get(name)
                if index is None:
                    continue
                if index < special_start or terminal:
                    if (terminal and index >= config.terminal) or (
                            not leaf and config.terminal <= index < config.terminal + config.leaf):
                        continue
                    self._add_values(raw_values, key, values)
                elif depth < config.recursion_limit:
                    for raw in raw_values:
                        self._follow(connection, _text(raw), key, values, depth)
                else:
                    raise QueryFailed(f"recursion limit exceeded for special attribute "
                                      f"{name}={_text(raw_values[0])}")

    def _add_values(self, raw_values: list[bytes], key: str, values: list[str]) -> None:
        limit = self.config.expansion_limit
        for raw in raw_values:
            formatted = self.config.templates.result(_text(raw), key)
            if formatted is None:
                continue
            values.append(formatted)
            if limit and len(values) > limit:
                raise QueryFailed(f"expansion limit ({limit}) exceeded for key {key!r}")

    def _follow(self, connection: LDAPObject, reference: str, key: str, values: list[str], depth: int) -> None:
        """A special_result_attribute value: a DN (its entry is read) or an LDAP URL (searched)."""
        attributes = self.config.result_attributes
        if ldap.dn.is_dn(reference) and "://" not in reference:
            base, scope, query = reference, ldap.SCOPE_BASE, "objectclass=*"
        else:
            try:
                url = ldapurl.LDAPUrl(reference)
            except ValueError:
                raise QueryFailed(f"malformed URL {reference}") from None
            base, scope, query = url.dn, url.scope or ldap.SCOPE_BASE, url.filterstr or "(objectclass=*)"
            if url.attrs:
                attributes = [name for name in attributes if _attribute_index(url.attrs, name) is not None]
                if not attributes:
                    return
        try:
            entries = self._search(connection, base, scope, query, attributes)
        except ldap.NO_SUCH_OBJECT:
            self.warn(f"dict_ldap_get_values[{depth}]: DN {reference} not found, skipping")
            return
        except ldap.SIZELIMIT_EXCEEDED:
            raise QueryFailed(f"query size limit ({self.config.size_limit}) exceeded for key {key!r}") from None
        self._collect(connection, entries, key, values, depth + 1)


def _attribute_index(wanted: list[str], name: str) -> int | None:
    """Where `name` (as the server returned it, maybe with ;options) sits in `wanted`."""
    lowered = name.lower()
    for index, candidate in enumerate(wanted):
        candidate = candidate.lower()
        if lowered == candidate or lowered.startswith(candidate + ";"):
            return index
    return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
