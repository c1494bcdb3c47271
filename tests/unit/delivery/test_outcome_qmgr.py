"""delivery/outcome.py: the decisions the queue manager takes there (routing
failures, a delivery agent that crashed, the end of the queue lifetime)."""

import pytest

from mailferry.delivery import outcome
from mailferry.message import BOUNCED, DEFERRED
from mailferry.routing.resolve import RoutingError


def test_a_routing_failure_waits_with_4_3_0_and_says_why():
    result = outcome.routing_failure(RoutingError("transport_maps lookup of a@example.org failed"))
    assert (result.status, result.dsn, result.reason) == \
        (DEFERRED, "4.3.0", "transport_maps lookup of a@example.org failed")


def test_a_crashed_delivery_agent_waits_and_names_the_exception_type_only():
    result = outcome.agent_failure(RuntimeError("secret detail"))
    assert (result.status, result.dsn, result.reason) == \
        (DEFERRED, "4.3.0", "delivery agent failed: RuntimeError")


@pytest.mark.parametrize("dsn, reason, expected_dsn, expected_reason", [
    ("4.4.1", "connect to mx: timed out", "5.4.1", "connect to mx: timed out"),
    ("4.3.0", "", "5.3.0", "message delivery time expired"),
    ("", "", "5.4.7", "message delivery time expired"),          # never tried
    ("5.1.1", "no such user", "5.4.7", "no such user"),
])
def test_an_expired_recipient_bounces_keeping_its_last_temporary_detail(dsn, reason, expected_dsn,
                                                                       expected_reason):
    result = outcome.expired(dsn, reason)
    assert (result.status, result.dsn, result.reason) == (BOUNCED, expected_dsn, expected_reason)
