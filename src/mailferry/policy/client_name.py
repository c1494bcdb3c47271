"""The client's name, as Postfix's smtpd_peer finds it.

- The reverse name is the PTR record of the address (`reverse_client_name`).
- The client name is that name only when a forward lookup of it gives the
  address back; otherwise it is `unknown`. The status says why
  (facts.NAME_TEMPFAIL when a lookup failed for now, NAME_FORGED when the
  forward lookup does not give the address, NAME_UNKNOWN otherwise), and
  decides between 450 and unknown_client_reject_code.
- An address listed in /etc/hosts has the first name listed for it, with no
  DNS question (Postfix's getnameinfo reads /etc/hosts first); ::1 is
  `localhost` even when the file does not say so.

The warnings are Postfix's ("hostname X does not resolve to address Y").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from mailferry.policy import dns
from mailferry.policy.facts import NAME_FORGED, NAME_OK, NAME_TEMPFAIL, NAME_UNKNOWN, UNKNOWN
from mailferry.policy.hostnames import is_valid_hostname

HOSTS_FILE = "/etc/hosts"


@dataclass(frozen=True, slots=True)
class ClientName:
    name: str
    name_status: str
    reverse_name: str
    reverse_status: str
    warning: str = ""


def hosts_file_name(address: str) -> ClientName | None:
    """The name known without asking DNS (/etc/hosts), or None."""
    name = _hosts_file().get(address) or ("localhost" if address == "::1" else None)
    if name is None:
        return None
    return ClientName(name, NAME_OK, name, NAME_OK)


@lru_cache(maxsize=1)
def _hosts_file() -> dict[str, str]:
    names: dict[str, str] = {}
    try:
        with open(HOSTS_FILE, encoding="utf-8", errors="replace") as hosts:
            for line in hosts:
                words = line.partition("#")[0].split()
                if len(words) >= 2:
                    names.setdefault(words[0], words[1].lower())
    except OSError:
        pass
    return names


async def client_name(client: dns.PolicyDns, address: str) -> ClientName:
    known = hosts_file_name(address)
    if known is not None:
        return known
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return ClientName(UNKNOWN, NAME_UNKNOWN, UNKNOWN, NAME_UNKNOWN)
    ptr = await client.query(dns.reverse_name(address), "PTR")
    if not ptr.found:
        status = NAME_TEMPFAIL if ptr.status == dns.TEMPFAIL else NAME_UNKNOWN
        return ClientName(UNKNOWN, status, UNKNOWN, status)
    name = ptr.values[0].lower().rstrip(".")
    if not is_valid_hostname(name) or _all_numeric(name):
        return ClientName(UNKNOWN, NAME_UNKNOWN, UNKNOWN, NAME_UNKNOWN,
                          f"{address}: address not listed for hostname {name}")
    forward = await dns.host_addresses(client, name)
    if not forward.found:
        status = NAME_TEMPFAIL if forward.status == dns.TEMPFAIL else NAME_UNKNOWN
        text = "Temporary failure in name resolution" if status == NAME_TEMPFAIL else "Name or service not known"
        return ClientName(UNKNOWN, status, name, NAME_OK,
                          f"hostname {name} does not resolve to address {address}: {text}")
    wanted = ipaddress.ip_address(address)
    if not any(_same_address(value, wanted) for value in forward.values):
        return ClientName(UNKNOWN, NAME_FORGED, name, NAME_OK,
                          f"hostname {name} does not resolve to address {address}")
    return ClientName(name, NAME_OK, name, NAME_OK)


def _same_address(text: str, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == wanted
    except ValueError:
        return False


def _all_numeric(name: str) -> bool:
    return name.replace(".", "").isdigit()
