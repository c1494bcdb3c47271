"""trivial-rewrite's address classes in Postfix's order, as golden files.

golden/address_classes.cf is a main.cf whose domain lists overlap on purpose;
golden/address_classes.routes says where each address goes and why:
mydestination, then virtual_alias_domains, then virtual_mailbox_domains, then
relay_domains, then the default; transport_maps may override all but an
unknown virtual alias (resolve.c).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from mailferry.config.config import load
from mailferry.routing.resolve import Resolver, RoutingSettings
from mailferry.tables.trace import Trace

GOLDEN = Path(__file__).parent / "golden"


def expected_routes() -> list[tuple[str, str, str]]:
    """The rows of address_classes.routes: columns are set apart by two spaces or more."""
    rows = []
    for line in (GOLDEN / "address_classes.routes").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            address, route, why = re.split(r"\s{2,}", line.strip(), maxsplit=2)
            rows.append((address, route, why))
    return rows


@pytest.fixture
def config(tmp_path):
    shutil.copy(GOLDEN / "address_classes.cf", tmp_path / "main.cf")
    (tmp_path / "master.cf").write_text("")
    return load(str(tmp_path))


@pytest.mark.parametrize("address, route, why", expected_routes(), ids=[row[0] for row in expected_routes()])
def test_each_address_goes_where_postfixs_order_sends_it(config, address, route, why):
    found = asyncio.run(Resolver.from_config(config).resolve(address))
    assert f"{found.transport}:{found.nexthop}" == route, why


def test_the_trace_names_the_virtual_mailbox_class_and_its_transport(config):
    trace = Trace()
    asyncio.run(Resolver.from_config(config, observer=trace).resolve("alice@a.test"))
    decision = [event for event in trace.events if event["kind"] == "address_class"][0]
    assert decision["address_class"] == "virtual mailbox"
    assert decision["text"] == ("address class: virtual mailbox (domain a.test matches virtual_mailbox_domains);"
                                " virtual_transport = virtual")


def test_virtual_transport_with_its_own_next_hop_keeps_it():
    from mailferry.config.localdomains import VirtualAliasDomains
    resolver = Resolver(RoutingSettings(virtual_transport="lmtp:inet:127.0.0.1:24"), lambda domain: False,
                        virtual_mailbox_domains=VirtualAliasDomains("a.test"))
    route = asyncio.run(resolver.resolve("u@a.test"))
    assert (route.transport, route.nexthop) == ("lmtp", "inet:127.0.0.1:24")


def test_a_failing_virtual_mailbox_domains_table_defers_the_route():
    from mailferry.config.localdomains import VirtualAliasDomains
    from mailferry.routing.resolve import RoutingError

    class Failing(VirtualAliasDomains):
        async def matches(self, domain):
            from mailferry.config.localdomains import LookupDeferred
            raise LookupDeferred("ldap server down")
    resolver = Resolver(RoutingSettings(), lambda domain: False, virtual_mailbox_domains=Failing("x"))
    with pytest.raises(RoutingError, match="virtual_mailbox_domains lookup of a.test failed: ldap server down"):
        asyncio.run(resolver.resolve("u@a.test"))
