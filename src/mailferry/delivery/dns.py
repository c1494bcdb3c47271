"""Next-hop lookup for the SMTP client: MX records, then host addresses, as Postfix's smtp(8) does it.

The rules follow Postfix 3.x (smtp_addr.c, dns_lookup.c):

- A destination with MX records is tried in preference order. Addresses of equal preference are
  shuffled (smtp_randomize_addresses), and at most `mx_address_limit` are returned
  (smtp_mx_address_limit, 0 = no limit). Postfix applies that limit to every address list,
  not only to MX ones; so does this module.
- No MX records (NXDOMAIN or no data) means the domain's own A/AAAA records, preference None.
- An MX host without addresses is skipped. When none has one, the error is that of the last host
  looked up, permanent unless some lookup failed temporarily (smtp_defer_if_no_mx_address_found
  = no, Postfix's default).
- A null MX (RFC 7505, exchange ".") is a permanent error. Postfix's client reports it with
  status 5.1.0; RFC 7505 assigns 5.1.10 ("recipient address has null MX"), which is used here.
- Texts are Postfix's: "Host or domain name not found. Name service error for name=N type=T:
  Host not found" (NXDOMAIN), "...: Host found but no data record of requested type" (no data),
  "...: Host not found, try again" (SERVFAIL, REFUSED, timeout). When A and AAAA are both asked,
  the text names the failure that matters most (temporary over not found), else the last type.

Per client service (main.cf, or master.cf `-o`; lmtp_* for LMTP), as Postfix's smtp(8):

- smtp_dns_support_level: empty follows disable_dns_lookups (default: enabled). `disabled`: no DNS
  at all, no MX lookup; host addresses come from the system resolver (getaddrinfo: /etc/hosts,
  nsswitch). `dnssec`: every query asks for DNSSEC (EDNS0 with the DO bit). The first time, the
  `dnssec_probe` query (default ns:.) checks that the resolver validates; when its answer has no
  AD bit, Postfix's two warnings are logged ("DNSSEC validation may be unavailable", then the
  reason). Mail then flows as with `enabled`: mailferry has no DANE, so a validated answer
  changes nothing else.
- smtp_host_lookup: `dns` (A/AAAA records), `native` (getaddrinfo only), or `dns, native`
  (getaddrinfo for a host DNS says does not exist; a temporary DNS failure is not retried
  natively). MX records are always looked up in DNS unless DNS is disabled.
- smtp_address_preference: `ipv6` or `ipv4` tries that family first among addresses of equal MX
  preference; `any` leaves them shuffled.
- smtp_balance_inet_protocols: when smtp_mx_address_limit would keep only one family, both keep
  a share (balance_families below; the SMTP client applies it with its own limit).

MAILFERRY_NAMESERVERS ("127.0.0.1:5353 [::1]:53", space or comma separated, port 53 by default)
is a mailferry extension with no Postfix equivalent: it chooses the DNS servers instead of
/etc/resolv.conf. Tests use it to point the daemon at their own server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

NAMESERVERS_VARIABLE = "MAILFERRY_NAMESERVERS"
NULL_MX_DSN = "5.1.10"
_LIBC_DEFAULT_NAMESERVERS = [("127.0.0.1", 53)]  # what libc uses when resolv.conf names no server
_PER_SERVER_TIMEOUT = 2.0  # dnspython's default: try the next server after this long
_ADDRESS_TYPES = {"ipv4": dns.rdatatype.A, "ipv6": dns.rdatatype.AAAA}
_ADDRESS_VERSIONS = {"ipv4": 4, "ipv6": 6}


@dataclass(frozen=True, slots=True)
class Target:
    hostname: str             # the MX host, else the destination itself; for an IP literal, the address
    address: str              # IPv4 or IPv6 address text
    port: int
    preference: int | None    # MX preference; None when no MX record was used


class DnsError(Exception):
    """A failed next-hop lookup; `temporary` says whether the mail waits (4.x.x) or bounces (5.x.x)."""

    def __init__(self, text: str, temporary: bool, dsn: str):
        super().__init__(text)
        self.text = text
        self.temporary = temporary
        self.dsn = dsn


@dataclass(frozen=True, slots=True)
class HostLookup:
    """How one client service finds addresses: smtp_dns_support_level, smtp_host_lookup,
    smtp_address_preference (or their lmtp_ twins)."""

    dns: bool = True              # A/AAAA records (smtp_host_lookup has dns, DNS not disabled)
    native: bool = False          # getaddrinfo (smtp_host_lookup has native, or DNS disabled)
    mx: bool = True               # MX lookups: DNS is not disabled
    dnssec: bool = False          # smtp_dns_support_level = dnssec
    preference: str = "any"       # smtp_address_preference: ipv4, ipv6 or any

    @classmethod
    def from_values(cls, support_level: str, disable_dns: bool, host_lookup: list[str],
                    preference: str) -> "HostLookup":
        """ValueError(index, text): index 0, 1 or 2 says which of the three values is wrong."""
        level = support_level.strip().lower() or ("disabled" if disable_dns else "enabled")
        if level not in ("disabled", "enabled", "dnssec"):
            raise ValueError(0, f'invalid value "{support_level}": expected disabled, enabled or dnssec')
        methods = {word.strip().lower() for word in host_lookup if word.strip()}
        if not methods or methods - {"dns", "native"}:
            raise ValueError(1, f'invalid value "{", ".join(host_lookup)}": expected dns, native or "dns, native"')
        preference = preference.strip().lower()
        if preference not in ("ipv4", "ipv6", "any"):
            raise ValueError(2, f'invalid value "{preference}": expected ipv4, ipv6 or any')
        if level == "disabled":
            return cls(dns=False, native=True, mx=False, preference=preference)
        return cls(dns="dns" in methods, native="native" in methods, dnssec=level == "dnssec",
                   preference=preference)


DEFAULT_LOOKUP = HostLookup()


@dataclass(frozen=True, slots=True)
class _Failure:
    temporary: bool
    text: str
    dsn: str = ""             # when not the usual 4.4.3 (temporary) / 5.4.4
    not_found: bool = False   # the name or its records do not exist: `native` may still find it


@dataclass(frozen=True, slots=True)
class _Host:
    name: str                 # without the trailing dot, lower case
    preference: int | None


def parse_nameservers(text: str) -> list[tuple[str, int]]:
    """'127.0.0.1:5353, [::1]:53 ::1' -> [("127.0.0.1", 5353), ("::1", 53), ("::1", 53)]."""
    servers = []
    for item in text.replace(",", " ").split():
        address, port = _split_nameserver(item)
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{NAMESERVERS_VARIABLE}: {item!r} is not an IP address[:port]") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{NAMESERVERS_VARIABLE}: {item!r} has a bad port")
        servers.append((address, int(port)))
    return servers


def _split_nameserver(item: str) -> tuple[str, str]:
    if item.startswith("["):
        address, _, rest = item[1:].partition("]")
        return address, rest[1:] if rest.startswith(":") else (rest or "53")
    if item.count(":") == 1:
        address, _, port = item.partition(":")
        return address, port
    return item, "53"  # an IPv4 address, or an IPv6 address without brackets


def _address_protocols(inet_protocols: tuple[str, ...] | str) -> tuple[str, ...]:
    words = (inet_protocols,) if isinstance(inet_protocols, str) else inet_protocols
    words = tuple(word.strip().lower() for word in words)
    if "all" in words:
        return ("ipv4", "ipv6")
    unknown = [word for word in words if word not in _ADDRESS_TYPES]
    if unknown or not words:
        raise ValueError(f"inet_protocols: expected ipv4, ipv6 or all, got {' '.join(words) or 'nothing'}")
    return tuple(protocol for protocol in ("ipv4", "ipv6") if protocol in words)


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _qualified(name: str) -> dns.name.Name | None:
    """`name` relative to the root (no search domains), or None if it is no host name."""
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException:
        return None
    return None if qname == dns.name.root else qname


def _invalid_name(name: str) -> str:
    return f"Name service error for {name}: invalid host or domain name"


def _name_error(name: str, rdtype: dns.rdatatype.RdataType, reason: str) -> str:
    return (f"Host or domain name not found. Name service error for name={name} "
            f"type={dns.rdatatype.to_text(rdtype)}: {reason}")


def make_resolver(nameservers: list[tuple[str, int]] | None, timeout: float) -> dns.asyncresolver.Resolver:
    """dnspython's resolver for `nameservers` (None: /etc/resolv.conf), caching, no search list.
    The SMTP client's and the restrictions' (policy/dns.py) questions both go through one of these."""
    if nameservers is None:
        try:
            resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf
        except dns.resolver.NoResolverConfiguration:
            nameservers = _LIBC_DEFAULT_NAMESERVERS
    if nameservers is not None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers]
    resolver.cache = dns.resolver.LRUCache()
    resolver.use_search_by_default = False
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, _PER_SERVER_TIMEOUT)
    return resolver


class NexthopResolver:
    """Turns a next hop (a domain, or a host) into the addresses the SMTP client connects to."""

    def __init__(self, nameservers: list[tuple[str, int]] | None = None, *,
                 inet_protocols: tuple[str, ...] = ("ipv4", "ipv6"), timeout: float = 10.0,
                 mx_address_limit: int = 5, defer_if_no_mx_address_found: bool = False,
                 randomize_addresses: bool = True):
        protocols = _address_protocols(inet_protocols)
        self._address_types = [_ADDRESS_TYPES[protocol] for protocol in protocols]
        self._versions = {_ADDRESS_VERSIONS[protocol] for protocol in protocols}
        self._mx_address_limit = mx_address_limit
        self._defer_if_no_mx_address_found = defer_if_no_mx_address_found
        self._randomize = randomize_addresses
        self._disabled = nameservers == []
        self._nameservers = nameservers
        self._timeout = timeout
        self._resolver = None if self._disabled else make_resolver(nameservers, timeout)
        self._dnssec_resolver: dns.asyncresolver.Resolver | None = None
        self._dnssec_probed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **options: Any) -> "NexthopResolver":
        """The servers in MAILFERRY_NAMESERVERS, or the system's when it is unset or empty;
        `none` turns DNS off: only address literals ([192.0.2.1]) can be reached."""
        text = (os.environ if environ is None else environ).get(NAMESERVERS_VARIABLE, "")
        if text.strip().lower() == "none":
            return cls([], **options)
        return cls(parse_nameservers(text) or None, **options)

    async def targets(self, host: str, port: int, use_mx: bool,
                      lookup: HostLookup = DEFAULT_LOOKUP) -> list[Target]:
        literal = _ip_literal(host)
        if literal is not None:
            if literal.version not in self._versions:
                raise DnsError(_invalid_name(host), False, "5.4.4")
            return [Target(host, host, port, None)]
        name = host.rstrip(".")
        qname = self._absolute(name)
        if self._disabled and not lookup.native:
            raise DnsError(f"Host or domain name not found. Name service error for name={name}: "
                           f"DNS is turned off ({NAMESERVERS_VARIABLE}=none)", True, "4.4.3")
        if self._disabled:
            lookup = HostLookup(dns=False, native=True, mx=False, preference=lookup.preference)
        if use_mx and lookup.mx:
            hosts = await self._mx_hosts(name, qname, lookup)
            if hosts is not None:
                return self._finish(await self._mx_targets(hosts, port, lookup), lookup)
        addresses = await self._addresses(name, qname, lookup)
        if isinstance(addresses, _Failure):
            raise DnsError(addresses.text, addresses.temporary,
                           addresses.dsn or ("4.4.3" if addresses.temporary else "5.4.4"))
        return self._finish([Target(name.lower(), address, port, None) for address in addresses], lookup)

    async def dnssec_probe(self, probe: str) -> list[str]:
        """Postfix's warnings when the `dnssec_probe` query (qtype:qname) comes back without
        the AD bit; asked once per process, [] after that or when `probe` is empty."""
        if self._dnssec_probed or self._disabled:
            return []
        self._dnssec_probed = True
        if not probe.strip():
            return []
        qtype, _, qname = probe.strip().partition(":")
        try:
            rdtype = dns.rdatatype.from_text(qtype)
            name = dns.name.from_text(qname)
        except (dns.exception.DNSException, ValueError):
            raise ValueError(f"malformed dnssec_probe value: {probe} format is qtype:qname") from None
        try:
            answer = await self._resolver_for(HostLookup(dnssec=True)).resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return ["DNSSEC validation may be unavailable",   # an answer, but no records to judge
                    f"reason: dnssec_probe '{probe}' received a response that is not DNSSEC validated"]
        except dns.exception.DNSException:
            text = _name_error(name.to_text(omit_final_dot=True) or ".", rdtype, "Host not found, try again")
            return ["DNSSEC validation may be unavailable",
                    f"reason: dnssec_probe '{probe}' received no response: {text}"]
        if answer.response.flags & dns.flags.AD:
            return []
        return ["DNSSEC validation may be unavailable",
                f"reason: dnssec_probe '{probe}' received a response that is not DNSSEC validated"]

    def _resolver_for(self, lookup: HostLookup) -> dns.asyncresolver.Resolver:
        if not lookup.dnssec:
            return self._resolver
        if self._dnssec_resolver is None:
            resolver = make_resolver(self._nameservers, self._timeout)
            resolver.use_edns(0, dns.flags.DO, 1232)   # RES_USE_DNSSEC: EDNS0 with the DO bit
            self._dnssec_resolver = resolver
        return self._dnssec_resolver

    @staticmethod
    def _absolute(name: str) -> dns.name.Name:
        qname = _qualified(name)
        if qname is None:
            raise DnsError(_invalid_name(name), False, "5.4.4")
        return qname

    async def _mx_hosts(self, name: str, qname: dns.name.Name, lookup: HostLookup) -> list[_Host] | None:
        """The MX hosts by preference, or None when the domain has no MX records."""
        records = await self._query(qname, dns.rdatatype.MX, lookup)
        if isinstance(records, _Failure):
            if records.temporary:
                raise DnsError(records.text, True, "4.4.3")
            return None
        if any(record.exchange == dns.name.root for record in records):
            raise DnsError(f"Domain {name} does not accept mail (nullMX)", False, NULL_MX_DSN)
        records = sorted(records, key=lambda record: record.preference)
        return [_Host(record.exchange.to_text(omit_final_dot=True).lower(), record.preference)
                for record in records]

    async def _mx_targets(self, hosts: list[_Host], port: int, lookup: HostLookup) -> list[Target]:
        lookups = await asyncio.gather(*(self._host_addresses(host.name, lookup) for host in hosts))
        targets: list[Target] = []
        failure: _Failure | None = None
        dsn = ""
        for host, addresses in zip(hosts, lookups):
            if isinstance(addresses, _Failure):
                # As Postfix: the last failure's text; once a lookup failed temporarily, all are.
                failure = addresses
                if addresses.dsn:
                    dsn = addresses.dsn
                elif addresses.temporary:
                    dsn = "4.4.3"
                else:
                    dsn = "4.4.4" if dsn.startswith("4") else "5.4.4"
                continue
            targets += [Target(host.name, address, port, host.preference) for address in addresses]
        if targets:
            return targets
        assert failure is not None
        if self._defer_if_no_mx_address_found:
            dsn = "4" + dsn[1:]
        raise DnsError(failure.text, dsn.startswith("4"), dsn)

    async def _host_addresses(self, host: str, lookup: HostLookup) -> list[str] | _Failure:
        literal = _ip_literal(host)  # an address in an MX record: wrong, but Postfix accepts it
        if literal is not None:
            if literal.version in self._versions:
                return [host]
            return _Failure(False, _invalid_name(host))
        qname = _qualified(host)
        if qname is None:
            return _Failure(False, _invalid_name(host))
        return await self._addresses(host, qname, lookup)

    async def _addresses(self, name: str, qname: dns.name.Name, lookup: HostLookup) -> list[str] | _Failure:
        """As Postfix's smtp_addr_one: DNS when `lookup.dns`; getaddrinfo when `lookup.native`
        and DNS did not find the host (a temporary DNS failure stays one)."""
        failure = None
        if lookup.dns:
            found = await self._dns_addresses(qname, lookup)
            if not isinstance(found, _Failure):
                return found
            if found.temporary or not lookup.native:
                return found
            failure = found
        return await self._native_addresses(name, soft=failure is not None and failure.temporary)

    async def _dns_addresses(self, qname: dns.name.Name, lookup: HostLookup) -> list[str] | _Failure:
        """A and/or AAAA records, or the failure that matters most (temporary, else the last)."""
        answers = await asyncio.gather(*(self._query(qname, rdtype, lookup) for rdtype in self._address_types))
        addresses = [record.address for answer in answers if not isinstance(answer, _Failure) for record in answer]
        if addresses:
            return addresses
        failures = [answer for answer in answers if isinstance(answer, _Failure)]
        temporary = [failure for failure in failures if failure.temporary]
        return (temporary or failures)[-1]

    async def _native_addresses(self, name: str, soft: bool) -> list[str] | _Failure:
        """getaddrinfo (the system's resolver: /etc/hosts, nsswitch), in a worker thread;
        Postfix's texts and status codes (smtp_addr.c)."""
        family = socket.AF_UNSPEC if len(self._versions) == 2 else (
            socket.AF_INET if 4 in self._versions else socket.AF_INET6)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(name, None, family=family,
                                                                type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            retry = error.errno in (socket.EAI_AGAIN, socket.EAI_MEMORY, socket.EAI_SYSTEM)
            nohost = error.errno in (socket.EAI_AGAIN, socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
            temporary = soft or retry
            dsn = ("4" if temporary else "5") + (".4.4" if nohost else ".3.0")
            return _Failure(temporary, f"unable to look up host {name}: {error.strerror}", dsn)
        addresses = []
        for info in infos:
            address = info[4][0].partition("%")[0]
            if address not in addresses and ipaddress.ip_address(address).version in self._versions:
                addresses.append(address)
        if not addresses:
            return _Failure(soft, f"{name}: host not found", "4.4.4" if soft else "5.4.4")
        return addresses

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                     lookup: HostLookup = DEFAULT_LOOKUP) -> list | _Failure:
        name = qname.to_text(omit_final_dot=True)
        try:
            answer = await self._resolver_for(lookup).resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return _Failure(False, _name_error(name, rdtype, "Host not found"))
        except dns.resolver.NoAnswer:
            return _Failure(False, _name_error(name, rdtype, "Host found but no data record of requested type"))
        except dns.exception.DNSException:  # SERVFAIL or REFUSED from every server, timeout, ...
            return _Failure(True, _name_error(name, rdtype, "Host not found, try again"))
        return list(answer)

    def _finish(self, targets: list[Target], lookup: HostLookup = DEFAULT_LOOKUP) -> list[Target]:
        """Shuffle equal preferences, keep the preference order (and within one preference,
        smtp_address_preference's family first), apply the address limit."""
        if self._randomize:
            random.shuffle(targets)
        if lookup.preference == "any":
            targets.sort(key=lambda target: target.preference or 0)
        else:
            first_v6 = lookup.preference == "ipv6"
            targets.sort(key=lambda target: (target.preference or 0, (":" in target.address) != first_v6))
        if self._mx_address_limit > 0:
            del targets[self._mx_address_limit:]
        return targets


def balance_families(targets: list[Target], limit: int) -> list[Target]:
    """Postfix's smtp_balance_inet_proto: when IPv4 and IPv6 addresses together exceed `limit`,
    keep up to `limit` of them so that neither family crowds the other out; order is kept."""
    v6_count = sum(":" in target.address for target in targets)
    v4_count = len(targets) - v6_count
    if not v4_count or not v6_count or len(targets) <= limit:
        return targets
    if v6_count <= limit // 2:
        v6_target = v6_count
        v4_target = limit - v6_target
    elif v4_count <= limit // 2:
        v4_target = v4_count
        v6_target = limit - v4_target
    else:    # both have more than half: the family listed first gets the odd one
        v4_target = (limit + (":" not in targets[0].address)) // 2
        v6_target = limit - v4_target
    kept = []
    for target in targets:
        if ":" in target.address:
            if v6_target > 0:
                kept.append(target)
                v6_target -= 1
        elif v4_target > 0:
            kept.append(target)
            v4_target -= 1
    return kept
