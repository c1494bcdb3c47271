"""The DNS questions restrictions ask, through dnspython's async resolver.

Each answer is (status, values): FOUND with the records as text, NOT_FOUND
(NXDOMAIN or no record of the type), or TEMPFAIL (SERVFAIL, REFUSED, a
timeout, DNS turned off). The servers are the daemon's: MAILFERRY_NAMESERVERS
when set (tests point it at their own dnsmasq; `none` turns DNS off, so every
question fails for now), else /etc/resolv.conf, as for the SMTP client
(delivery/dns.py). Answers are cached for their TTL by the resolver.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailferry.delivery.dns import NAMESERVERS_VARIABLE, parse_nameservers

FOUND = "found"
NOT_FOUND = "not-found"
TEMPFAIL = "tempfail"
NULL_MX = "null-mx"

_PER_SERVER_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: str
    values: tuple[str, ...] = ()
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.status == FOUND


class PolicyDns(Protocol):
    """What the restrictions ask; tests give a fake with the same methods."""

    async def query(self, name: str, rdtype: str) -> Answer: ...


class DnsClient:
    def __init__(self, nameservers: list[tuple[str, int]] | None, timeout: float = 10.0):
        """`nameservers`: None for /etc/resolv.conf, [] for DNS turned off."""
        self._disabled = nameservers == []
        self._resolver = None if self._disabled else _make_resolver(nameservers, timeout)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, timeout: float = 10.0) -> DnsClient:
        text = (os.environ if environ is None else environ).get(NAMESERVERS_VARIABLE, "")
        if text.strip().lower() == "none":
            return cls([], timeout)
        return cls(parse_nameservers(text) or None, timeout)

    async def query(self, name: str, rdtype: str) -> Answer:
        if self._disabled:
            return Answer(TEMPFAIL, reason=f"DNS is turned off ({NAMESERVERS_VARIABLE}=none)")
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return Answer(NOT_FOUND, reason="invalid name")
        try:
            answer = await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(NOT_FOUND, reason="Host not found")
        except dns.resolver.NoAnswer:
            return Answer(NOT_FOUND, reason="Host found but no data record of requested type")
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout) as problem:
            return Answer(TEMPFAIL, reason=f"Host not found, try again ({type(problem).__name__})")
        except dns.exception.DNSException as problem:
            return Answer(TEMPFAIL, reason=str(problem))
        return Answer(FOUND, tuple(_record_text(record) for record in answer))


def _record_text(record) -> str:
    if record.rdtype == dns.rdatatype.TXT:
        return b"".join(record.strings).decode("utf-8", "replace")
    if record.rdtype == dns.rdatatype.MX:
        return f"{record.preference} {record.exchange.to_text(omit_final_dot=True)}"
    if record.rdtype == dns.rdatatype.PTR:
        return record.target.to_text(omit_final_dot=True)
    return record.to_text()


def _make_resolver(nameservers: list[tuple[str, int]] | None, timeout: float) -> dns.asyncresolver.Resolver:
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            nameservers = [("127.0.0.1", 53)]
    if nameservers is not None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers]
    resolver.cache = dns.resolver.LRUCache()
    resolver.use_search_by_default = False
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, _PER_SERVER_TIMEOUT)
    return resolver


# --- The questions, as Postfix asks them

async def host_addresses(client: PolicyDns, name: str) -> Answer:
    """A, then AAAA: FOUND if either has records; TEMPFAIL if one failed for now and none was found."""
    answers = [await client.query(name, rdtype) for rdtype in ("A", "AAAA")]
    found = tuple(value for answer in answers if answer.found for value in answer.values)
    if found:
        return Answer(FOUND, found)
    if any(answer.status == TEMPFAIL for answer in answers):
        return Answer(TEMPFAIL, reason=next(a.reason for a in answers if a.status == TEMPFAIL))
    return Answer(NOT_FOUND, reason=answers[-1].reason)


async def known_hostname(client: PolicyDns, name: str) -> Answer:
    """reject_unknown_helo_hostname: an A, AAAA or MX record (dns_lookup_l A AAAA MX)."""
    answer = await host_addresses(client, name)
    if answer.status != NOT_FOUND:
        return answer
    return await client.query(name, "MX")


async def mail_host(client: PolicyDns, domain: str) -> Answer:
    """reject_unknown_*_domain: MX first (a null MX is NULL_MX), then A/AAAA."""
    mx = await client.query(domain, "MX")
    if mx.found:
        if any(value.split()[-1] in (".", "") for value in mx.values):
            return Answer(NULL_MX)
        return mx
    if mx.status == TEMPFAIL:
        return mx
    return await host_addresses(client, domain)


def reverse_name(address: str) -> str:
    return dns.reversename.from_address(address).to_text(omit_final_dot=True)


def dnsbl_query_name(address: str, dnsbl_domain: str) -> str:
    """The client address reversed under the DNSBL domain (nibbles for IPv6)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        reversed_part = ".".join(reversed(str(ip).split(".")))
    else:
        reversed_part = ".".join(reversed(ip.exploded.replace(":", "")))
    return f"{reversed_part}.{dnsbl_domain}"
