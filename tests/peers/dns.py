"""dnsmasq as a real DNS server on loopback, answering from records the test gives it.

    server = DnsServer(peer_tempdir("dns-"), mx={"example.test": [(10, "mx1.example.test")]},
                       a={"mx1.example.test": "127.0.0.3"}).start()
    NexthopResolver([(server.host, server.port)])        # or MAILFERRY_NAMESERVERS=server.nameserver

What dnsmasq 2.90 answers (checked with dnspython against this class):
- A configured name: NOERROR with the records (TTL `local_ttl`; dnsmasq's own default is 0, which
  would keep every answer out of a client's cache). A configured name asked for a type it lacks
  (an MX host asked for MX or AAAA): NOERROR with no answer (NODATA).
- Any other name under `zones` (`--local=/test/`): NXDOMAIN. A name that only has `--dns-rr`
  records, such as a null-MX domain, is NXDOMAIN for every other type.
- A name outside `zones`: REFUSED, since there is no upstream server (`--no-resolv`).
- Null MX: `--mx-host` cannot write the root name, so it is `--dns-rr=NAME,15,000000`
  (preference 0, exchange "."); dnspython reads it back as `MX 0 .`.
- `unanswered` names are forwarded to a closed loopback port. dnsmasq then never answers, over
  UDP (not even after 60 s, no SERVFAIL); over TCP it closes the connection. Clients time out.
- `servfail` names get a real SERVFAIL, at once. dnsmasq has no switch for it, and a dead upstream
  gives silence (above), so the server validates DNSSEC (a trust anchor for the root) and forwards
  these names to a second, unsigned dnsmasq (`upstream`, started and stopped with this one): the
  validation fails ("BOGUS DS") and dnsmasq answers SERVFAIL. Per-domain `--server=/d/addr` lines
  are never validated in 2.90, hence `--server=/d/#` (use the default server) plus a default
  `--server` pointing at the upstream. Local records are not validated, so nothing else changes.

Each process runs `dnsmasq --keep-in-foreground` (so the fixture owns its pid), drops root to
nobody, writes no pid file, and logs to DIR/dnsmasq.log with every query (`log()`). `--no-daemon`
would be simpler but keeps running as root.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.peers import free_port, require_tool, stop_process, unprivileged_ids, wait_for_port

# Any well-formed DS works: the upstream signs nothing, so validation fails whatever the anchor says.
ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
NULL_MX_RDATA = "000000"  # preference 0, then the root name (a single zero octet)

Addresses = str | Iterable[str]


def free_dns_port(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port free for both UDP and TCP on `host` (dnsmasq listens on both)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise AssertionError(f"no port free for both UDP and TCP on {host}")


def _reverse_name(address: str) -> str:
    import ipaddress
    return ipaddress.ip_address(address).reverse_pointer


def _as_list(addresses: Addresses) -> list[str]:
    return [addresses] if isinstance(addresses, str) else list(addresses)


class _Dnsmasq:
    """One `dnsmasq --keep-in-foreground` process reading `config_path`."""

    def __init__(self, directory: Path, name: str, host: str, port: int):
        self.directory = directory
        self.host = host
        self.port = port or free_dns_port(host)
        self.config_path = directory / f"{name}.conf"
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        command = [require_tool("dnsmasq"), "--keep-in-foreground", "--pid-file=", "--log-facility=-",
                   "--log-queries", f"--conf-file={self.config_path}", "--no-resolv", "--no-hosts",
                   "--bind-interfaces", f"--listen-address={self.host}", f"--port={self.port}"]
        if os.geteuid() == 0:
            command.append(f"--user={unprivileged_ids()[0]}")  # without it dnsmasq runs as "nobody" too
        return command

    def start(self, config: str, timeout: float) -> None:
        self.config_path.write_text(config)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port, timeout, process=self.process, log=self.log_path)
        except AssertionError as error:
            self.stop()
            raise AssertionError(f"dnsmasq ({self.config_path}) did not start: {error}\n"
                                 f"--- {self.config_path} ---\n{config}") from None

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class DnsServer:
    """dnsmasq serving `zones` (default: everything under .test) from the records given.

    mx       {"example.test": [(10, "mx1.example.test"), (20, "mx2.example.test")]}
    a, aaaa  {"mx1.example.test": "127.0.0.3"}, or a list of addresses for several records
    null_mx  names whose only MX is the RFC 7505 null MX ("0 .")
    ptr      {"127.0.0.2": "client.example.test"}: reverse records (add "in-addr.arpa" to `zones`
             so that other addresses are NXDOMAIN rather than REFUSED)
    txt      {"2.0.0.127.dnsbl.test": "listed"}: TXT records (DNSBL reasons)
    servfail names (and their subdomains) that get SERVFAIL; see the module docstring
    unanswered  names (and their subdomains) that get no answer at all
    """

    def __init__(self, directory: Path, *, mx: Mapping[str, Iterable[tuple[int, str]]] | None = None,
                 a: Mapping[str, Addresses] | None = None, aaaa: Mapping[str, Addresses] | None = None,
                 null_mx: Iterable[str] = (), servfail: Iterable[str] = (), unanswered: Iterable[str] = (),
                 ptr: Mapping[str, str] | None = None, txt: Mapping[str, str] | None = None,
                 zones: Iterable[str] = ("test",), host: str = "127.0.0.1", port: int = 0,
                 local_ttl: int = 60):
        self.directory = Path(directory)
        self.mx = {name: list(hosts) for name, hosts in (mx or {}).items()}
        self.a = {name: _as_list(addresses) for name, addresses in (a or {}).items()}
        self.aaaa = {name: _as_list(addresses) for name, addresses in (aaaa or {}).items()}
        self.null_mx = tuple(null_mx)
        self.ptr = dict(ptr or {})
        self.txt = dict(txt or {})
        self.servfail = tuple(servfail)
        self.unanswered = tuple(unanswered)
        self.zones = tuple(zones)
        self.local_ttl = local_ttl
        self.server = _Dnsmasq(self.directory, "dnsmasq", host, port)
        self.upstream = _Dnsmasq(self.directory, "upstream", host, 0) if self.servfail else None
        self.closed_port = free_port(host)  # where `unanswered` names go; nothing listens there

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def nameserver(self) -> str:
        """host:port, one item of MAILFERRY_NAMESERVERS."""
        return f"{self.host}:{self.port}"

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """[(host, port)], for NexthopResolver(nameservers=...)."""
        return [(self.host, self.port)]

    def config(self) -> str:
        lines = [f"local-ttl={self.local_ttl}"]
        lines += [f"local=/{zone}/" for zone in self.zones]
        for name, hosts in self.mx.items():
            lines += [f"mx-host={name},{host},{preference}" for preference, host in hosts]
        for records in (self.a, self.aaaa):
            for name, addresses in records.items():
                lines += [f"host-record={name},{address}" for address in addresses]
        lines += [f"dns-rr={name},15,{NULL_MX_RDATA}" for name in self.null_mx]
        lines += [f"ptr-record={_reverse_name(address)},{name}" for address, name in self.ptr.items()]
        lines += [f'txt-record={name},"{text}"' for name, text in self.txt.items()]
        lines += [f"server=/{name}/{self.host}#{self.closed_port}" for name in self.unanswered]
        if self.upstream is not None:
            lines += ["dnssec", f"trust-anchor={ROOT_TRUST_ANCHOR}", "dnssec-check-unsigned",
                      f"server={self.upstream.host}#{self.upstream.port}"]
            lines += [f"server=/{name}/#" for name in self.servfail]
        return "".join(f"{line}\n" for line in lines)

    def upstream_config(self) -> str:
        """Unsigned answers (NXDOMAIN) for the servfail names; REFUSED for the DS queries."""
        return "".join(f"local=/{name}/\n" for name in self.servfail)

    def start(self, timeout: float = 10.0) -> "DnsServer":
        if self.upstream is not None:
            self.upstream.start(self.upstream_config(), timeout)
        try:
            self.server.start(self.config(), timeout)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.server.stop()
        if self.upstream is not None:
            self.upstream.stop()

    def log(self) -> str:
        """dnsmasq's log so far, one line per query and answer ("query[MX] example.test from ...")."""
        return self.server.log()


# The `dns_server` fixture's records (tests.peers.conftest_plugin).
DEFAULT_RECORDS = {
    "mx": {"example.test": [(10, "mx1.example.test"), (20, "mx2.example.test")],
           "noaddr.test": [(10, "nowhere.noaddr.test")]},   # an MX host that is NXDOMAIN
    "a": {"mx1.example.test": "127.0.0.3", "mx2.example.test": "127.0.0.4",
          "plain.test": "127.0.0.5"},                        # plain.test: an address, no MX
    "null_mx": ("nullmx.test",),
}
