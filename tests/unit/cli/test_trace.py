"""`mailferry trace ADDRESS`: each kind of step it prints, with texthash tables.

The steps come from the daemon's own code (smtpd's RCPT checks, cleanup's
rewriting, trivial-rewrite's routing) through an observer; these tests check
that each step is reported, in the order it happens, with the right facts,
and that without an observer nothing is wrapped.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from mailferry.cleanup.rewrite import AddressRewriter
from mailferry.cli.trace import format_event, trace_address
from mailferry.config.config import load
from mailferry.routing.resolve import Resolver
from mailferry.tables import open_maps, open_table
from mailferry.tables.base import Table
from mailferry.tables.trace import Trace, TracedTable
from tests.conftest import write

BASE = """\
myhostname = mail1.internal
mydomain = internal
mydestination = $myhostname
mynetworks = 127.0.0.0/8
"""


def configure(tmp_path, main_cf: str, **tables: str):
    for name, text in tables.items():
        write(tmp_path / name, text)
    write(tmp_path / "main.cf", BASE + main_cf.replace("DIR", str(tmp_path)))
    write(tmp_path / "master.cf", "")
    return load(str(tmp_path))


def run_trace(config, address: str, sender: str = "", client: str = "127.0.0.1") -> tuple[str, list[dict]]:
    trace = Trace()
    outcome = asyncio.run(trace_address(config, address, sender, client, False, trace))
    return outcome, trace.events


def kinds(events: list[dict]) -> list[str]:
    return [event["kind"] for event in events]


def steps(events: list[dict], kind: str) -> list[dict]:
    return [event for event in events if event["kind"] == kind]


def lookups(events: list[dict]) -> list[tuple[str, str, str, str | None]]:
    return [(event["table"].rpartition("/")[2], event["key"], event["status"], event["value"])
            for event in steps(events, "lookup")]


def test_every_lookup_is_shown_with_table_key_result_and_time(tmp_path):
    config = configure(tmp_path, "virtual_alias_maps = texthash:DIR/aliases\n",
                       aliases="info@example.com  joe@mail1.internal\n")
    outcome, events = run_trace(config, "info@example.com")
    assert outcome == "routed"
    assert lookups(events)[:1] == [("aliases", "info@example.com", "found", "joe@mail1.internal")]
    first = steps(events, "lookup")[0]
    assert first["table"] == f"texthash:{tmp_path}/aliases" and first["ms"] >= 0
    assert format_event(first) == (f"  lookup texthash:{tmp_path}/aliases key info@example.com:"
                                   f" found joe@mail1.internal ({first['ms']:.1f} ms)")
    missing = next(event for event in steps(events, "lookup") if event["status"] == "not-found")
    assert format_event(missing).endswith(": not found (%.1f ms)" % missing["ms"])


def test_virtual_alias_recursion_is_shown_as_it_happens_and_a_self_mapping_stops_it(tmp_path):
    config = configure(tmp_path, "virtual_alias_maps = texthash:DIR/aliases\n", aliases=(
        "info@example.com  sales@example.com\n"
        "sales@example.com  alice@mail1.internal, bob@example.net\n"
        "alice@mail1.internal  alice@mail1.internal, archive@example.net\n"))
    outcome, events = run_trace(config, "info@example.com")
    aliases = [(event["before"], event["after"], event["depth"]) for event in steps(events, "virtual_alias")]
    assert aliases == [("info@example.com", ["sales@example.com"], 1),
                       ("sales@example.com", ["alice@mail1.internal", "bob@example.net"], 2),
                       ("alice@mail1.internal", ["alice@mail1.internal", "archive@example.net"], 3)]
    assert "maps to itself" in steps(events, "virtual_alias")[2]["text"]
    assert steps(events, "recipients")[0]["recipients"] == [
        "alice@mail1.internal", "bob@example.net", "archive@example.net"]
    # Each step comes right after the lookup that found it, as the recursion happens.
    for position, event in enumerate(events):
        if event["kind"] == "virtual_alias":
            before = events[position - 1]
            assert (before["kind"], before["key"], before["status"]) == ("lookup", event["before"], "found")
    assert [step["address"] for step in steps(events, "route")] == [
        "alice@mail1.internal", "bob@example.net", "archive@example.net"]


def test_canonical_chain_append_dot_mydomain_and_masquerading_are_steps(tmp_path):
    config = configure(tmp_path, "canonical_maps = texthash:DIR/canonical\nmasquerade_domains = example.org\n"
                       "append_dot_mydomain = yes\n",
                       canonical="joe@host  joe.old@mx.example.org\njoe.old@mx.example.org  joe@mx.example.org\n")
    outcome, events = run_trace(config, "someone@mail1.internal", sender="joe@host")
    assert [event["after"] for event in steps(events, "append_dot_mydomain")] == ["joe@host.internal"]
    config = configure(tmp_path, "canonical_maps = texthash:DIR/canonical\nmasquerade_domains = example.org\n",
                       canonical="joe@host  joe.old@mx.example.org\njoe.old@mx.example.org  joe@mx.example.org\n")
    outcome, events = run_trace(config, "someone@mail1.internal", sender="joe@host")
    assert [(event["before"], event["after"]) for event in steps(events, "canonical")] == [
        ("joe@host", "joe.old@mx.example.org"), ("joe.old@mx.example.org", "joe@mx.example.org")]
    assert [(event["before"], event["after"]) for event in steps(events, "masquerade")] == [
        ("joe@mx.example.org", "joe@example.org")]
    assert steps(events, "recipients")[0]["sender"] == "joe@example.org"


def test_local_domain_goes_to_the_mailbox_transport(tmp_path):
    config = configure(tmp_path, "mailbox_transport = lmtp:unix:/run/dovecot/lmtp\n")
    outcome, events = run_trace(config, "john.smith@mail1.internal")
    decision = steps(events, "address_class")[0]
    assert decision["address_class"] == "local"
    assert "mydestination" in decision["text"] and "mailbox_transport = lmtp:unix:/run/dovecot/lmtp" in decision["text"]
    route = steps(events, "route")[0]
    assert (route["transport"], route["nexthop"]) == ("lmtp", "unix:/run/dovecot/lmtp")
    assert steps(events, "dns") == []          # a unix socket needs no DNS
    assert kinds(events)[-1] == "result"


def test_transport_maps_key_that_matched_decides(tmp_path):
    config = configure(tmp_path, "transport_maps = texthash:DIR/transport\n",
                       transport="example.net  smtp:[relay.example.net]:587\n")
    outcome, events = run_trace(config, "bob@sub.example.net")
    assert lookups(events) == [("transport", "bob@sub.example.net", "not-found", None),
                               ("transport", "sub.example.net", "not-found", None),
                               ("transport", ".example.net", "not-found", None),
                               ("transport", ".net", "not-found", None),
                               ("transport", "*", "not-found", None)]
    config = configure(tmp_path, "transport_maps = texthash:DIR/transport\n",
                       transport=".example.net  smtp:[relay.example.net]:587\n")
    outcome, events = run_trace(config, "bob@sub.example.net")
    entry = steps(events, "transport_maps")[0]
    assert (entry["key"], entry["value"]) == (".example.net", "smtp:[relay.example.net]:587")
    route = steps(events, "route")[0]
    assert (route["transport"], route["nexthop"]) == ("smtp", "[relay.example.net]:587")
    dns = steps(events, "dns")[0]
    assert (dns["host"], dns["mx"], dns["port"], dns["queried"]) == ("relay.example.net", False, 587, False)


def test_relay_domains_relayhost_and_the_domain_for_mx(tmp_path):
    config = configure(tmp_path, "relay_domains = partner.example\nrelayhost = [smarthost.example]\n")
    _, events = run_trace(config, "a@partner.example")
    assert steps(events, "address_class")[0]["address_class"] == "relay"
    assert steps(events, "nexthop")[0]["source"] == "relayhost"
    assert (steps(events, "route")[0]["transport"], steps(events, "route")[0]["nexthop"]) == (
        "relay", "[smarthost.example]")
    config = configure(tmp_path, "")
    _, events = run_trace(config, "a@elsewhere.example")
    assert steps(events, "address_class")[0]["address_class"] == "default"
    assert (steps(events, "nexthop")[0]["source"], steps(events, "nexthop")[0]["nexthop"]) == (
        "domain", "elsewhere.example")
    dns = steps(events, "dns")[0]
    assert (dns["host"], dns["mx"], dns["queried"]) == ("elsewhere.example", True, False)
    assert "MX elsewhere.example" in dns["text"] and "--mx" in dns["text"]


def test_sender_dependent_relayhost_is_looked_up_with_the_sender(tmp_path):
    config = configure(tmp_path, "sender_dependent_relayhost_maps = texthash:DIR/relays\n",
                       relays="@corp.example  [out.corp.example]:587\n")
    _, events = run_trace(config, "a@elsewhere.example", sender="me@corp.example")
    assert ("relays", "@corp.example", "found", "[out.corp.example]:587") in lookups(events)
    hop = steps(events, "nexthop")[0]
    assert (hop["source"], hop["nexthop"]) == ("sender_dependent_relayhost_maps", "[out.corp.example]:587")


def test_unknown_address_in_a_virtual_alias_domain_would_get_550(tmp_path):
    config = configure(tmp_path, "virtual_alias_domains = example.com\nvirtual_alias_maps = texthash:DIR/aliases\n",
                       aliases="info@example.com  joe@mail1.internal\n")
    outcome, events = run_trace(config, "nobody@example.com")
    assert outcome == "refused"
    refused = steps(events, "refused")[0]
    assert refused["reply"] == ("550 5.1.1 <nobody@example.com>: Recipient address rejected:"
                                " User unknown in virtual alias table")
    assert kinds(events)[-1] == "refused"      # nothing is rewritten or routed after a refusal
    assert "virtual_alias_domains" in steps(events, "recipient_maps")[0]["text"]


def test_a_table_that_fails_for_now_shows_the_failure_and_the_451(tmp_path, unreachable_ldap):
    config = configure(tmp_path, f"virtual_alias_maps = {unreachable_ldap}\n")
    outcome, events = run_trace(config, "info@example.com")
    assert outcome == "deferred"
    failed = steps(events, "lookup")[0]
    assert (failed["status"], failed["key"]) == ("tempfail", "info@example.com") and failed["reason"]
    assert "temporary failure" in format_event(failed)
    assert steps(events, "refused")[0]["reply"] == "451 4.3.0 <info@example.com>: Temporary lookup failure"


def test_a_failing_table_after_rcpt_shows_what_cleanup_and_qmgr_would_do(tmp_path, unreachable_ldap):
    config = configure(tmp_path, f"virtual_alias_maps = {unreachable_ldap}\nsmtpd_reject_unlisted_recipient = no\n")
    outcome, events = run_trace(config, "info@example.com")
    assert outcome == "deferred"
    assert steps(events, "deferred")[0]["reply"] == "451 4.3.0 Error: queue file write error"
    config = configure(tmp_path, f"transport_maps = {unreachable_ldap}\n")
    outcome, events = run_trace(config, "info@example.com")
    assert outcome == "deferred"
    deferred = steps(events, "deferred")[0]
    assert deferred["address"] == "info@example.com" and "transport_maps lookup of info@example.com" in deferred["text"]
    assert steps(events, "route") == []


def test_an_outside_client_is_refused_relaying(tmp_path):
    config = configure(tmp_path, "")
    outcome, events = run_trace(config, "a@elsewhere.example", client="192.0.2.1")
    assert outcome == "deferred"   # Postfix's default smtpd_relay_restrictions end in defer_unauth_destination
    assert steps(events, "refused")[0]["reply"] == "454 4.7.1 <a@elsewhere.example>: Relay access denied"
    assert steps(events, "client")[0]["in_mynetworks"] is False
    _, events = run_trace(config, "a@mail1.internal", client="192.0.2.1")
    assert steps(events, "route")[0]["address"] == "a@mail1.internal"


def test_the_command_prints_one_step_a_line_and_json_and_writes_no_queue(tmp_path, mailferry):
    configure(tmp_path, "virtual_alias_domains = example.com\nvirtual_alias_maps = texthash:DIR/aliases\n"
              f"queue_directory = {tmp_path}/queue\n",
              aliases="info@example.com  joe@mail1.internal\n")
    text = mailferry("trace", "info@example.com", config_dir=tmp_path)
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0] == "trace info@example.com (null sender <>)"
    assert any(line.startswith(f"  lookup texthash:{tmp_path}/aliases key info@example.com: found joe@mail1.internal")
               for line in lines)
    assert "route: joe@mail1.internal -> transport local, next hop mail1.internal" in lines
    as_json = mailferry("trace", "--json", "nobody@example.com", config_dir=tmp_path)
    assert as_json.code == 1
    document = json.loads(as_json.out)
    assert document["outcome"] == "refused"
    assert document["events"][-1]["reply"].startswith("550 5.1.1 <nobody@example.com>")
    assert not (tmp_path / "queue").exists()
    usage = mailferry("trace", config_dir=tmp_path)
    assert usage.code == 2 and "usage: mailferry" in usage.err


def test_mx_flag_asks_dns_and_reports_its_answer(tmp_path, mailferry, monkeypatch):
    configure(tmp_path, "")
    monkeypatch.setenv("MAILFERRY_NAMESERVERS", "none")
    result = mailferry("trace", "--mx", "a@elsewhere.example", config_dir=tmp_path)
    assert "DNS: querying MX elsewhere.example" in result.out
    assert "DNS is turned off" in result.out


def test_without_an_observer_nothing_is_wrapped(tmp_path):
    write(tmp_path / "t", "a 1\n")
    assert not isinstance(open_table(f"texthash:{tmp_path}/t"), TracedTable)
    assert all(not isinstance(table, TracedTable) for table in open_maps(f"texthash:{tmp_path}/t").tables)
    traced = open_table(f"texthash:{tmp_path}/t", observer=Trace())
    assert isinstance(traced, TracedTable) and isinstance(traced, Table) and traced.spec == f"texthash:{tmp_path}/t"
    config = configure(tmp_path, "virtual_alias_maps = texthash:DIR/t\ntransport_maps = texthash:DIR/t\n")
    rewriter = AddressRewriter.from_config(config)
    assert rewriter.observer is None
    assert not any(isinstance(table, TracedTable) for table in rewriter.virtual.maps.tables)
    assert not any(isinstance(table, TracedTable) for table in Resolver.from_config(config)._maps.tables)


@pytest.mark.parametrize("status, expected", [("found", "found v"), ("not-found", "not found"),
                                              ("tempfail", "temporary failure why")])
def test_lookup_lines(status, expected):
    event = {"kind": "lookup", "table": "ldap:/f", "key": "k", "status": status,
             "value": "v" if status == "found" else None, "reason": "why", "ms": 1.25}
    assert format_event(event) == f"  lookup ldap:/f key k: {expected} (1.2 ms)"
