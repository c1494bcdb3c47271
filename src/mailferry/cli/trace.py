"""`mailferry trace ADDRESS`: where will this address go, and why? (mailferry's own; not a Postfix command)

    mailferry [-c CONFIG_DIR] trace [--sender S] [--client ADDR] [--mx] [--json] ADDRESS

It follows the address the way the daemon would, with the daemon's own code,
and prints every step as it happens:

1. RCPT TO, as smtpd checks it for a client at --client (default 127.0.0.1,
   a local client: mynetworks decides what that means): the relay
   restrictions, then smtpd_reject_unlisted_recipient (an address in a
   virtual alias domain with no entry: 550 5.1.1; a table failing: 451 4.3.0);
2. cleanup's rewriting: the envelope sender (--sender) and the recipient
   through append_dot_mydomain, canonical maps, masquerading and the virtual
   alias expansion, step by step, recursion included;
3. for each final address, trivial-rewrite's routing: the address class
   (local, relay, default), transport_maps, the transport and the next hop
   and where it came from (mydestination, a transport_maps key, relay_domains,
   relayhost, sender_dependent_relayhost_maps, or the domain: MX);
4. the DNS query the SMTP client would make for that next hop; with --mx it
   is made (servers: MAILFERRY_NAMESERVERS, else /etc/resolv.conf).

Every table lookup is shown as it is made: table, key, result, milliseconds.
Nothing is delivered and nothing is written to the queue. The lookups are
the daemon's: an LDAP directory is queried, a DNS server only with --mx.
The tables come from main.cf (master.cf -o overrides of the smtpd service
are not applied).

Exit status: 0 when the address would be accepted and routed, 1 when it
would be refused or deferred, 2 for a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import json
import ipaddress
import os
from typing import Any

from mailferry.cli.options import UsageError, parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry [-c CONFIG_DIR] trace [--sender S] [--client ADDR] [--mx] [--json] ADDRESS"
REFUSED_EXIT = 1
ERROR_EXIT = 2
NO_DNS_TRANSPORTS = ("local", "virtual", "error", "discard", "retry", "pipe")


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    given, rest, config_dir = parse_options(argv, "", config_dir, USAGE, reporter,
                                            ("sender=", "client=", "mx", "json"))
    options = {"--sender": "", "--client": "127.0.0.1", **given}
    if len(rest) != 1:
        raise UsageError(f"give one address\n{USAGE}")
    from mailferry.config.config import load
    from mailferry.tables import TableError
    from mailferry.tables.trace import Trace
    trace = Trace()
    try:
        outcome = asyncio.run(trace_address(load(os.path.abspath(config_dir)), rest[0], options["--sender"],
                                            options["--client"], "--mx" in options, trace))
    except TableError as problem:
        return reporter.fatal(f"{problem}: fix the table or the parameter that names it")
    if "--json" in options:
        print(json.dumps({"address": rest[0], "sender": options["--sender"], "client": options["--client"],
                          "outcome": outcome, "events": trace.events}, indent=2))
    else:
        for event in trace.events:
            print(format_event(event))
    return 0 if outcome == "routed" else REFUSED_EXIT


async def trace_address(config, address: str, sender: str, client: str, do_mx: bool, trace) -> str:
    """Follow `address`, telling `trace` each step. Returns "routed", "refused" or "deferred"."""
    from mailferry.cleanup.cleanup import CleanupSettings, qualify
    from mailferry.cleanup.rewrite import AddressRewriter, RewriteDeferred
    from mailferry.message import NewMessage, Recipient
    from mailferry.protocol.address import RECIPIENT, AddressError, parse_path
    from mailferry.policy.dns import DnsClient
    from mailferry.policy.engine import Engine
    from mailferry.policy.facts import SessionFacts
    from mailferry.policy.session import SessionPolicy
    from mailferry.policy.settings import PolicySettings
    from mailferry.routing.resolve import Resolver, RoutingError
    from mailferry.smtpd.recipient_maps import RecipientMaps
    from mailferry.tables.match_lists import NetworkList

    trace.step("start", f"trace {address}" + (f" from sender {sender}" if sender else " (null sender <>)"),
               address=address, sender=sender)
    in_mynetworks = NetworkList(config.get("mynetworks")).matches(client)
    trace.step("client", f"client {client}, {'in' if in_mynetworks else 'not in'} mynetworks"
               " (choose another with --client)", client=client, in_mynetworks=in_mynetworks)
    try:
        path = parse_path(f"<{address}>", allow_smtputf8=True, role=RECIPIENT)
    except AddressError as problem:
        return _refused(trace, "smtpd", problem.reply)
    # The restrictions as smtpd runs them at RCPT (the recipient tables come next, as their own step).
    policy = SessionPolicy(Engine(PolicySettings.from_config(config), DnsClient.from_environment()),
                           SessionFacts(client, in_mynetworks=in_mynetworks))
    policy.record_mail(sender)
    refusal = await policy.rcpt(path.address)
    if refusal is not None:
        return _refused(trace, "smtpd_relay_restrictions/smtpd_recipient_restrictions", refusal.reply)
    trace.step("relay", "smtpd_relay_restrictions and smtpd_recipient_restrictions: permitted")
    recipient_maps = RecipientMaps.from_config(config, trace)
    if recipient_maps.enabled:
        refusal = await recipient_maps.check(path.address)
        if refusal is not None:
            return _refused(trace, "smtpd_reject_unlisted_recipient", refusal.reply)
        trace.step("rcpt", "smtpd_reject_unlisted_recipient: accepted")
    trace.step("accepted", f"RCPT TO:<{path.address}> would get 250 2.1.5 Ok", reply="250 2.1.5 Ok")

    settings = CleanupSettings.from_config(config)
    message = NewMessage(qualify(sender, settings), [Recipient(qualify(path.address, settings))], b"")
    rewriter = AddressRewriter.from_config(config, trace)
    try:
        await rewriter.rewrite(message, False, lambda text: trace.step("warning", f"warning: {text}"))
    except RewriteDeferred as problem:
        trace.step("deferred", f"cleanup: {problem}; the client would get 451 {problem.enhanced_status}"
                   f" {problem.reply_text}", reply=f"451 {problem.enhanced_status} {problem.reply_text}")
        return "deferred"
    finals = [recipient.address for recipient in message.recipients]
    trace.step("recipients", f"after rewriting: sender {message.sender or '<>'}, recipient(s) {', '.join(finals)}",
               sender=message.sender, recipients=finals)

    resolver = Resolver.from_config(config, trace)
    outcome = "routed"
    for final in finals:
        trace.step("resolve", f"routing {final}", address=final)
        try:
            route = await resolver.resolve(final, message.sender)
        except RoutingError as problem:
            trace.step("deferred", f"qmgr would defer {final} (4.3.0): {problem}", address=final)
            outcome = "deferred"
            continue
        trace.step("route", f"route: {final} -> transport {route.transport}, next hop {route.nexthop or '(none)'}",
                   address=final, transport=route.transport, nexthop=route.nexthop)
        await _dns(trace, route.transport, route.nexthop, do_mx)
    trace.step("result", f"result: {outcome}; nothing was delivered or queued", outcome=outcome)
    return outcome


def _refused(trace, where: str, reply) -> str:
    text = " ".join(part for part in (str(reply.code), reply.enhanced, reply.text) if part)
    deferred = 400 <= reply.code < 500
    trace.step("refused", f"{where}: RCPT TO would be {'deferred' if deferred else 'rejected'}: {text}",
               reply=text, code=reply.code)
    return "deferred" if deferred else "refused"


async def _dns(trace, transport: str, nexthop: str, do_mx: bool) -> None:
    """What the SMTP/LMTP client would ask DNS for this next hop; asked with --mx."""
    target = nexthop.removeprefix("inet:")
    if transport in NO_DNS_TRANSPORTS or not target or target.startswith("unix:"):
        return
    bracketed = target.startswith("[")
    if bracketed:
        host, _, port = target[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
    use_mx = not bracketed and transport != "lmtp"   # Postfix's LMTP client never looks up MX
    port_number = int(port) if port.isdigit() else (24 if transport == "lmtp" else 25)
    from mailferry.delivery.dns import NAMESERVERS_VARIABLE, DnsError, NexthopResolver
    if _is_ip(host):
        trace.step("dns", f"DNS: none needed, {host} is an address", host=host)
        return
    servers = os.environ.get(NAMESERVERS_VARIABLE, "").strip() or "the system's (/etc/resolv.conf)"
    query = f"MX {host} (then A/AAAA of each MX host; A/AAAA {host} if it has none)" if use_mx \
        else f"A/AAAA {host} (no MX: {'bracketed' if bracketed else 'LMTP'})"
    if not do_mx:
        trace.step("dns", f"DNS: would query {query}, port {port_number}, servers {servers}; --mx to ask now",
                   host=host, mx=use_mx, port=port_number, queried=False)
        return
    trace.step("dns", f"DNS: querying {query}, servers {servers}", host=host, mx=use_mx, port=port_number,
               queried=True)
    try:
        targets = await NexthopResolver.from_environment(randomize_addresses=False).targets(host, port_number, use_mx)
    except DnsError as problem:
        trace.step("dns_result", f"DNS: {'temporary' if problem.temporary else 'permanent'} failure"
                   f" ({problem.dsn}): {problem.text}", error=problem.text, dsn=problem.dsn)
        return
    except ValueError as problem:
        trace.step("dns_result", f"DNS: {problem}", error=str(problem))
        return
    for item in targets:
        preference = "" if item.preference is None else f" (MX preference {item.preference})"
        trace.step("dns_result", f"DNS: {item.hostname}{preference} -> {item.address} port {item.port}",
                   hostname=item.hostname, address=item.address, port=item.port, preference=item.preference)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.removeprefix("ipv6:").removeprefix("IPv6:"))
    except ValueError:
        return False
    return True


def format_event(event: dict[str, Any]) -> str:
    if event["kind"] == "lookup":
        status = event["status"]
        if status == "found":
            result = f"found {event['value']}"
        elif status == "tempfail":
            result = f"temporary failure {event['reason']}"
        else:
            result = "not found"
        return f"  lookup {event['table']} key {event['key']}: {result} ({event['ms']:.1f} ms)"
    return event["text"]

