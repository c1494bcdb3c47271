"""The client side of TLS: what the SMTP/LMTP client demands of a server, per smtp_tls_security_level.

Levels, as Postfix defines them:
- `none`: no STARTTLS.
- `may`: STARTTLS when offered, no certificate checks. (Postfix retries a failed handshake in
  plaintext; mailferry defers the mail with 4.7.5 and tries again later.)
- `encrypt`: STARTTLS required, no certificate checks.
- `verify`: STARTTLS required; the chain must lead to a trusted CA and a certificate name
  must match smtp_tls_verify_cert_match (default: the server's host name, often from MX).
- `secure`: as verify, but names come from smtp_tls_secure_cert_match (default: the
  next-hop domain or a subdomain), so an MX lookup cannot redirect trust.

The stdlib checks the chain; names are matched here (check_hostname stays off) because
Postfix's strategies (`nexthop`, `dot-nexthop`, literal names) have no stdlib equivalent.
DANE and fingerprint levels need more than the stdlib offers and are refused by name.

With an empty smtp_tls_security_level, Postfix falls back to the obsolete smtp_use_tls,
smtp_enforce_tls and smtp_tls_enforce_peername; so does this module, so an old
`smtp_use_tls = yes` config does not quietly send in plaintext.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
from dataclasses import dataclass

from mailferry.config.config import Config, ConfigValueError
from mailferry.delivery.client_parameters import client_parameter
from mailferry.tlsinfo import describe
from mailferry.tlsparams import LIST_SEPARATORS as _LIST_SEPARATORS
from mailferry.tlsparams import CIPHERLIST_PARAMETERS, cipher_string, protocol_bounds, set_ciphers, set_versions

LEVELS = ("none", "may", "encrypt", "verify", "secure")
UNSUPPORTED_LEVELS = {
    "dane": "DANE needs DNSSEC-validated TLSA lookups",
    "dane-only": "DANE needs DNSSEC-validated TLSA lookups",
    "fingerprint": "certificate fingerprint matching is not implemented",
}
TRUST_LEVELS = ("Verified", "Trusted", "Untrusted", "Anonymous")


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    level: str  # none | may | encrypt | verify | secure
    ca_file: str = ""
    ca_path: str = ""
    servername: str = ""  # "" (no SNI), "hostname", "nexthop", or a literal name
    match: tuple[str, ...] = ()  # hostname | nexthop | dot-nexthop | name | .name
    protocols: str = ""  # Postfix syntax: ">=TLSv1.2", "!SSLv2, !SSLv3", ...
    cert_file: str = ""
    key_file: str = ""
    ciphers: str = ""  # the OpenSSL cipher string for TLS <= 1.2, from the grade and exclusions
    # Which parameter family the values came from, for error messages: "smtp" or "lmtp".
    parameter_prefix: str = "smtp"

    @classmethod
    def from_config(cls, config: Config, prefix: str = "smtp") -> TlsPolicy:
        level = _level(config, prefix)
        match: tuple[str, ...] = ()
        if level in ("verify", "secure"):
            match = _match(config, client_parameter(prefix, "smtp_tls_verify_cert_match" if level == "verify" else "smtp_tls_secure_cert_match"), level)
        protocols = ""
        if level != "none":
            protocols_parameter = client_parameter(
                prefix, "smtp_tls_protocols" if level == "may" else "smtp_tls_mandatory_protocols")
            protocols = config.get(protocols_parameter).strip()
            try:
                protocol_bounds(protocols)
            except ValueError as exc:
                raise ConfigValueError(config.where(protocols_parameter), str(exc)) from None
        cert_file = config.get(client_parameter(prefix, "smtp_tls_cert_file")).strip()
        ciphers = _cipher_string(config, prefix, level) if level != "none" else ""
        return cls(
            level=level,
            ca_file=config.get(client_parameter(prefix, "smtp_tls_CAfile")).strip(),
            ca_path=config.get(client_parameter(prefix, "smtp_tls_CApath")).strip(),
            servername=config.get(client_parameter(prefix, "smtp_tls_servername")).strip(),
            match=match,
            protocols=protocols,
            cert_file=cert_file,
            key_file=(config.get(client_parameter(prefix, "smtp_tls_key_file")).strip() or cert_file) if cert_file else "",
            ciphers=ciphers,
            parameter_prefix=prefix,
        )

    @property
    def offers_tls(self) -> bool:
        return self.level != "none"

    @property
    def requires_tls(self) -> bool:
        return self.level in ("encrypt", "verify", "secure")

    @property
    def verifies(self) -> bool:
        return self.level in ("verify", "secure")

    def parameter(self, suffix: str) -> str:
        """The main.cf name behind a field: parameter("CAfile") -> "smtp_tls_CAfile"."""
        return client_parameter(self.parameter_prefix, f"smtp_tls_{suffix}")


def _level(config: Config, prefix: str) -> str:
    parameter = client_parameter(prefix, "smtp_tls_security_level")
    level = config.get(parameter).strip().lower()
    if not level:
        return _obsolete_level(config, prefix)
    if level in UNSUPPORTED_LEVELS:
        raise ConfigValueError(config.where(parameter), (
            f"security level {level!r} is not supported by mailferry ({UNSUPPORTED_LEVELS[level]}); "
            "use verify or secure with a CA, or encrypt"))
    if level not in LEVELS:
        raise ConfigValueError(config.where(parameter), (
            f"unknown security level {level!r}: use none, may, encrypt, verify or secure"))
    return level


def _cipher_string(config: Config, prefix: str, level: str) -> str:
    """smtp_tls_ciphers at `may`, else smtp_tls_mandatory_ciphers, less the exclusions (the
    mandatory ones too above `may`), as Postfix's smtp(8) builds its cipher list."""
    mandatory = level != "may"
    grade = client_parameter(prefix, "smtp_tls_mandatory_ciphers" if mandatory else "smtp_tls_ciphers")
    exclusions = config.list(client_parameter(prefix, "smtp_tls_exclude_ciphers"))
    if mandatory:
        exclusions += config.list(client_parameter(prefix, "smtp_tls_mandatory_exclude_ciphers"))
    try:
        return cipher_string(config.get(grade), exclusions,
                             {name: config.get(parameter) for name, parameter in CIPHERLIST_PARAMETERS.items()})
    except ValueError as exc:
        raise ConfigValueError(config.where(grade), str(exc)) from None


def _obsolete_level(config: Config, prefix: str) -> str:
    if config.boolean(client_parameter(prefix, "smtp_enforce_tls")):
        return "verify" if config.boolean(client_parameter(prefix, "smtp_tls_enforce_peername")) else "encrypt"
    return "may" if config.boolean(client_parameter(prefix, "smtp_use_tls")) else "none"


def _match(config: Config, parameter: str, level: str) -> tuple[str, ...]:
    items = tuple(item.lower() for item in _LIST_SEPARATORS.split(config.get(parameter)) if item)
    if not items:
        raise ConfigValueError(config.where(parameter), (
            f"empty: at level {level} a certificate name must match something; "
            "use hostname, nexthop, dot-nexthop or domain names"))
    return items


# --- the SSLContext ----------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def client_context(policy: TlsPolicy) -> ssl.SSLContext:
    """The context for this policy; raises ValueError naming the parameter to fix."""
    if not policy.offers_tls:
        raise ValueError(f"{policy.parameter('security_level')} = none: TLS is off, there is no client context")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # names are matched by certificate_matches
    if policy.verifies:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_trust(context, policy)
    else:
        context.verify_mode = ssl.CERT_NONE
    _set_versions(context, policy)
    if policy.ciphers:
        grade = policy.parameter("ciphers" if policy.level == "may" else "mandatory_ciphers")
        try:
            set_ciphers(context, policy.ciphers)
        except ValueError as exc:
            raise ValueError(f"{grade}: {exc}") from None
    if policy.cert_file:
        _load_client_certificate(context, policy)
    return context


def _load_trust(context: ssl.SSLContext, policy: TlsPolicy) -> None:
    if not policy.ca_file and not policy.ca_path:
        context.set_default_verify_paths()
        return
    if policy.ca_file:
        try:
            context.load_verify_locations(cadata=ca_file_text(policy.parameter("CAfile"), policy.ca_file))
        except ssl.SSLError as exc:
            raise ValueError(f"{policy.parameter('CAfile')} = {policy.ca_file}: "
                             f"no usable PEM certificate in it ({exc.reason or exc})") from None
    if policy.ca_path:
        if not os.path.isdir(policy.ca_path):
            raise ValueError(f"{policy.parameter('CApath')} = {policy.ca_path}: not a directory")
        context.load_verify_locations(capath=policy.ca_path)


@functools.lru_cache(maxsize=None)
def ca_file_text(parameter: str, path: str) -> str:
    """The CA file's PEM text, read once. The daemon reads it at start, while still
    root, so that a policy chosen later (smtp_tls_policy_maps) finds it too."""
    _readable(parameter, path)
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"{parameter} = {path}: cannot read: {exc.strerror}") from None


def preload_trust(policy: TlsPolicy) -> None:
    """Read the policy's CA file now (see ca_file_text), whatever its level."""
    if policy.ca_file:
        ca_file_text(policy.parameter("CAfile"), policy.ca_file)


def _set_versions(context: ssl.SSLContext, policy: TlsPolicy) -> None:
    parameter = policy.parameter("protocols" if policy.level == "may" else "mandatory_protocols")
    try:
        set_versions(context, policy.protocols)
    except ValueError as exc:
        raise ValueError(f"{parameter} = {policy.protocols}: {exc}") from None


def _load_client_certificate(context: ssl.SSLContext, policy: TlsPolicy) -> None:
    key_file = policy.key_file or policy.cert_file
    _readable(policy.parameter("cert_file"), policy.cert_file)
    _readable(policy.parameter("key_file"), key_file)
    try:
        context.load_cert_chain(policy.cert_file, key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{policy.parameter('cert_file')} = {policy.cert_file}, "
                         f"{policy.parameter('key_file')} = {key_file}: cannot load the client certificate "
                         f"and key ({exc.reason or exc}); they must be PEM and belong together") from None


def _readable(parameter: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{parameter} = {path}: cannot read: {exc.strerror}") from None


def trust_store_description(policy: TlsPolicy) -> str:
    """Where verified connections get their trust anchors, for the start-up log line."""
    if policy.ca_file and policy.ca_path:
        return f"CAfile {policy.ca_file} and CApath {policy.ca_path}"
    if policy.ca_file:
        return f"CAfile {policy.ca_file}"
    if policy.ca_path:
        return f"CApath {policy.ca_path}"
    paths = ssl.get_default_verify_paths()
    present = [path for path in (paths.cafile, paths.capath) if path]
    if present:
        return f"the system trust store ({', '.join(present)})"
    return (f"the system trust store, which is empty: neither {paths.openssl_cafile} "
            f"nor {paths.openssl_capath} exists")


# --- names -------------------------------------------------------------------------------

def _bare_domain(nexthop: str) -> str:
    """"[smtp.gmail.com]:587" -> "smtp.gmail.com"; names compare lower-case, without a final dot."""
    text = nexthop.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".").lower()


def _is_ip_address(name: str) -> bool:
    candidate = name[5:] if name.lower().startswith("ipv6:") else name
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def server_name(policy: TlsPolicy, nexthop_domain: str, hostname: str) -> str | None:
    """The SNI name to send, or None for none (the default; never an IP address)."""
    setting = policy.servername.strip()
    if not setting:
        return None
    if setting.lower() == "hostname":
        setting = hostname
    elif setting.lower() == "nexthop":
        setting = nexthop_domain
    name = _bare_domain(setting)
    if not name or _is_ip_address(name):
        return None
    return name


def expected_names(policy: TlsPolicy, nexthop_domain: str, hostname: str) -> list[str]:
    """The names one of which the server certificate must carry, in policy order."""
    nexthop = _bare_domain(nexthop_domain)
    host = _bare_domain(hostname)
    names: list[str] = []
    for item in policy.match:
        if item == "hostname":
            name = host
        elif item == "nexthop":
            name = nexthop
        elif item == "dot-nexthop":
            name = f".{nexthop}" if nexthop else ""
        else:
            name = item.rstrip(".").lower()
        if name and name not in names:
            names.append(name)
    return names


def certificate_names(peer_certificate: dict) -> list[str]:
    """DNS subjectAltNames, or the subject CNs when there is no DNS subjectAltName."""
    dns = [value for kind, value in peer_certificate.get("subjectAltName", ()) if kind == "DNS"]
    if dns:
        return dns
    return [value for rdn in peer_certificate.get("subject", ()) for key, value in rdn if key == "commonName"]


def _certificate_addresses(peer_certificate: dict) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    addresses = set()
    for kind, value in peer_certificate.get("subjectAltName", ()):
        if kind == "IP Address":
            try:
                addresses.add(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
    return addresses


def certificate_matches(peer_certificate: dict, names: list[str]) -> bool:
    """Whether the certificate (getpeercert() dict) carries one of `names`.

    ".example.com" stands for any subdomain of example.com (not example.com itself). A
    certificate's "*." covers exactly one left-most label. Case does not matter.
    """
    presented = [name.rstrip(".").lower() for name in certificate_names(peer_certificate)]
    for expected in names:
        expected = expected.rstrip(".").lower()
        if _is_ip_address(expected):
            address = ipaddress.ip_address(expected[5:] if expected.startswith("ipv6:") else expected)
            if address in _certificate_addresses(peer_certificate):
                return True
            continue
        if any(_name_matches(name, expected) for name in presented):
            return True
    return False


def _name_matches(presented: str, expected: str) -> bool:
    wildcard_base = ""
    if presented.startswith("*."):
        wildcard_base = presented[2:]
        if "." not in wildcard_base or "*" in wildcard_base:
            return False  # "*.com" or nested wildcards stand for nothing usable
    elif "*" in presented:
        return False  # partial-label wildcards ("mx*.example.com") are not honoured
    if expected.startswith("."):
        suffix = expected  # any subdomain of expected[1:]
        if wildcard_base:
            return wildcard_base == suffix[1:] or wildcard_base.endswith(suffix)
        return presented.endswith(suffix) and len(presented) > len(suffix)
    if wildcard_base:
        label, dot, rest = expected.partition(".")
        return bool(label) and bool(dot) and rest == wildcard_base
    return presented == expected


# --- log text ----------------------------------------------------------------------------

_VERIFY_REASONS = {
    2: "untrusted issuer",  # unable to get issuer certificate
    19: "untrusted issuer",  # self-signed certificate in certificate chain
    20: "untrusted issuer",  # unable to get local issuer certificate
    21: "untrusted issuer",  # unable to verify the first certificate
    18: "self-signed certificate",
    10: "certificate has expired",
    9: "certificate is not yet valid",
}


def verification_failure(error: ssl.SSLCertVerificationError, host: str, address: str, port: int) -> str:
    """Postfix's text for a chain that did not verify, with OpenSSL's own words after it."""
    detail = error.verify_message or ""
    reason = _VERIFY_REASONS.get(error.verify_code, detail or str(error))
    text = f"certificate verification failed for {host}[{address}]:{port}: {reason}"
    if detail and detail != reason:
        text += f" ({detail})"
    return text


def name_mismatch(host: str, address: str, port: int, names_expected: list[str], peer_certificate: dict) -> str:
    presented = certificate_names(peer_certificate)
    return (f"server certificate verification failed for {host}[{address}]:{port}: "
            f"certificate names {', '.join(presented) or '(none)'} "
            f"do not match {' or '.join(names_expected) or '(no expected name)'}")


def established_line(trust: str, host: str, address: str, port: int, ssl_object) -> str:
    """"Verified TLS connection established to H[A]:P: TLSv1.3 with cipher ...", as Postfix logs it."""
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {', '.join(TRUST_LEVELS)}, not {trust!r}")
    return f"{trust} TLS connection established to {host}[{address}]:{port}: {describe(ssl_object)}"
