"""smtp_generic_maps (delivery/generic.py) on the golden generic cases of
tests/golden/rewriting/cases.py, whose expectations the real Postfix gave
(tests/integration/test_rewriting_postfix.py), and a table that fails."""

import asyncio
import email
import email.policy

import pytest

from mailferry.config.config import Config
from mailferry.config.localdomains import open_address_maps
from mailferry.config.maincf import parse_main_cf
from mailferry.delivery.generic import GenericMaps, MapDeferred
from mailferry.message import Recipient
from mailferry.tables import Maps
from mailferry.tables.addresses import AddressMaps
from tests.golden.rewriting.cases import COMMON, GENERIC_CASES
from tests.unit.cleanup.test_virtual import FailingTable


def generic_of(settings, tmp_path):
    text = "".join(f"{name} = {value}\n" for name, value in {**COMMON, "mydestination": "",
                                                             "inet_interfaces": "loopback-only", **settings}.items())
    config = Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))
    return GenericMaps(open_address_maps(config, "smtp_generic_maps", "generic"))


@pytest.mark.parametrize("case", GENERIC_CASES, ids=[case.name for case in GENERIC_CASES])
def test_generic_maps_rewrite_as_postfix_does(case, tmp_path):
    generic = generic_of(case.settings, tmp_path)
    content = ("".join(f"{name}: {value}\r\n" for name, value in case.headers) + "Subject: g\r\n\r\nbody\r\n").encode()

    async def run():
        return (await generic.sender(case.sender),
                await generic.recipients([Recipient(address) for address in case.recipients]),
                await generic.content(content))
    sender, recipients, mapped = asyncio.run(run())
    assert sender == case.expected_sender
    assert sorted(r.address for r in recipients) == sorted(case.expected_recipients)
    parsed = email.message_from_bytes(mapped, policy=email.policy.compat32)
    assert [(name, " ".join(str(parsed[name]).split())) for name, _ in case.expected_headers] == \
        case.expected_headers


def test_the_null_sender_stays_null_and_the_queues_records_are_not_changed(tmp_path):
    generic = generic_of(GENERIC_CASES[0].settings, tmp_path)
    original = [Recipient("carol@lan.test", orcpt="rfc822;carol@lan.test", notify="FAILURE")]

    async def run():
        return await generic.sender(""), await generic.recipients(original)
    sender, [mapped] = asyncio.run(run())
    assert sender == ""
    assert (mapped.address, mapped.orcpt, mapped.notify) == ("carol@isp.example", "rfc822;carol@lan.test", "FAILURE")
    assert original[0].address == "carol@lan.test"


def test_a_table_that_fails_raises_for_the_client_to_defer():
    generic = GenericMaps(AddressMaps("smtp_generic_maps", Maps([FailingTable()]), lambda domain: False,
                                      "example.test"))
    with pytest.raises(MapDeferred, match="smtp_generic_maps map lookup problem for alice@example.test"):
        asyncio.run(generic.sender("alice@example.test"))
