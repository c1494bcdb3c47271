"""The server side of STARTTLS: one SSLContext per listener, from main.cf.

smtpd_tls_security_level: `none` offers nothing; `may` offers STARTTLS;
`encrypt` offers it and refuses mail until the client has used it (Postfix's
`530 5.7.0 Must issue a STARTTLS command first`). The certificate comes from
smtpd_tls_chain_files, else smtpd_tls_cert_file with smtpd_tls_key_file.
"""

from __future__ import annotations

import ssl

from mailferry.config.config import Config

LEVELS = ("none", "may", "encrypt")


class TLSSetupError(Exception):
    pass


def tls_level(config: Config) -> str:
    level = config.get("smtpd_tls_security_level") or ("may" if config.get("smtpd_use_tls") == "yes" else "none")
    if level not in LEVELS:
        raise TLSSetupError(f"{config.where('smtpd_tls_security_level')}unsupported level {level!r}: "
                            "use none, may or encrypt")
    if config.get("smtpd_enforce_tls") == "yes":
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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
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
    return context
