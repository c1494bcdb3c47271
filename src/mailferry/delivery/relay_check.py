"""`mailferry relay-check`: open one session to the relay exactly as delivery does, and explain it.

The session is delivery's own (session.SessionSetup, with the transport's settings,
smtp_tls_policy_maps, smtp_sasl_password_maps and the DNS resolver the queue manager
uses): greeting, EHLO, STARTTLS, the credentials lookup, AUTH; then QUIT, never MAIL.
A recording subclass only notes what happened on the way. Two more short sessions,
with AUTH off, answer what the first may not show: whether the server certificate
verifies against the configured CA store when the level does not verify (`may`,
`encrypt`), and the certificate itself when verification stopped the handshake.

Every problem carries the one change to make (a main.cf line, or the table entry and
the `mailferry postmap` to run). Passwords never leave this module: only the user name
and the table key are reported.

`config_problems` is what `mailferry check` adds from here: `smtp_tls_security_level =
may` (or none) for a relay that gets a password, and with --online the relay's
certificate against the CA file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf
from mailferry.delivery import oauth2, sasl
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.connection import Connection
from mailferry.delivery.dns import NexthopResolver
from mailferry.delivery.nexthop import Hop, parse_hop
from mailferry.delivery.session import SessionSetup, SetupFailed
from mailferry.delivery.settings import ClientSettings
from mailferry.delivery.tls import TlsPolicy, trust_store_description
from mailferry.delivery.tls_policies import TlsPolicyTable
from mailferry.diagnostics import Diagnostic, error, warning
from mailferry.maillog import MemoryLog
from mailferry.protocol import smtp_client as proto
from mailferry.syntax import split_list
from mailferry.tables import Maps, TableError, open_maps

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"   # Debian's ca-certificates bundle
ERROR = "error"
WARNING = "warning"


@dataclass
class Problem:
    severity: str        # ERROR or WARNING
    text: str            # what is wrong, in the operator's words
    advice: str          # the one change: a main.cf line, or the step to take


@dataclass
class Certificate:
    subject: str
    issuer: str
    not_before: str
    not_after: str
    names: list[str]


@dataclass
class Report:
    nexthop: str
    facts: list[tuple[str, str]] = field(default_factory=list)     # (topic, text), in session order
    problems: list[Problem] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)
    verified: bool | None = None          # None: not checked (no TLS)
    verify_reason: str = ""
    authenticated: bool = False
    credentials_key: str = ""            # the smtp_sasl_password_maps key whose entry matched
    credentials_user: str = ""
    credentials_table: str = ""

    @property
    def ok(self) -> bool:
        return not any(problem.severity == ERROR for problem in self.problems)

    def fact(self, topic: str, text: str) -> None:
        self.facts.append((topic, text))

    def problem(self, severity: str, text: str, advice: str, first: bool = False) -> None:
        """`first`: the session stopped here, so this comes before what it kept from being tried."""
        self.problems.insert(0 if first else len(self.problems), Problem(severity, text, advice))


# --- the recording session ----------------------------------------------------------------

class _RecordingSetup(SessionSetup):
    """Delivery's session setup, noting the policy, the connection, the stage reached and the certificate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy: TlsPolicy | None = None
        self.connection: Connection | None = None
        self.stage = "policy"
        self.starttls_offered: bool | None = None
        self.certificate = b""           # the server's certificate, DER
        self.chain: list[bytes] = []     # the whole chain, where Python's ssl can give it (3.13)

    async def _tls_policy(self, hop: Hop) -> TlsPolicy:
        self.policy = await super()._tls_policy(hop)
        self.stage = "connect"
        return self.policy

    async def _connect(self, host: str, address: str, port: int | None) -> Connection:
        self.stage = "connect"
        self.connection = await super()._connect(host, address, port)
        self.stage = "greeting"
        return self.connection

    async def _start_tls(self, connection: Connection, hop: Hop, policy: TlsPolicy) -> None:
        self.stage = "starttls"
        self.starttls_offered = bool(connection.extensions.starttls)
        try:
            await super()._start_tls(connection, hop, policy)
        finally:
            ssl_object = connection.writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.certificate = ssl_object.getpeercert(binary_form=True) or b""
                chain = getattr(ssl_object, "get_unverified_chain", None)
                if chain is not None:
                    self.chain = [_der(item) for item in (chain() or [])]

    async def _authenticate(self, connection: Connection, hop: Hop, sender: str) -> None:
        self.stage = "auth"
        if self.starttls_offered is None:
            self.starttls_offered = bool(connection.extensions.starttls)
        await super()._authenticate(connection, hop, sender)
        self.stage = "ready"


def _der(item) -> bytes:
    if isinstance(item, bytes):
        return item
    return item.public_bytes(getattr(ssl._ssl, "ENCODING_DER", 1))  # noqa: SLF001 - ssl.Certificate, 3.13


async def _session(settings: ClientSettings, dns, maps, policies, nexthop: str, sender: str,
                   tokens: oauth2.TokenManager | None = None
                   ) -> tuple[_RecordingSetup, MemoryLog, Connection | None, SetupFailed | None]:
    """One session as delivery opens it; QUIT at once when it is ready for MAIL."""
    log = MemoryLog()
    setup = _RecordingSetup(settings, dns, log, maps, policies, tokens)
    try:
        connection = await setup.open(nexthop, sender)
    except SetupFailed as failure:
        return setup, log, None, failure
    setup.stage = "ready"
    try:
        await connection.command(proto.QUIT, settings.helo_timeout, "sending QUIT")
    except Exception:   # noqa: BLE001 - the answer to QUIT changes nothing here
        pass
    connection.close()
    return setup, log, connection, None


# --- the check ----------------------------------------------------------------------------

def service_config(config: Config, master: MasterCf | None, transport: str) -> Config:
    """main.cf as the master.cf service `transport` sees it (its -o options), as delivery reads it."""
    for service in (master.services if master else []):
        if service.name == transport and service.type == "unix" and service.overrides:
            return config.with_overrides(service.overrides, f"{master.path}, line {service.line}")
    return config


async def relay_check(config: Config, nexthop: str, *, sender: str = "", transport: str = "smtp",
                      master: MasterCf | None = None) -> Report:
    """Connect to `nexthop` as the `transport` client would, and report what it found."""
    report = Report(nexthop)
    view = service_config(config, master, transport)
    try:
        settings = ClientSettings.from_config(view, transport, lmtp=False)
        hop = parse_hop(nexthop, lmtp=False)
    except ValueError as problem:
        report.problem(ERROR, str(problem), "fix that parameter: `mailferry check` shows where it is set")
        return report
    protocols = tuple(config.list("inet_protocols")) or ("all",)
    dns = NexthopResolver.from_environment(inet_protocols=protocols, mx_address_limit=0)
    maps, table_name = _password_maps(settings, report)
    policies = _policy_table(settings, view, report)
    if maps is False or policies is False:
        return report
    _describe_settings(settings, hop, sender, report)
    # OAuth2 entries: the daemon's own token cache, so a good token is used, not fetched again.
    token_directory = oauth2.cache_directory(config.get("queue_directory"))
    tokens = oauth2.TokenManager(token_directory, MemoryLog(), settings.transport)
    try:
        setup, log, connection, failure = await _session(
            settings, dns, maps if settings.sasl_enable else None, policies, nexthop, sender, tokens)
    finally:
        if tokens.refreshes:
            _give_to_mail_owner(token_directory, config)
    policy = setup.policy or settings.tls
    if setup.policy is not None and setup.policy is not settings.tls:
        report.fact("tls", f"{client_parameter(settings.prefix, 'smtp_tls_policy_maps')} has an entry for "
                           f"{nexthop}: level {policy.level}")
    if setup.connection is not None:
        report.fact("connect", f"connected to {setup.connection.relay}")
    await _certificate(report, settings, dns, nexthop, sender, policy, setup, log, failure)
    if setup.connection is not None and setup.connection.extensions is not None:
        await _sasl(report, settings, view, hop, sender, maps, table_name, setup, failure)
    _session_outcome(report, settings, hop, policy, setup, log, failure)
    if report.ok and settings.sasl_enable and report.authenticated and policy.level in ("may", "none"):
        better = "secure" if report.verified else "encrypt"
        report.problem(WARNING, f"{client_parameter(settings.prefix, 'smtp_tls_security_level')} = {policy.level}: "
                                "the password is sent even when STARTTLS is missing or stripped by an attacker, "
                                "and the server certificate is not checked",
                       f"{client_parameter(settings.prefix, 'smtp_tls_security_level')} = {better}")
    return report


def _give_to_mail_owner(directory: str, config: Config) -> None:
    """A token relay-check fetched as root stays usable by the daemon (mail_owner's cache)."""
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(config.get("mail_owner"))
    except (KeyError, ValueError):
        return
    for root, _, files in os.walk(directory):
        for path in (root, *(os.path.join(root, name) for name in files)):
            try:
                os.chown(path, owner.pw_uid, owner.pw_gid)
            except OSError:
                pass


def _password_maps(settings: ClientSettings, report: Report):
    spec = settings.sasl_password_maps.strip()
    if not spec:
        return None, ""
    name = _safe_tables(spec)
    try:
        return open_maps(spec), name
    except TableError as problem:
        text = str(problem).replace(spec, name)
        report.problem(ERROR, f"{client_parameter(settings.prefix, 'smtp_sasl_password_maps')}: {text}",
                       f"run `mailferry postmap {name}` (as root: the table is rightly root's alone)")
        return False, name


def _safe_tables(spec: str) -> str:
    """The table names, with an inline table's text (user:password pairs) left out."""
    return ", ".join(item.partition("{")[0] + "{...}" if "{" in item else item for item in split_list(spec))


def _policy_table(settings: ClientSettings, config: Config, report: Report):
    if not settings.tls_policy_maps.strip():
        return None
    try:
        return TlsPolicyTable(open_maps(settings.tls_policy_maps), config, settings.prefix, MemoryLog(),
                              settings.transport)
    except TableError as problem:
        report.problem(ERROR, f"{client_parameter(settings.prefix, 'smtp_tls_policy_maps')}: {problem}",
                       f"run `mailferry postmap {settings.tls_policy_maps}`")
        return False


def _describe_settings(settings: ClientSettings, hop: Hop, sender: str, report: Report) -> None:
    prefix = settings.prefix
    how = "no MX lookup" if not hop.use_mx else "MX lookup"
    report.fact("nexthop", f"next hop {hop.written}: host {hop.host}, port {hop.port} ({how})")
    report.fact("tls", f"{client_parameter(prefix, 'smtp_tls_security_level')} = {settings.tls.level}")
    if settings.sender_dependent_authentication and not sender:
        report.fact("credentials", f"{client_parameter(prefix, 'smtp_sender_dependent_authentication')} = yes: "
                                   "delivery looks up each sender's own entry first; without -f SENDER only "
                                   "the host and next-hop entries are tried here")


# --- the certificate ----------------------------------------------------------------------

async def _certificate(report: Report, settings: ClientSettings, dns, nexthop: str, sender: str,
                       policy: TlsPolicy, setup: _RecordingSetup, log: MemoryLog,
                       failure: SetupFailed | None) -> None:
    if not policy.offers_tls or not setup.starttls_offered:
        return
    verify_policy = policy
    if policy.verifies:
        reason = _verification_reason(log.texts())
        verified = setup.connection is not None and setup.connection.tls == "Verified"
    else:
        # The level does not verify: ask the configured store anyway, in a session of its own.
        verify_policy = _verifying(policy)
        probe_settings = dataclasses.replace(settings, tls=verify_policy, sasl_enable=False)
        probe, probe_log, _, probe_failure = await _session(probe_settings, dns, None, None, nexthop, sender)
        verified = probe_failure is None
        reason = _verification_reason(probe_log.texts()) if probe_failure else ""
        if probe_failure is not None and not reason:
            reason = probe_failure.result.reason
        if probe.certificate and not setup.certificate:
            setup.certificate, setup.chain = probe.certificate, probe.chain
    if not setup.certificate:
        # Verification stopped the handshake: look again without it, to show what was presented.
        fetch_settings = dataclasses.replace(settings, tls=dataclasses.replace(policy, level="encrypt", match=()),
                                             sasl_enable=False)
        fetched, _, _, _ = await _session(fetch_settings, dns, None, None, nexthop, sender)
        setup.certificate, setup.chain = fetched.certificate, fetched.chain
    report.certificates = [_decode(der) for der in (setup.chain or [setup.certificate]) if der]
    store = _store(verify_policy)
    report.verified = verified
    report.verify_reason = reason
    if verified:
        report.fact("certificate", f"verified against {store}")
    elif "do not match" in reason:
        report.fact("certificate", f"NOT verified: the chain verified against {store}, but {reason}")
    else:
        report.fact("certificate", f"NOT verified against {store}: {reason}")
    if not verified and not policy.verifies:
        level = client_parameter(settings.prefix, "smtp_tls_security_level")
        report.fact("certificate", f"{level} = {policy.level} does not require a verified certificate, "
                                   "so delivery goes on regardless")


def _verifying(policy: TlsPolicy) -> TlsPolicy:
    """The policy at level verify with its own CA settings: what `verify` would say of the
    server's host name and the next hop (Postfix's defaults for verify and secure)."""
    return dataclasses.replace(policy, level="verify", match=("hostname", "nexthop"))


def _verification_reason(lines: list[str]) -> str:
    for line in lines:
        if "certificate verification failed for" in line:
            return line.split(": ", 1)[1] if ": " in line else line
    return ""


def _store(policy: TlsPolicy) -> str:
    return trust_store_description(policy)


def _decode(der: bytes) -> Certificate:
    """subject, issuer, validity and names of a DER certificate, through the stdlib's own decoder."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as file:
        file.write(ssl.DER_cert_to_PEM_cert(der))
        file.flush()
        decoded = ssl._ssl._test_decode_cert(file.name)  # noqa: SLF001 - the stdlib's only DER decoder
    names = [f"{kind}:{value}" for kind, value in decoded.get("subjectAltName", ())]
    return Certificate(_dn(decoded.get("subject", ())), _dn(decoded.get("issuer", ())),
                       decoded.get("notBefore", ""), decoded.get("notAfter", ""), names)


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


def _dn(rdns) -> str:
    return ", ".join(f"{_SHORT_NAMES.get(key, key)}={value}" for rdn in rdns for key, value in rdn)


# --- SASL ---------------------------------------------------------------------------------

async def _sasl(report: Report, settings: ClientSettings, config: Config, hop: Hop, sender: str, maps,
                table_name: str, setup: _RecordingSetup, failure: SetupFailed | None) -> None:
    prefix = settings.prefix
    connection = setup.connection
    offered = tuple(connection.extensions.auth or ())
    report.fact("auth", f"the server offers AUTH {' '.join(offered)}" if offered else
                "the server offers no AUTH" + ("" if connection.tls else " (before STARTTLS)"))
    credentials = await _credentials(report, settings, config, hop, sender, maps, table_name, connection)
    if connection.tls:
        options, options_parameter = settings.sasl_tls_security_options, "smtp_sasl_tls_security_options"
    else:
        options, options_parameter = settings.sasl_security_options, "smtp_sasl_security_options"
    reached = failure is None or setup.stage == "auth"   # a session that stopped earlier never chose
    supported = credentials.mechanisms if credentials is not None else sasl.SUPPORTED
    if offered and reached:
        try:
            verdicts = sasl.mechanism_verdicts(
                offered, mechanism_filter=settings.sasl_mechanism_filter, security_options=options,
                options_parameter=client_parameter(prefix, options_parameter),
                filter_parameter=client_parameter(prefix, "smtp_sasl_mechanism_filter"), supported=supported)
        except ValueError as problem:
            report.problem(ERROR, str(problem), f"{client_parameter(prefix, options_parameter)} = noanonymous")
            verdicts = []
        for mechanism, why in verdicts:
            report.fact("auth", f"  {mechanism}: {'allowed' if not why else 'excluded, ' + why}")
        if verdicts and not any(not why for _, why in verdicts) and settings.sasl_enable and credentials:
            report.problem(ERROR, "no offered mechanism is allowed (Cyrus SASL's \"No worthy mechs found\")",
                           _mechanism_advice(verdicts, settings, config, options_parameter, bool(connection.tls),
                                             supported))
    if credentials is None or not settings.sasl_enable:
        return
    if not offered and reached:
        if not connection.tls and setup.starttls_offered:
            report.problem(ERROR, "the server offers AUTH only after STARTTLS, and this session has no TLS",
                           f"{client_parameter(prefix, 'smtp_tls_security_level')} = encrypt")
        else:
            report.problem(ERROR, f"the server at {hop.written} offers no AUTH: it is probably not the "
                                  "submission port", f"relayhost = [{hop.host}]:587")


async def _credentials(report: Report, settings: ClientSettings, config: Config, hop: Hop, sender: str, maps,
                       table_name: str, connection: Connection) -> sasl.Credentials | None:
    """The entry delivery would use, looked up as delivery does; reported by key and user only."""
    prefix = settings.prefix
    if not settings.sasl_password_maps.strip():
        if settings.sasl_enable:
            report.problem(ERROR, f"{client_parameter(prefix, 'smtp_sasl_password_maps')} is empty: "
                                  "there is no password to send",
                           f"{client_parameter(prefix, 'smtp_sasl_password_maps')} = "
                           f"hash:{config.config_dir}/sasl_passwd")
        return None
    dependent = settings.sender_dependent_authentication
    keys = [key for key, _ in sasl.credential_keys(sender=sender, sender_dependent=dependent,
                                                   hostname=connection.host, nexthop=hop.written)]
    try:
        found = await sasl.find_credentials_entry(maps, sender=sender, sender_dependent=dependent,
                                                  hostname=connection.host, nexthop=hop.written)
    except sasl.SaslLookupError as problem:
        report.problem(ERROR, str(problem), "bring the table's server back, then run relay-check again")
        return None
    if found is None:
        report.fact("credentials", f"no entry in {table_name} (keys tried: {', '.join(keys)})")
        if settings.sasl_enable:
            report.problem(ERROR, f"no password for this relay in {table_name}: no entry under "
                                  f"{', '.join(keys)}",
                           f"add the line \"{hop.written} USERNAME:PASSWORD\" to {_source(table_name)}, "
                           f"then run `mailferry postmap {table_name}`")
        return None
    key, credentials = found
    tried = keys[:keys.index(key) + 1] if key in keys else keys
    what = "OAuth2 settings " + credentials.oauth2_settings if credentials.oauth2_settings else "password hidden"
    report.fact("credentials", f"entry {key!r} in {table_name} matched (keys tried: {', '.join(tried)}): "
                               f"user {credentials.username}, {what}")
    report.credentials_key = key                 # for the advice on a refused password
    report.credentials_user = credentials.username
    report.credentials_table = table_name
    if credentials.oauth2_settings is not None:
        status = token_status(credentials, config.get("queue_directory"))
        report.fact("credentials", status.text)
        if status.state in ("refused", "failed", "unusable"):
            report.problem(ERROR, f"the OAuth2 token for {credentials.username} cannot be refreshed",
                           f"get a new refresh token: mailferry oauth2 --settings {credentials.oauth2_settings} "
                           "(docs/oauth2.md)")
    if not settings.sasl_enable:
        report.problem(ERROR, f"{client_parameter(prefix, 'smtp_sasl_auth_enable')} = no: the password is never sent",
                       f"{client_parameter(prefix, 'smtp_sasl_auth_enable')} = yes")
    return credentials


def token_status(credentials: sasl.Credentials, queue_directory: str) -> oauth2.TokenStatus:
    """An OAuth2 entry's access token as the daemon's cache holds it (oauth2.entry_status):
    its state and expiry, never the token."""
    status = oauth2.entry_status(credentials.password, queue_directory)
    return oauth2.TokenStatus(status.state, f"OAuth2 token: {status.text}", status.expires_at)


def _source(table_name: str) -> str:
    """The file an admin edits: hash:/etc/mailferry/sasl_passwd -> /etc/mailferry/sasl_passwd."""
    first = table_name.split(",")[0].strip()
    return first.partition(":")[2] or first


def _mechanism_advice(verdicts, settings: ClientSettings, config: Config, options_parameter: str,
                      tls: bool, usable: tuple[str, ...] = sasl.SUPPORTED) -> str:
    prefix = settings.prefix
    supported = [mechanism for mechanism, _ in verdicts if mechanism in usable]
    if not supported:
        offered = [mechanism for mechanism, _ in verdicts]
        if usable == sasl.SUPPORTED and any(mechanism in sasl.OAUTH2_SUPPORTED for mechanism in offered):
            return ("make the entry an OAuth2 one: `mailferry oauth2` gets a refresh token and writes "
                    "\"KEY USER:oauth2:/path/settings.json\" (docs/oauth2.md)")
        return (f"none: the server offers {' '.join(offered)} only, and mailferry's SASL client supports "
                f"{' and '.join(usable)} for this entry; use the provider's SMTP password (app password) or OAuth2 "
                "service, or another relay")
    reasons = {mechanism: why for mechanism, why in verdicts}
    if all(reasons[mechanism].startswith("removed by") for mechanism in supported):
        return f"{client_parameter(prefix, 'smtp_sasl_mechanism_filter')} = {', '.join(m.lower() for m in supported)}"
    kept = [option for option in (settings.sasl_tls_security_options if tls else settings.sasl_security_options)
            if option.lower() not in ("noplaintext", "noactive", "nodictionary", "mutual_auth")]
    value = ", ".join(dict.fromkeys(["noanonymous", *kept]))
    if not tls:
        return f"{client_parameter(prefix, 'smtp_tls_security_level')} = encrypt"
    tls_name = client_parameter(prefix, "smtp_sasl_tls_security_options")
    raw = (config.raw(tls_name) or "").strip()
    if raw in (f"${client_parameter(prefix, 'smtp_sasl_security_options')}",
               f"${{{client_parameter(prefix, 'smtp_sasl_security_options')}}}"):
        return f"{client_parameter(prefix, 'smtp_sasl_security_options')} = {value}"
    return f"{tls_name} = {value}"


# --- the session's outcome ----------------------------------------------------------------

def _session_outcome(report: Report, settings: ClientSettings, hop: Hop, policy: TlsPolicy,
                     setup: _RecordingSetup, log: MemoryLog, failure: SetupFailed | None) -> None:
    prefix = settings.prefix
    level = client_parameter(prefix, "smtp_tls_security_level")
    connection = setup.connection
    if connection is not None and connection.tls:
        report.fact("tls", f"{connection.tls} TLS connection established to {connection.relay}")
    elif connection is not None and setup.starttls_offered is False:
        report.fact("tls", "the server does not offer STARTTLS")
    if failure is None:
        if connection is not None and connection.authenticated:
            report.authenticated = True
            report.fact("auth", f"authentication succeeded as {report.credentials_user}; "
                                "QUIT sent, no mail")
        else:
            report.fact("session", "the session is ready for mail (no authentication); QUIT sent, no mail")
        return
    reason = failure.result.reason
    relayhost = f"relayhost = [{hop.host}]:{hop.port}"
    if setup.stage in ("policy", "connect") or failure.connect_failure:
        report.problem(ERROR, f"cannot reach {hop.written}: {reason}",
                       f"{relayhost}  (check the name and port; for Gmail: relayhost = [smtp.gmail.com]:587)",
                       first=True)
    elif setup.stage == "starttls" and "was not offered" in reason:
        report.problem(ERROR, f"the server does not offer STARTTLS, and {level} = {policy.level} requires TLS: "
                              f"{reason}",
                       f"none in main.cf while the server lacks STARTTLS: point relayhost at a port that offers it "
                       f"(relayhost = [{hop.host}]:587), or have its administrator turn STARTTLS on", first=True)
    elif setup.stage == "starttls" and "not verified" in reason:
        report.problem(ERROR, f"the server certificate did not verify: {report.verify_reason or reason}",
                       _certificate_advice(report, settings, hop, policy), first=True)
    elif setup.stage == "starttls":
        report.problem(ERROR, f"TLS failed: {reason}",
                       f"{client_parameter(prefix, 'smtp_tls_mandatory_protocols')} = >=TLSv1.2  "
                       "(if the server only speaks older TLS, ask its administrator)", first=True)
    elif setup.stage == "auth" and "said:" in reason:
        table = report.credentials_table or "the password table"
        key = report.credentials_key or hop.written
        report.problem(ERROR, f"the server refused the login of {report.credentials_user}: "
                              f"{reason.split('said: ', 1)[1]}",
                       f"fix the password of entry {key!r} in {_source(table)} (Gmail and Microsoft 365 want "
                       f"an app password), then run `mailferry postmap {table}`")
    elif setup.stage == "auth":
        if not any(problem.severity == ERROR for problem in report.problems):   # else explained above
            report.problem(ERROR, reason, "see docs/relay-check.md for this failure")
    else:
        report.problem(ERROR, f"the server refused the session: {reason}",
                       f"{relayhost}  (is this the provider's submission server?)", first=True)


def _certificate_advice(report: Report, settings: ClientSettings, hop: Hop, policy: TlsPolicy) -> str:
    prefix = settings.prefix
    reason = report.verify_reason
    issuer = report.certificates[0].issuer if report.certificates else "unknown"
    if "do not match" in reason:
        names = [name.partition(":")[2] for name in (report.certificates[0].names if report.certificates else [])
                 if name.startswith("DNS:")]
        if names:
            return f"relayhost = [{names[0]}]:{hop.port}  (name the server as its certificate does)"
        return f"{client_parameter(prefix, 'smtp_tls_verify_cert_match')} = hostname"
    if "expired" in reason or "not yet valid" in reason:
        return ("none in main.cf: the server's administrator must renew its certificate "
                f"(do not lower {client_parameter(prefix, 'smtp_tls_security_level')} to get around it)")
    ca_file = client_parameter(prefix, "smtp_tls_CAfile")
    if os.path.realpath(policy.ca_file or "") != os.path.realpath(SYSTEM_CA_FILE):
        return f"{ca_file} = {SYSTEM_CA_FILE}  (issuer {issuer}; for a private CA, its certificate file instead)"
    return f"{ca_file} = /path/to/the-CA-of-{issuer.replace(' ', '_')}.pem  (the issuer is no public CA)"


# --- `mailferry check` --------------------------------------------------------------------

def config_problems(config: Config, master: MasterCf | None = None, online: bool = False) -> list[Diagnostic]:
    """What `check` adds: a password protected by `may`/`none`; with `online`, the relay's
    certificate against the CA store (one session, as relay-check)."""
    try:
        relayhost = config.get("relayhost").strip()
        view = service_config(config, master, "smtp")
        settings = ClientSettings.from_config(view, "smtp", lmtp=False)
    except ValueError:
        return []        # lint reports it
    if not relayhost:
        return []
    return _in_thread(lambda: _config_problems(config, view, settings, relayhost, master, online))


def _in_thread(work):
    """Run an async check to completion from synchronous code, even inside a running loop."""
    result: list = []
    failure: list = []

    def run():
        try:
            result.append(asyncio.run(work()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
    thread = threading.Thread(target=run, name="relay-check")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def _config_problems(config: Config, view: Config, settings: ClientSettings, relayhost: str,
                           master: MasterCf | None, online: bool) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    level_name = client_parameter(settings.prefix, "smtp_tls_security_level")
    policy = settings.tls
    try:
        hop = parse_hop(relayhost, lmtp=False)
    except ValueError:
        return []
    if settings.tls_policy_maps.strip():
        try:
            table = TlsPolicyTable(open_maps(settings.tls_policy_maps), view, settings.prefix, MemoryLog(), "smtp")
            policy = await table.policy_for(hop.written, hop.domain, hop.bracketed) or policy
        except Exception:   # noqa: BLE001 - the table's own problems are check's other findings
            pass
    if settings.sasl_enable and settings.sasl_password_maps.strip() and policy.level in ("may", "none"):
        key = await _password_key(settings, hop)
        if key:
            setting = config.settings.get(level_name)
            place = (setting.file, setting.line) if setting else (os.path.join(config.config_dir, "main.cf"), None)
            what = ("STARTTLS is never used, so the password crosses the network readable"
                    if policy.level == "none" else
                    "a password is sent even when STARTTLS is missing or stripped by an attacker, and the "
                    "certificate is not checked")
            found.append(warning(f"parameter {level_name} = {policy.level} while {relayhost} gets a password "
                                 f"(smtp_sasl_password_maps entry {key!r}): {what}; encrypt or secure is meant: "
                                 f"set \"{level_name} = encrypt\" (or secure, with smtp_tls_CAfile)",
                                 place[0], place[1], level_name))
    if online and policy.offers_tls:
        report = await relay_check(config, relayhost, master=master)
        if report.verified is False:
            setting = config.settings.get(client_parameter(settings.prefix, "smtp_tls_CAfile"))
            advice = _certificate_advice(report, settings, hop, policy)
            found.append((error if policy.verifies else warning)(
                f"relay {relayhost}: the server certificate does not verify against {_store(policy)}: "
                f"{report.verify_reason}; set {advice}",
                setting.file if setting else None, setting.line if setting else None,
                client_parameter(settings.prefix, "smtp_tls_CAfile")))
        elif report.verified is None and any(p.severity == ERROR for p in report.problems):
            found.append(warning(f"relay {relayhost}: --online could not check the certificate: "
                                 f"{report.problems[0].text}; run `mailferry relay-check` for the whole story"))
    return found


async def _password_key(settings: ClientSettings, hop: Hop) -> str:
    """The key under which smtp_sasl_password_maps has an entry for this relay, or ""."""
    try:
        maps: Maps = open_maps(settings.sasl_password_maps)
        found = await sasl.find_credentials_entry(maps, sender="", sender_dependent=False,
                                              hostname=hop.host, nexthop=hop.written)
    except (TableError, sasl.SaslLookupError, OSError):
        return ""
    return found[0] if found else ""
