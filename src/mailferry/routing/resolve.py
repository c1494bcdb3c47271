"""Which transport delivers a recipient, and to what next hop.

So far: a domain of ours (mydestination) goes to `local_transport`, every
other domain to `default_transport`. transport_maps, relay_domains and
relayhost come with the delivery agents (they are reported as not
implemented by `check` until then).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    transport: str   # a master.cf service name: smtp, lmtp, discard, error, ...
    nexthop: str     # what follows the colon: a host, [host]:port, or error text


def parse_transport(value: str) -> Route:
    """`smtp:[smtp.gmail.com]:587` → Route("smtp", "[smtp.gmail.com]:587"), as transport(5) reads it."""
    transport, _, nexthop = value.strip().partition(":")
    return Route(transport, nexthop)


class Resolver:
    def __init__(self, local_transport: str, default_transport: str, is_local_domain: Callable[[str], bool]):
        self._local = parse_transport(local_transport)
        self._default = parse_transport(default_transport)
        self._is_local = is_local_domain

    def resolve(self, address: str) -> Route:
        domain = address.rpartition("@")[2] if "@" in address else ""
        if not domain or self._is_local(domain):
            return self._local
        return self._default
