import asyncio

from mailferry.tables import Maps, open_table
from mailferry.tables.addresses import address_keys, lookup_address


def is_local(domain):
    return domain == "example.com"


def keys(address, local=is_local, delimiter=""):
    return [key for key, _ in address_keys(address, local, delimiter)]


def test_order_for_a_local_domain():
    assert keys("user1@example.com") == ["user1@example.com", "user1", "@example.com"]


def test_user_form_only_for_local_domains():
    assert keys("user1@elsewhere.org") == ["user1@elsewhere.org", "@elsewhere.org"]


def test_recipient_delimiter_strips_extension():
    assert keys("user+tag@example.com", delimiter="+") == [
        "user+tag@example.com", "user@example.com", "user+tag", "user", "@example.com"]


def test_bare_local_part():
    assert keys("root") == ["root"]


def test_only_the_full_key_is_not_partial():
    flags = address_keys("user@example.com", is_local)
    assert flags == [("user@example.com", False), ("user", True), ("@example.com", True)]


def seed_login_maps():
    # The seed's smtpd_sender_login_maps, as an inline table.
    return Maps([open_table("inline:{ user1@example.com=user1, user2@example.com=user1, "
                            "user3@example.com=user3, @example.com=user4 }")])


def owner(address):
    return asyncio.run(lookup_address(seed_login_maps(), address, is_local)).result.value


def test_seed_sender_login_maps_semantics():
    assert owner("user1@example.com") == "user1"
    assert owner("user2@example.com") == "user1"
    assert owner("user3@example.com") == "user3"
    assert owner("someone@example.com") == "user4"
    assert owner("user1@other.org") is None


def test_match_reports_the_key_that_answered():
    match = asyncio.run(lookup_address(seed_login_maps(), "x@example.com", is_local))
    assert match.key == "@example.com"
