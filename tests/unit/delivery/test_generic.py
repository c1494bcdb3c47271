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


# --- in the SMTP client (delivery/smtp.py)

def scripted_client(generic):
    from mailferry.delivery.smtp import SmtpClient
    from mailferry.maillog import MemoryLog
    from tests.unit.delivery.scripted_peer import LoopbackResolver, client_settings
    return SmtpClient(client_settings(connect_timeout=300.0, helo_timeout=300.0, reply_timeout=300.0,
                                      data_timeout=300.0), LoopbackResolver(), MemoryLog(), generic=generic)


def test_the_client_sends_the_mapped_envelope_and_headers(tmp_path):
    from tests.unit.delivery.scripted_peer import ScriptedPeer, make_job
    generic = generic_of(GENERIC_CASES[0].settings, tmp_path)

    async def scenario():
        async with ScriptedPeer() as peer:
            client = scripted_client(generic)
            job = make_job(peer.nexthop, "carol@lan.test", sender="alice@example.test",
                           content=b"From: alice@example.test\r\n\r\nhi\r\n")
            results = await client.deliver(job)
            client.close()
            return results, peer.sessions[0], job
    results, session, job = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [r.status for r in results] == ["sent"]
    sent = b"From: alice.smith@isp.example\r\n\r\nhi\r\n"
    # SIZE= is the size of what is sent, after the mapping.
    assert session.commands[1:3] == [f"MAIL FROM:<alice.smith@isp.example> SIZE={len(sent)}",
                                     "RCPT TO:<carol@isp.example>"]
    assert session.messages[0].startswith(sent)
    assert job.recipients[0].address == "carol@lan.test" and job.message.sender == "alice@example.test"


def test_a_failing_generic_table_defers_and_nothing_is_sent():
    from tests.unit.delivery.scripted_peer import ScriptedPeer, make_job
    generic = GenericMaps(AddressMaps("smtp_generic_maps", Maps([FailingTable()]), lambda domain: False,
                                      "example.test"))

    async def scenario():
        async with ScriptedPeer() as peer:
            client = scripted_client(generic)
            results = await client.deliver(make_job(peer.nexthop, "bob@remote.test"))
            client.close()
            return results, peer.sessions
    results, sessions = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(r.status, r.dsn) for r in results] == [("deferred", "4.3.0")]
    assert "smtp_generic_maps map lookup problem for sender@example.test" in results[0].reason
    assert sessions == []
