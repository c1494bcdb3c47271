"""mailferry_metrics_listen: which addresses the metrics endpoint may listen on.

Apart from the endpoint, so that `mailferry check` can say the same as the start without
loading prometheus-client.
"""

from __future__ import annotations

import ipaddress


class MetricsAddressError(ValueError):
    """mailferry_metrics_listen cannot be used; the message says what to write instead."""


def parse_listen(value: str, allow_remote: bool = False) -> tuple[str, int] | None:
    """`127.0.0.1:9154`, `[::1]:9154` or `localhost:9154` → (host, port); "" → None (off)."""
    value = value.strip()
    if not value:
        return None
    host, colon, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not colon or not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        raise MetricsAddressError(f"mailferry_metrics_listen = {value}: expected host:port, "
                                  "e.g. 127.0.0.1:9154 or [::1]:9154")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsAddressError(f"mailferry_metrics_listen = {value}: {host} is not an IP address; "
                                  "write 127.0.0.1:PORT or [::1]:PORT") from None
    if not address.is_loopback and not allow_remote:
        raise MetricsAddressError(f"mailferry_metrics_listen = {value}: {host} is not a loopback address, and "
                                  "the metrics endpoint has no authentication; use 127.0.0.1 (and a proxy), "
                                  "or set mailferry_metrics_allow_remote = yes")
    return str(address), int(port_text)
