"""Next hops as Postfix writes them: `[smtp.gmail.com]:587`, `example.com`, `unix:/path`.

A bracketed host is used as written (no MX lookup, no parent-domain TLS
policy lookups); a bare domain is looked up in MX for SMTP. LMTP next hops
may name a UNIX socket (`unix:/path`) or say `inet:` before the host.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

SMTP_PORT = 25
LMTP_PORT = 24


@dataclass(frozen=True, slots=True)
class Hop:
    """One next hop as written (`[smtp.gmail.com]:587`, `example.com`, `unix:/path`)."""

    written: str
    host: str           # no brackets, no port; a path for a UNIX socket
    port: int | None
    use_mx: bool
    unix: bool = False
    bracketed: bool = False   # `[host]`: used as written (no MX, no parent-domain policy lookups)

    @property
    def domain(self) -> str:
        return self.host


def parse_hop(written: str, lmtp: bool) -> Hop:
    """ValueError for a port name that /etc/services does not know."""
    text = written.strip()
    if lmtp:
        if text.startswith("unix:"):
            return Hop(written, text[5:], None, False, unix=True)
        if text.startswith("inet:"):
            text = text[5:]
    default_port = LMTP_PORT if lmtp else SMTP_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        return Hop(written, host, _port(port, default_port, written), False, bracketed=True)
    host, colon, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not colon:
        host = text
    return Hop(written, host.rstrip(".").lower(), _port(port, default_port, written), not lmtp)


def _port(text: str, default: int, written: str) -> int:
    if not text:
        return default
    if text.isdigit():
        return int(text)
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"next hop {written}: unknown port {text!r}") from None
