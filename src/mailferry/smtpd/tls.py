"""The server side of TLS: one SSLContext per listener, from the service's view of main.cf.

smtpd_tls_security_level: `none` offers nothing; `may` offers STARTTLS;
`encrypt` offers it and refuses mail until the client has used it (Postfix's
`530 5.7.0 Must issue a STARTTLS command first`). smtpd_tls_wrappermode
(the `submissions`/`smtps` service on port 465) starts TLS before the
greeting and, as in Postfix, implies `encrypt`. The certificate comes from
smtpd_tls_chain_files, else smtpd_tls_cert_file with smtpd_tls_key_file;
tls_server_sni_maps picks another chain by the name the client asks for.

With `encrypt` (and wrapper mode) the mandatory protocols, ciphers and
exclusions apply, else the opportunistic ones, as in Postfix's smtpd.c.
Everything that reads a key or a certificate runs here, at start, while
the daemon may still be root (SNI chains included).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

from mailferry.config.config import Config, ConfigValueError
from mailferry.tables import TableError, open_table
from mailferry.tlsinfo import describe
from mailferry.tlsparams import (
    CIPHERLIST_PARAMETERS, cipher_string, eecdh_curve, log_level, set_ciphers, set_versions, ssl_options,
)

LEVELS = ("none", "may", "encrypt")


class TLSSetupError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What a session needs besides the context: read once per service."""

    level: str          # none | may | encrypt (wrapper mode is encrypt)
    wrappermode: bool   # TLS before the greeting (port 465)
    loglevel: int       # smtpd_tls_loglevel, 0-4
    ask_ccert: bool     # smtpd_tls_ask_ccert

    @classmethod
    def from_config(cls, config: Config) -> TlsSettings:
        try:
            loglevel = log_level(config.get("smtpd_tls_loglevel"))
        except ValueError as exc:
            raise ConfigValueError(config.where("smtpd_tls_loglevel"), str(exc)) from None
        return cls(level=tls_level(config), wrappermode=config.boolean("smtpd_tls_wrappermode"),
                   loglevel=loglevel, ask_ccert=config.boolean("smtpd_tls_ask_ccert"))


def tls_level(config: Config) -> str:
    level = config.get("smtpd_tls_security_level") or ("may" if config.get("smtpd_use_tls") == "yes" else "none")
    if level not in LEVELS:
        raise TLSSetupError(f"{config.where('smtpd_tls_security_level')}unsupported level {level!r}: "
                            "use none, may or encrypt")
    if config.get("smtpd_enforce_tls") == "yes" or config.boolean("smtpd_tls_wrappermode"):
        level = "encrypt"
    return level


def server_context(config: Config) -> ssl.SSLContext | None:
    """None when TLS is off or no certificate is configured (then STARTTLS is not offered)."""
    if tls_level(config) == "none":
        return None
    chain_files = config.list("smtpd_tls_chain_files")
    cert, key = config.get("smtpd_tls_cert_file"), config.get("smtpd_tls_key_file") or config.get("smtpd_tls_cert_file")
    if not chain_files and not cert:
        return None
    context = _new_context(config)
    _load_chain(context, chain_files, cert, key)
    sni = _sni_contexts(config)
    if sni:
        context.sni_callback = _sni_callback(sni)
    return context


def _new_context(config: Config) -> ssl.SSLContext:
    """A context with every setting but the certificate, as this service's parameters say."""
    mandatory = tls_level(config) == "encrypt"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    protocols = "smtpd_tls_mandatory_protocols" if mandatory else "smtpd_tls_protocols"
    _apply(config, protocols, lambda value: set_versions(context, value))
    exclusions = _exclusions(config, mandatory)
    _apply(config, "smtpd_tls_mandatory_ciphers" if mandatory else "smtpd_tls_ciphers",
           lambda grade: set_ciphers(context, cipher_string(grade, exclusions, _cipherlists(config))),
           hint="; check the exclusions in smtpd_tls_exclude_ciphers" if exclusions else "")
    _apply(config, "tls_ssl_options", lambda value: _add_options(context, ssl_options(value)))
    # Python's server contexts prefer their own order; Postfix's default is the client's.
    if config.boolean("tls_preempt_cipherlist"):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _apply(config, "smtpd_tls_eecdh_grade", lambda grade: _set_curve(context, eecdh_curve(
        grade, config.get("tls_eecdh_strong_curve"), config.get("tls_eecdh_ultra_curve"))))
    dh_file = config.get("smtpd_tls_dh1024_param_file").strip()
    if dh_file:
        _apply(config, "smtpd_tls_dh1024_param_file", lambda path: context.load_dh_params(path))
    if config.time("smtpd_tls_session_cache_timeout") <= 0:
        # Postfix: a zero timeout turns session caching off, tickets included.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    else:
        # One TLS 1.3 ticket per full handshake, as Postfix issues (OpenSSL's default is two):
        # an MTA client keeps one session a destination at most.
        context.num_tickets = 1
    _load_client_trust(context, config)
    return context


def _apply(config: Config, name: str, action, hint: str = "") -> None:
    value = config.get(name)
    try:
        action(value)
    except (ValueError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise TLSSetupError(f"{config.where(name)}{value!r}: {reason}{hint}") from None


def _exclusions(config: Config, mandatory: bool) -> list[str]:
    names = config.list("smtpd_tls_exclude_ciphers")
    if mandatory:
        names += config.list("smtpd_tls_mandatory_exclude_ciphers")
    if config.boolean("smtpd_tls_ask_ccert"):
        names.append("aNULL")  # no anonymous ciphers when a client certificate is wanted
    return names


def _cipherlists(config: Config) -> dict[str, str]:
    return {grade: config.get(name) for grade, name in CIPHERLIST_PARAMETERS.items()}


def _add_options(context: ssl.SSLContext, bits: int) -> None:
    context.options |= bits


def _set_curve(context: ssl.SSLContext, curve: str | None) -> None:
    if curve:
        context.set_ecdh_curve(curve)


def _load_client_trust(context: ssl.SSLContext, config: Config) -> None:
    ca_file, ca_path = config.get("smtpd_tls_CAfile").strip(), config.get("smtpd_tls_CApath").strip()
    try:
        if ca_file or ca_path:
            context.load_verify_locations(cafile=ca_file or None, capath=ca_path or None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load smtpd_tls_CAfile/smtpd_tls_CApath ({ca_file or ca_path}): "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    if config.boolean("smtpd_tls_ask_ccert"):
        # Asked, not required: a client without a certificate still gets in.
        context.verify_mode = ssl.CERT_OPTIONAL


def _load_chain(context: ssl.SSLContext, chain_files: list[str], cert: str, key: str) -> None:
    try:
        if chain_files:
            # Each file holds a key and its certificate chain, as Postfix's chain files do.
            for path in chain_files:
                context.load_cert_chain(path)
        else:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"cannot load the smtpd TLS certificate or key: {exc}; "
                            "check smtpd_tls_cert_file, smtpd_tls_key_file or smtpd_tls_chain_files") from None


# --- tls_server_sni_maps -----------------------------------------------------------------

def _sni_contexts(config: Config) -> dict[str, ssl.SSLContext]:
    """name (or .parent-domain) -> a context with that entry's chain files, read now."""
    value = config.get("tls_server_sni_maps").strip()
    if not value:
        return {}
    by_files: dict[tuple[str, ...], ssl.SSLContext] = {}
    names: dict[str, ssl.SSLContext] = {}
    for key, files in _sni_entries(config, value):
        chain = tuple(files.replace(",", " ").split())
        if chain not in by_files:
            context = _new_context(config)
            try:
                for path in chain:
                    context.load_cert_chain(path)
            except (OSError, ssl.SSLError) as exc:
                raise TLSSetupError(f"{config.where('tls_server_sni_maps')}entry {key}: cannot load "
                                    f"{' '.join(chain)}: {exc}; each file must hold the key, then "
                                    "its certificate chain") from None
            by_files[chain] = context
        names[key.lower()] = by_files[chain]
    return names


def _sni_entries(config: Config, value: str) -> list[tuple[str, str]]:
    entries = []
    for spec in value.replace(",", " ").split():
        try:
            table = open_table(spec, config.get("default_database_type"))
            entries += list(table.items())
            table.close()
        except TableError as exc:
            raise TLSSetupError(f"{config.where('tls_server_sni_maps')}{spec}: {exc}; mailferry reads "
                                "the whole SNI table at start, so it must be a table it can list "
                                "(hash, lmdb, texthash, inline)") from None
    return entries


def sni_match(names: dict[str, ssl.SSLContext], server_name: str) -> ssl.SSLContext | None:
    """The verbatim name first, then each parent domain with a leading dot, as Postfix looks up."""
    name = server_name.lower()
    context = names.get(name)
    position = name.find(".")
    while context is None and position >= 0:
        context = names.get(name[position:])
        position = name.find(".", position + 1)
    return context


class _SniCallback:
    """Switches the handshake to the chain the SNI name maps to, and notes on the
    SSLObject what the client asked for (SNI_REQUESTED) and whether it matched."""

    def __init__(self, names: dict[str, ssl.SSLContext]):
        self.names = names

    def __call__(self, ssl_object, server_name: str | None, _context: ssl.SSLContext):
        if not server_name:
            return None
        matched = sni_match(self.names, server_name)
        setattr(ssl_object, SNI_REQUESTED, (server_name, matched is not None))
        if matched is not None:
            ssl_object.context = matched
        return None


SNI_REQUESTED = "mailferry_sni"


def _sni_callback(names: dict[str, ssl.SSLContext]) -> _SniCallback:
    return _SniCallback(names)


# --- what the log says ---------------------------------------------------------------------

def established_lines(client: str, ssl_object, settings: TlsSettings) -> list[str]:
    """Postfix's log lines for a finished server handshake, by smtpd_tls_loglevel."""
    lines = []
    requested, matched = getattr(ssl_object, SNI_REQUESTED, ("", False))
    if requested and not matched:
        lines.append(f"TLS SNI {requested} from {client} not matched, using default chain")
    if settings.loglevel < 1:
        return lines
    certificate = ssl_object.getpeercert() if settings.ask_ccert else None
    # Python's ssl completes a handshake only with a client certificate it could verify, or none.
    trust = "Trusted" if certificate else "Anonymous"
    if certificate and settings.loglevel >= 2:
        lines.append(f"{client}: subject_CN={_cn(certificate, 'subject')}, issuer={_cn(certificate, 'issuer')}, "
                     f"cert fingerprint={_fingerprint(ssl_object)}")
    sni = f" to {requested}" if matched else ""
    lines.append(f"{trust} TLS connection established from {client}{sni}: {describe(ssl_object)}")
    return lines


def _cn(certificate: dict, part: str) -> str:
    for rdn in certificate.get(part, ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def _fingerprint(ssl_object) -> str:
    der = ssl_object.getpeercert(binary_form=True) or b""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
