"""`sendmail -bv ADDRESS...`: no message is collected or delivered; the sender is mailed a
report that says, for each recipient, where mail to it would go.

Postfix's sendmail -bv queues a message flagged for verification
(DEL_REQ_FLAG_USR_VRFY): the queue manager resolves each recipient and hands it to
its delivery agent, which does not deliver but records the result with verify_append;
bounce(8) then mails the sender a "Mail Delivery Status Report" (its verify template,
one "<address>: ..." line a recipient, a message/delivery-status part with
`Action: deliverable` or `undeliverable`), and sendmail prints "Mail Delivery Status
Report will be mailed to <sender>."

mailferry gives the same observable result differently: this command follows each
recipient with the daemon's own code (cleanup's canonical and virtual alias rewriting,
trivial-rewrite's routing, and for local delivery the alias_maps entry), builds that
report, and drops it into maildrop from the null sender to the sender, so the daemon
delivers it like any notice (pickup, cleanup, the queue). Nothing reaches the
recipients. The difference (docs/migration.md): the delivery agents are not asked, so a
remote server is not contacted (Postfix's smtp client says `250 2.1.5` or what the
server answered), and the tables are read with the rights of the user who runs
sendmail, not the daemon's.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate

_DSN_PREFIX = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")
VERIFY_TEXT = ("This is the mail system at host {host}.\n\n"
               "Enclosed is the mail delivery report that you requested.\n\n"
               "                   The mail system\n")


@dataclass(frozen=True, slots=True)
class Verdict:
    final: str            # the address mail would be delivered to
    original: str         # the address given
    deliverable: bool
    text: str             # "deliverable via transport smtp, next hop [relay]:587"
    status: str           # 2.0.0, 5.1.1, 4.3.0

    def line(self) -> str:
        expanded = f" (expanded from <{self.original}>)" if self.final != self.original else ""
        return f"<{self.final}>{expanded}: {self.text}"


def verify(config, recipients: list[str], sender: str) -> list[Verdict]:
    return asyncio.run(_verify_all(config, recipients, sender))


async def _verify_all(config, recipients: list[str], sender: str) -> list[Verdict]:
    from mailferry.cleanup.cleanup import CleanupSettings, qualify
    from mailferry.cleanup.rewrite import AddressRewriter, RewriteDeferred
    from mailferry.message import NewMessage, Recipient
    from mailferry.routing.resolve import Resolver, RoutingError
    from mailferry.tables.trace import Trace

    settings = CleanupSettings.from_config(config)
    rewriter = AddressRewriter.from_config(config, Trace())
    resolver = Resolver.from_config(config, Trace())
    local_transports = _local_transports(config)
    verdicts = []
    for given in recipients:
        original = qualify(given, settings)
        message = NewMessage(qualify(sender, settings), [Recipient(original)], b"")
        try:
            await rewriter.rewrite(message, False, lambda text: None)
        except RewriteDeferred as problem:
            verdicts.append(Verdict(original, original, False, f"undeliverable for now: {problem}", "4.3.0"))
            continue
        for recipient in message.recipients:
            final = recipient.address
            try:
                route = await resolver.resolve(final, message.sender)
            except RoutingError as problem:
                verdicts.append(Verdict(final, original, False, f"undeliverable for now: {problem}", "4.3.0"))
                continue
            verdicts.append(await _route_verdict(config, final, original, route, local_transports))
    return verdicts


async def _route_verdict(config, final: str, original: str, route, local_transports: set[str]) -> Verdict:
    if route.transport == "error":
        # error:5.1.2 text, as Postfix's error(8) reads it: the status apart, the text alone.
        text = route.nexthop or "mail transport error"
        found = _DSN_PREFIX.match(text)
        status = found.group(1) if found and found.group(1).startswith("5") else "5.0.0"
        return Verdict(final, original, False, text[found.end():] if found else text, status)
    text = f"deliverable via transport {route.transport}, next hop {route.nexthop or '(none)'}"
    if route.transport == "discard":
        text += " (the message would be discarded)"
    elif route.transport in local_transports:
        text += await _local_alias(config, final)
    elif route.transport not in ("retry",):
        text += " (not contacted)"
    return Verdict(final, original, True, text, "2.0.0")


def _local_transports(config) -> set[str]:
    from mailferry.config.mastercf import read_master_cf
    from mailferry.config.config import master_cf_path
    try:
        return {service.name for service in read_master_cf(master_cf_path(config.config_dir)).services
                if service.command == "local"}
    except OSError:
        return {"local"}


async def _local_alias(config, address: str) -> str:
    """What local(8) would find in alias_maps for the local part."""
    from mailferry.syntax import split_list
    from mailferry.tables import TableError, open_table
    local_part = address.rpartition("@")[0].lower() or address.lower()
    for spec in split_list(config.get("alias_maps")):
        try:
            table = open_table(spec)
        except TableError as problem:
            return f"; alias_maps {spec} cannot be read: {problem}"
        try:
            result = await table.lookup(local_part)
        finally:
            table.close()
        if result.found:
            return f"; alias {local_part} in {spec}: {result.value}"
    return f"; no alias for {local_part}: delivered to the user's mailbox"


def report_message(config, sender: str, verdicts: list[Verdict], now: float | None = None) -> bytes:
    """Postfix's verify report: a multipart/report with the text part and a delivery-status part."""
    now = time.time() if now is None else now
    host = config.get("myhostname")
    boundary = f"{secrets.token_hex(8)}.{int(now)}/{host}"
    text = VERIFY_TEXT.format(host=host) + "".join("\n" + verdict.line() + "\n" for verdict in verdicts)
    status = [f"Reporting-MTA: dns; {host}", f"Arrival-Date: {formatdate(now)}", ""]
    for verdict in verdicts:
        status += [f"Final-Recipient: rfc822; {verdict.final}", f"Original-Recipient: rfc822;{verdict.original}",
                   f"Action: {'deliverable' if verdict.deliverable else 'undeliverable'}",
                   f"Status: {verdict.status}", f"Diagnostic-Code: X-Postfix; {verdict.text}", ""]
    lines = [f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
             "Subject: Mail Delivery Status Report",
             f"To: {sender}",
             "Auto-Submitted: auto-replied",
             f"Date: {formatdate(now, localtime=True)}",
             "MIME-Version: 1.0",
             f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
             "Content-Transfer-Encoding: 8bit",
             "",
             "This is a MIME-encapsulated message.",
             "",
             f"--{boundary}",
             "Content-Description: Notification",
             "Content-Type: text/plain; charset=utf-8",
             "",
             text,
             f"--{boundary}",
             "Content-Description: Delivery report",
             "Content-Type: message/delivery-status",
             "",
             *status,
             f"--{boundary}--",
             ""]
    return "\n".join(lines).encode("utf-8")
