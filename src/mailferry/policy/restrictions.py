"""The built-in restrictions, by name, as Postfix's generic_checks runs them.

Each handler gets the Evaluation (engine.py) and the Call (its name, its
argument, the reply name and class of the stage) and returns DUNNO, OK or
REJECT through the evaluation's reject()/defer_if_permit()/permit(). The
texts and codes are Postfix's (smtpd_check.c), built in refusals.py.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailferry import refusals
from mailferry.policy import dns
from mailferry.policy.access import LookupFailed
from mailferry.policy.facts import NAME_FORGED, NAME_OK, NAME_UNKNOWN, UNKNOWN
from mailferry.policy.hostnames import is_fqdn, is_valid_hostaddr, is_valid_hostname
from mailferry.policy.policy_service import PolicyServiceError
from mailferry.policy.sender_login import NO_OWNER, NOT_OWNED
from mailferry.config.localdomains import LookupDeferred
from mailferry.policy.state import BOUNCE, DATA, POLICY, PROTOCOL
from mailferry.syntax import split_list

if TYPE_CHECKING:
    from mailferry.policy.engine import Evaluation

DUNNO = 0
OK = 1
REJECT = 2


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    argument: str | None
    rest: list[str]            # the restrictions after this one, for "X after Y is ignored"
    reply_name: str
    reply_class: str
    default_access: str | None


def split(value: str) -> list[str]:
    return split_list(value)


# --- Generic

async def permit(ev: Evaluation, call: Call) -> int:
    if call.rest:
        ev.warn(f"restriction `{call.rest[0]}' after `permit' is ignored")
    return ev.permit()


async def reject(ev: Evaluation, call: Call) -> int:
    return ev.reject(POLICY, ev.codes.reject, "5.7.1",
                     refusals.rejected_text(call.reply_name, call.reply_class, refusals.ACCESS_DENIED))


async def defer(ev: Evaluation, call: Call) -> int:
    return ev.reject(POLICY, ev.codes.defer, "4.3.2",
                     refusals.rejected_text(call.reply_name, call.reply_class, "Try again later"))


async def defer_if_permit(ev: Evaluation, call: Call) -> int:
    return ev.defer_if_permit(True, POLICY, 450, "4.7.0",
                              refusals.rejected_text(call.reply_name, call.reply_class,
                                                     "defer_if_permit requested"))


async def defer_if_reject(ev: Evaluation, call: Call) -> int:
    return ev.defer_if_reject(POLICY, 450, "4.7.0",
                              refusals.rejected_text(call.reply_name, call.reply_class,
                                                     "defer_if_reject requested"))


async def sleep(ev: Evaluation, call: Call) -> int:
    if not (call.argument or "").isdigit():
        ev.warn("restriction sleep must be followed by number")
        ev.server_error()
    await asyncio.sleep(int(call.argument))
    return DUNNO


async def reject_unauth_pipelining(ev: Evaluation, call: Call) -> int:
    if ev.facts.improper_pipelining:
        code, dsn = refusals.IMPROPER_PIPELINING
        return ev.reject(PROTOCOL, code, dsn, refusals.rejected_text(
            call.reply_name, call.reply_class, "Improper use of SMTP command pipelining"))
    return DUNNO


async def reject_plaintext_session(ev: Evaluation, call: Call) -> int:
    if not ev.facts.tls_protocol:
        return ev.reject(POLICY, ev.codes.plaintext_reject, "4.7.1", refusals.PLAINTEXT_TEXT)
    return DUNNO


# --- Client

async def permit_mynetworks(ev: Evaluation, call: Call) -> int:
    return ev.permit() if ev.facts.in_mynetworks else DUNNO


async def permit_sasl_authenticated(ev: Evaluation, call: Call) -> int:
    return ev.permit() if ev.facts.sasl_username else DUNNO


async def reject_unknown_client_hostname(ev: Evaluation, call: Call) -> int:
    facts = ev.facts
    if facts.client_name_status == NAME_OK:
        return DUNNO
    code = ev.codes.unknown_client_reject if facts.client_name_status in (NAME_UNKNOWN, NAME_FORGED) else 450
    return ev.reject(POLICY, code, "4.7.25", refusals.unknown_client_text(facts.client_address))


async def reject_unknown_reverse_client_hostname(ev: Evaluation, call: Call) -> int:
    facts = ev.facts
    if facts.reverse_name_status == NAME_OK:
        return DUNNO
    code = ev.codes.unknown_client_reject if facts.reverse_name_status == NAME_UNKNOWN else 450
    return ev.reject(POLICY, code, "4.7.1", refusals.unknown_reverse_client_text(facts.client_address))


async def check_client_access(ev: Evaluation, call: Call) -> int:
    facts = ev.facts
    order = ev.settings.access_order
    maps = ev.maps(call.argument)
    match = await ev.lookup(call.argument, lambda: order.client(maps, facts.client_name, facts.client_address),
                            facts.client)
    if match is None:
        return DUNNO
    return await ev.table_result(call.argument, match.value, facts.client_address, facts.client,
                                 refusals.CLIENT, call.default_access)


async def check_reverse_client_access(ev: Evaluation, call: Call) -> int:
    facts = ev.facts
    order = ev.settings.access_order
    maps = ev.maps(call.argument)
    match = await ev.lookup(call.argument, lambda: order.client(maps, facts.reverse_client_name,
                                                                facts.client_address), facts.reverse_client_name)
    if match is None:
        return DUNNO
    return await ev.table_result(call.argument, match.value, facts.client_address, facts.reverse_client_name,
                                 refusals.REVERSE_CLIENT, call.default_access)


async def check_sasl_access(ev: Evaluation, call: Call) -> int:
    username = ev.facts.sasl_username
    if not ev.settings.sasl_enabled:
        ev.warn(f"restriction `{call.name}' ignored: no SASL support")
        return DUNNO
    if not username:
        return DUNNO
    maps = ev.maps(call.argument)
    match = await ev.lookup(call.argument, lambda: ev.settings.access_order.exact(maps, username), username)
    if match is None:
        return DUNNO
    return await ev.table_result(call.argument, match.value, username, username, refusals.SASL_USER,
                                 call.default_access)


async def reject_rbl_client(ev: Evaluation, call: Call) -> int:
    address = ev.facts.client_address
    try:
        query = dns.dnsbl_query_name(address, call.argument.partition("=")[0])
    except ValueError:
        return DUNNO
    listed = await _dnsxl(ev, query, call.argument)
    if listed is None:
        return DUNNO
    return await _rbl_reply(ev, listed, call.argument, address, refusals.CLIENT)


async def permit_dnswl_client(ev: Evaluation, call: Call) -> int:
    if ev.facts.stage == "RCPT" and ev.facts.recipient and not await _authorized_destination(ev, ev.facts.recipient):
        return DUNNO
    address = ev.facts.client_address
    try:
        query = dns.dnsbl_query_name(address, call.argument.partition("=")[0])
    except ValueError:
        return DUNNO
    answer = await ev.dns.query(query, "A")
    if answer.status == dns.TEMPFAIL:
        return ev.defer_if_reject(POLICY, 450, "4.7.1", refusals.rejected_text(
            address, refusals.CLIENT, refusals.SERVICE_UNAVAILABLE))
    if answer.found and _reply_matches(answer.values, call.argument):
        return ev.permit()
    return DUNNO


async def reject_rhsbl_client(ev: Evaluation, call: Call) -> int:
    if ev.facts.client_name.lower() == UNKNOWN:
        return DUNNO
    return await _rhsbl(ev, call, ev.facts.client_name, refusals.CLIENT)


async def reject_rhsbl_reverse_client(ev: Evaluation, call: Call) -> int:
    if ev.facts.reverse_client_name.lower() == UNKNOWN:
        return DUNNO
    return await _rhsbl(ev, call, ev.facts.reverse_client_name, refusals.REVERSE_CLIENT)


# --- HELO

async def check_helo_access(ev: Evaluation, call: Call) -> int:
    helo = ev.facts.helo_name
    if not helo:
        return DUNNO
    maps = ev.maps(call.argument)
    match = await ev.lookup(call.argument, lambda: ev.settings.access_order.domain(maps, helo), helo)
    if match is None:
        return DUNNO
    return await ev.table_result(call.argument, match.value, helo, helo, refusals.HELO, call.default_access)


def _on_helo_name(step):
    """reject_invalid/non_fqdn/unknown_helo_hostname: nothing without HELO; an address
    literal ([192.0.2.1]) is checked as an address; a name with `step(ev, helo)`."""
    async def restriction(ev: Evaluation, call: Call) -> int:
        helo = ev.facts.helo_name
        if not helo:
            return DUNNO
        if helo.startswith("["):
            return _invalid_hostaddr(ev, helo)
        return await step(ev, helo)
    return restriction


async def _invalid_helo(ev: Evaluation, helo: str) -> int:
    name = helo.rstrip(".")
    if not is_valid_hostname(name) and not is_valid_hostaddr(name):
        return ev.reject(POLICY, ev.codes.invalid_hostname_reject, "5.5.2",
                         refusals.rejected_text(helo, refusals.HELO, "Invalid name"))
    return DUNNO


async def _non_fqdn_helo(ev: Evaluation, helo: str) -> int:
    if not is_fqdn(helo.rstrip(".")):
        return ev.reject(POLICY, ev.codes.non_fqdn_reject, "5.5.2",
                         refusals.rejected_text(helo, refusals.HELO, "need fully-qualified hostname"))
    return DUNNO


async def _unknown_helo(ev: Evaluation, helo: str) -> int:
    answer = await dns.known_hostname(ev.dns, helo.rstrip("."))
    if answer.found:
        return DUNNO
    text = refusals.rejected_text(helo, refusals.HELO, "Host not found")
    if answer.status == dns.TEMPFAIL:
        return ev.defer_if_permit(ev.settings.unknown_helo_tempfail_defers_if_permit, POLICY, 450, "4.7.1", text)
    return ev.reject(POLICY, ev.codes.unknown_hostname_reject, "4.7.1", text)


reject_invalid_helo_hostname = _on_helo_name(_invalid_helo)
reject_non_fqdn_helo_hostname = _on_helo_name(_non_fqdn_helo)
reject_unknown_helo_hostname = _on_helo_name(_unknown_helo)


async def reject_rhsbl_helo(ev: Evaluation, call: Call) -> int:
    helo = ev.facts.helo_name
    if not helo:
        return DUNNO
    return await _rhsbl(ev, call, helo, refusals.HELO)


def _invalid_hostaddr(ev: Evaluation, helo: str) -> int:
    inner = helo[1:-1] if helo.endswith("]") and len(helo) > 2 else helo
    if not is_valid_hostaddr(inner):
        return ev.reject(POLICY, ev.codes.invalid_hostname_reject, "5.5.2",
                         refusals.rejected_text(helo, refusals.HELO, "invalid ip address"))
    return DUNNO


# --- Sender

async def check_sender_access(ev: Evaluation, call: Call) -> int:
    sender = ev.facts.sender
    if sender is None:
        return DUNNO
    if sender == "":
        maps = ev.maps(call.argument)
        match = await ev.lookup(call.argument,
                                lambda: ev.settings.access_order.exact(maps, ev.settings.null_access_key), sender)
        if match is None:
            return DUNNO
        return await ev.table_result(call.argument, match.value, sender, sender, refusals.SENDER,
                                     call.default_access)
    return await _mail_access(ev, call, sender, refusals.SENDER)


async def reject_authenticated_sender_login_mismatch(ev: Evaluation, call: Call) -> int:
    if not _sasl_enabled(ev, call):
        return DUNNO
    sender = ev.facts.sender
    if sender and ev.facts.sasl_username:
        return await _logged_in_owns(ev, sender, allow_unknown=False)
    return DUNNO


async def reject_known_sender_login_mismatch(ev: Evaluation, call: Call) -> int:
    if not _sasl_enabled(ev, call):
        return DUNNO
    sender = ev.facts.sender
    if not sender:
        return DUNNO
    if ev.facts.sasl_username:
        return await _logged_in_owns(ev, sender, allow_unknown=True)
    return await _not_logged_in(ev, sender)


async def reject_unauthenticated_sender_login_mismatch(ev: Evaluation, call: Call) -> int:
    if not _sasl_enabled(ev, call):
        return DUNNO
    sender = ev.facts.sender
    if sender and not ev.facts.sasl_username:
        return await _not_logged_in(ev, sender)
    return DUNNO


async def reject_sender_login_mismatch(ev: Evaluation, call: Call) -> int:
    """Postfix defines it as a class: the authenticated check, then the unauthenticated one."""
    status = await reject_authenticated_sender_login_mismatch(ev, call)
    if status != DUNNO:
        return status
    return await reject_unauthenticated_sender_login_mismatch(ev, call)


def _sasl_enabled(ev: Evaluation, call: Call) -> bool:
    if not ev.settings.sasl_enabled:
        ev.warn(f"restriction `{call.name}' ignored: no SASL support")
        return False
    return True


async def _logged_in_owns(ev: Evaluation, sender: str, allow_unknown: bool) -> int:
    logins = ev.settings.sender_logins
    if logins is None:
        return DUNNO
    login = ev.facts.sasl_username
    try:
        ownership = await logins.ownership(sender, login)
    except LookupFailed:
        ev.dict_retry(sender)
    if ownership == NOT_OWNED or (ownership == NO_OWNER and not allow_unknown):
        code, dsn = refusals.SENDER_LOGIN_MISMATCH
        return ev.reject(POLICY, code, dsn, refusals.not_owned_text(sender, login))
    return DUNNO


async def _not_logged_in(ev: Evaluation, sender: str) -> int:
    logins = ev.settings.sender_logins
    if logins is None:
        return DUNNO
    try:
        owners = await logins.owners(sender)
    except LookupFailed:
        ev.dict_retry(sender)
    if owners is not None:
        code, dsn = refusals.SENDER_LOGIN_MISMATCH
        return ev.reject(POLICY, code, dsn, refusals.not_logged_in_text(sender))
    return DUNNO


async def header_from_logins(ev: Evaluation, addresses: list[str]) -> int:
    """smtpd_sender_login_header_check: each header From: address must be the
    login's, as reject_sender_login_mismatch wants of the envelope sender."""
    logins = ev.settings.sender_logins
    if logins is None:
        return DUNNO
    login = ev.facts.sasl_username
    code, dsn = refusals.SENDER_LOGIN_MISMATCH
    for address in addresses:
        try:
            if login:
                if await logins.ownership(address, login) != "owned":
                    return ev.reject(POLICY, code, dsn, refusals.header_not_owned_text(address, login))
            elif await logins.owners(address) is not None:
                return ev.reject(POLICY, code, dsn, refusals.header_not_logged_in_text(address))
        except LookupFailed:
            ev.dict_retry(address)
    return DUNNO


# --- Recipient

async def check_recipient_access(ev: Evaluation, call: Call) -> int:
    recipient = ev.facts.recipient
    if recipient is None:
        return DUNNO
    return await _mail_access(ev, call, recipient, refusals.RECIPIENT)


async def permit_auth_destination(ev: Evaluation, call: Call) -> int:
    recipient = ev.facts.recipient
    if recipient is None:
        return DUNNO
    return ev.permit() if await _authorized_destination(ev, recipient) else DUNNO


async def reject_unauth_destination(ev: Evaluation, call: Call) -> int:
    return await _unauth_destination(ev, ev.codes.relay_domains_reject, "5.7.1")


async def defer_unauth_destination(ev: Evaluation, call: Call) -> int:
    return await _unauth_destination(ev, ev.codes.relay_domains_reject - 100, "4.7.1")


async def _unauth_destination(ev: Evaluation, code: int, dsn: str) -> int:
    recipient = ev.facts.recipient
    if recipient is None or await _authorized_destination(ev, recipient):
        return DUNNO
    return ev.reject(POLICY, code, dsn, refusals.relay_denied_text(recipient))


async def reject_multi_recipient_bounce(ev: Evaluation, call: Call) -> int:
    facts = ev.facts
    if facts.sender == "" and facts.recipient_count > (0 if facts.stage == "RCPT" else 1):
        return ev.reject(POLICY, ev.codes.multi_recipient_bounce_reject, refusals.MULTI_RECIPIENT_BOUNCE_DSN,
                         refusals.rejected_text(call.reply_name, call.reply_class, "Multi-recipient bounce"))
    return DUNNO


async def unlisted_address(ev: Evaluation, address: str, reply_class: str) -> int:
    """reject_unlisted_sender/recipient: the recipient table checks (smtpd/recipient_maps.py),
    with the sender's class word and status when it is the sender that is judged."""
    session = ev.session
    if reply_class == refusals.SENDER:
        if session.sender_unlisted_checked:
            return DUNNO
        if not ev.state.warn_if_reject:
            session.sender_unlisted_checked = True
    else:
        if session.recipient_unlisted_checked:
            return DUNNO
        if not ev.state.warn_if_reject:
            session.recipient_unlisted_checked = True
    if ev.engine.unlisted is None:
        return DUNNO
    refusal = await ev.engine.unlisted.check(address)
    if refusal is None:
        return DUNNO
    if refusal.warning:
        ev.warn(refusal.warning)
    reply = refusal.reply
    text, dsn = reply.text, reply.enhanced
    if reply_class == refusals.SENDER:
        text = text.replace(refusals.RECIPIENT, refusals.SENDER, 1)
        dsn = refusals.dsn_fix(dsn, refusals.SENDER)
    return ev.reject(DATA if reply.code == 451 else BOUNCE, reply.code, dsn, text)


# --- Shared steps

async def _mail_access(ev: Evaluation, call: Call, address: str, reply_class: str) -> int:
    resolved = ev.settings.canonicalizer.resolve(address)
    maps = ev.maps(call.argument)
    match = await ev.lookup(call.argument, lambda: ev.settings.access_order.mail(maps, resolved.address), address)
    if match is None:
        return DUNNO
    status = await ev.table_result(call.argument, match.value, resolved.address, address, reply_class,
                                   call.default_access)
    if status == OK and resolved.routed and reply_class == refusals.RECIPIENT:
        return DUNNO   # allow_untrusted_routing = no: a routed recipient is never OK from a table
    return status


async def _authorized_destination(ev: Evaluation, recipient: str) -> bool:
    if ev.facts.recipient_routed and recipient == ev.facts.recipient:
        return False   # routing the parser saw (a source route, a quoted "a@b"@ours)
    resolved = ev.settings.canonicalizer.resolve(recipient)
    if "@" not in resolved.address:
        return True
    if resolved.routed:
        return False
    domain = resolved.domain.lower()
    if ev.settings.canonicalizer.is_local(domain) or await _virtual_domain(ev, domain):
        return True
    relay = await ev.settings.relay_domains.matches_async(domain)
    if relay is None:
        ev.dict_retry(recipient)  # Postfix: trivial-rewrite failed to resolve the recipient
        return False
    return relay


async def _virtual_domain(ev: Evaluation, domain: str) -> bool:
    try:
        for domains in ev.settings.virtual_domains:
            if domains and await domains.matches(domain):
                return True
    except LookupDeferred:
        ev.dict_retry(domain)
    return False


async def _unknown_address(ev: Evaluation, address: str, reply_class: str) -> int:
    resolved = ev.settings.canonicalizer.resolve(address)
    if "@" not in resolved.address:
        return DUNNO
    domain = resolved.domain
    if ev.settings.canonicalizer.is_local(domain.lower()) or await _virtual_domain(ev, domain.lower()):
        return DUNNO
    if domain.startswith("[") and domain.endswith("]"):
        return DUNNO
    sender = reply_class == refusals.SENDER
    answer = await dns.mail_host(ev.dns, domain)
    if answer.found:
        return DUNNO
    if answer.status == dns.NULL_MX:
        return ev.reject(POLICY, 550 if sender else 556, "4.7.27" if sender else "4.1.10",
                         refusals.rejected_text(address, reply_class, refusals.NULL_MX_TEXT.format(domain=domain)))
    dsn = "4.1.8" if sender else "4.1.2"
    text = refusals.rejected_text(address, reply_class, "Domain not found")
    if answer.status == dns.TEMPFAIL:
        return ev.defer_if_permit(ev.settings.unknown_address_tempfail_defers_if_permit, POLICY, 450, dsn, text)
    return ev.reject(POLICY, ev.codes.unknown_address_reject, dsn, text)


def _non_fqdn_address(ev: Evaluation, address: str, reply_class: str) -> int:
    domain = address.rpartition("@")[2] if "@" in address else ""
    if domain.startswith("[") and domain.endswith("]"):
        return DUNNO
    if not domain or not is_fqdn(domain.rstrip(".")):
        return ev.reject(POLICY, ev.codes.non_fqdn_reject, "4.5.2",
                         refusals.rejected_text(address, reply_class, "need fully-qualified address"))
    return DUNNO


async def _rhsbl(ev: Evaluation, call: Call, what: str, reply_class: str) -> int:
    domain = what.rpartition("@")[2] if "@" in what else what
    domain = domain.rstrip(".")
    if not domain or domain.startswith("[") or domain.rpartition(".")[2].isdigit():
        return DUNNO
    if not is_valid_hostname(domain):
        return DUNNO
    listed = await _dnsxl(ev, f"{domain}.{call.argument.partition('=')[0]}", call.argument)
    if listed is None:
        return DUNNO
    return await _rbl_reply(ev, listed, call.argument, what, reply_class)


async def _dnsxl(ev: Evaluation, query: str, spec: str) -> tuple[str, ...] | None:
    """The TXT texts when `query` is listed (and its address matches `=filter`), else None.
    A lookup that fails for now lets the client through, as in Postfix, with a warning."""
    answer = await ev.dns.query(query, "A")
    if answer.status == dns.TEMPFAIL:
        ev.warn(f"{query}: RBL lookup error: {answer.reason}")
        return None
    if not answer.found or not _reply_matches(answer.values, spec):
        return None
    txt = await ev.dns.query(query, "TXT")
    return txt.values if txt.found else ()


_OCTET_RANGE = re.compile(r"^\[(\d+)\.\.(\d+)\]$")


def _reply_matches(values: tuple[str, ...], spec: str) -> bool:
    """`domain=127.0.0.2` or `domain=127.0.[0..255].[1;2;4]`: the A record must match."""
    _, equals, pattern = spec.partition("=")
    if not equals:
        return True
    return any(_address_matches(value, pattern) for value in values)


_PATTERN_OCTET = re.compile(r"\[[^\]]*\]|[^.]+")


def _address_matches(address: str, pattern: str) -> bool:
    octets, wanted = address.split("."), _PATTERN_OCTET.findall(pattern)
    if len(octets) != 4 or len(wanted) != 4:
        return False
    for octet, rule in zip(octets, wanted):
        if rule.startswith("["):
            span = _OCTET_RANGE.match(rule)
            if span:
                if not int(span.group(1)) <= int(octet) <= int(span.group(2)):
                    return False
            elif octet not in rule[1:-1].split(";"):
                return False
        elif octet != rule:
            return False
    return True


async def _rbl_reply(ev: Evaluation, texts: tuple[str, ...], spec: str, what: str, reply_class: str) -> int:
    domain = spec.partition("=")[0]
    template = None
    if ev.settings.rbl_reply_maps is not None:
        for key in dict.fromkeys((spec, domain)):
            result = await ev.settings.rbl_reply_maps.lookup(key)
            if result.tempfail:
                ev.server_error()
            if result.found:
                template = result.value
                break
    reason = " / ".join(texts)[:500]
    variables = {"rbl_code": str(ev.codes.maps_rbl_reject), "rbl_domain": domain, "rbl_reason": reason,
                 "rbl_txt": reason, "rbl_what": what, "rbl_class": reply_class,
                 "client_address": ev.facts.client_address, "client_name": ev.facts.client_name,
                 "helo_name": ev.facts.helo_name or "", "sender": ev.facts.sender or "",
                 "recipient": ev.facts.recipient or ""}
    text = expand_template(template or ev.settings.default_rbl_reply, variables)
    if len(text) < 4 or text[0] not in "45" or not text[1:3].isdigit() or text[3] != " ":
        ev.warn(f"rbl response code configuration error: {text}")
        return ev.reject(POLICY, 450, "4.7.1", refusals.SERVICE_UNAVAILABLE)
    dsn, detail = refusals.split_dsn(text[4:], "4.7.1")
    return ev.reject(POLICY, int(text[:3]), refusals.dsn_fix(dsn, reply_class),
                     detail or refusals.SERVICE_UNAVAILABLE)


_REFERENCE = re.compile(r"\$(?:\{(\w+)(?:([?:])((?:[^{}]|\{[^{}]*\})*))?\}|(\w+))")


def expand_template(template: str, variables: dict[str, str]) -> str:
    """Postfix's $name, ${name}, ${name?text} (text when set) and ${name:text} (text when unset)."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        value = variables.get(name, "")
        operator, text = match.group(2), match.group(3)
        if operator == "?":
            return expand_template(text, variables) if value else ""
        if operator == ":":
            return "" if value else expand_template(text, variables)
        return value
    return _REFERENCE.sub(replace, template)


# --- Policy delegation

async def check_policy_service(ev: Evaluation, call: Call) -> int:
    client = ev.settings.policy_clients.get(call.argument)
    if client is None:
        ev.warn(f"check_policy_service: no client endpoint for server {call.argument}")
        ev.server_error()
    facts = ev.facts
    stage = facts.stage
    attributes = {
        "request": "smtpd_access_policy", "protocol_state": stage, "protocol_name": facts.protocol,
        "client_address": facts.client_address, "client_name": facts.client_name,
        "client_port": facts.client_port, "reverse_client_name": facts.reverse_client_name,
        "server_address": facts.server_address, "server_port": facts.server_port,
        "helo_name": facts.helo_name or "", "sender": facts.sender or "", "recipient": facts.recipient or "",
        "recipient_count": facts.recipient_count if stage in ("DATA", "END-OF-MESSAGE") else 0,
        "queue_id": facts.queue_id, "instance": facts.instance, "size": facts.size, "etrn_domain": "",
        "stress": "", "sasl_method": facts.sasl_method, "sasl_username": facts.sasl_username,
        "sasl_sender": facts.sasl_sender, "ccert_subject": "", "ccert_issuer": "", "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "", "encryption_protocol": facts.tls_protocol,
        "encryption_cipher": facts.tls_cipher, "encryption_keysize": facts.tls_cipher_bits,
        "policy_context": client.settings.policy_context, "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }
    try:
        action = await client.query(attributes)
    except PolicyServiceError as problem:
        ev.warn(str(problem))
        action = client.settings.default_action
    return await ev.table_result(call.argument, action, "policy query", call.reply_name, call.reply_class,
                                 call.default_access)


# --- Restrictions on the sender or the recipient address, when there is one

def _on_address(reply_class: str, step):
    """A restriction that judges the sender (or the recipient) with `step(ev, call, address, reply_class)`."""
    async def restriction(ev: Evaluation, call: Call) -> int:
        address = ev.facts.sender if reply_class == refusals.SENDER else ev.facts.recipient
        if not address:
            return DUNNO
        return await step(ev, call, address, reply_class)
    return restriction


async def _unknown_address_step(ev: Evaluation, call: Call, address: str, reply_class: str) -> int:
    return await _unknown_address(ev, address, reply_class)


async def _non_fqdn_step(ev: Evaluation, call: Call, address: str, reply_class: str) -> int:
    return _non_fqdn_address(ev, address, reply_class)


async def _unlisted_step(ev: Evaluation, call: Call, address: str, reply_class: str) -> int:
    return await unlisted_address(ev, address, reply_class)


reject_unknown_sender_domain = _on_address(refusals.SENDER, _unknown_address_step)
reject_non_fqdn_sender = _on_address(refusals.SENDER, _non_fqdn_step)
reject_rhsbl_sender = _on_address(refusals.SENDER, _rhsbl)
reject_unlisted_sender = _on_address(refusals.SENDER, _unlisted_step)
reject_unknown_recipient_domain = _on_address(refusals.RECIPIENT, _unknown_address_step)
reject_non_fqdn_recipient = _on_address(refusals.RECIPIENT, _non_fqdn_step)
reject_rhsbl_recipient = _on_address(refusals.RECIPIENT, _rhsbl)
reject_unlisted_recipient = _on_address(refusals.RECIPIENT, _unlisted_step)


HANDLERS = {
    "permit": permit, "reject": reject, "defer": defer, "defer_if_permit": defer_if_permit,
    "defer_if_reject": defer_if_reject, "sleep": sleep, "reject_unauth_pipelining": reject_unauth_pipelining,
    "reject_plaintext_session": reject_plaintext_session, "check_policy_service": check_policy_service,
    "permit_mynetworks": permit_mynetworks,
    "permit_sasl_authenticated": permit_sasl_authenticated,
    "reject_unknown_client_hostname": reject_unknown_client_hostname,
    "reject_unknown_client": reject_unknown_client_hostname,
    "reject_unknown_reverse_client_hostname": reject_unknown_reverse_client_hostname,
    "check_client_access": check_client_access, "check_reverse_client_access": check_reverse_client_access,
    "check_sasl_access": check_sasl_access,
    "reject_rbl_client": reject_rbl_client, "reject_rbl": reject_rbl_client, "permit_dnswl_client": permit_dnswl_client,
    "reject_rhsbl_client": reject_rhsbl_client, "reject_rhsbl_reverse_client": reject_rhsbl_reverse_client,
    "check_helo_access": check_helo_access, "reject_invalid_helo_hostname": reject_invalid_helo_hostname,
    "reject_invalid_hostname": reject_invalid_helo_hostname,
    "reject_non_fqdn_helo_hostname": reject_non_fqdn_helo_hostname,
    "reject_non_fqdn_hostname": reject_non_fqdn_helo_hostname,
    "reject_unknown_helo_hostname": reject_unknown_helo_hostname,
    "reject_unknown_hostname": reject_unknown_helo_hostname, "reject_rhsbl_helo": reject_rhsbl_helo,
    "check_sender_access": check_sender_access, "reject_unknown_sender_domain": reject_unknown_sender_domain,
    "reject_non_fqdn_sender": reject_non_fqdn_sender, "reject_rhsbl_sender": reject_rhsbl_sender,
    "reject_unlisted_sender": reject_unlisted_sender,
    "reject_sender_login_mismatch": reject_sender_login_mismatch,
    "reject_authenticated_sender_login_mismatch": reject_authenticated_sender_login_mismatch,
    "reject_known_sender_login_mismatch": reject_known_sender_login_mismatch,
    "reject_unauthenticated_sender_login_mismatch": reject_unauthenticated_sender_login_mismatch,
    "check_recipient_access": check_recipient_access, "permit_auth_destination": permit_auth_destination,
    "reject_unauth_destination": reject_unauth_destination, "defer_unauth_destination": defer_unauth_destination,
    "reject_unknown_recipient_domain": reject_unknown_recipient_domain,
    "reject_non_fqdn_recipient": reject_non_fqdn_recipient, "reject_rhsbl_recipient": reject_rhsbl_recipient,
    "reject_unlisted_recipient": reject_unlisted_recipient, "check_recipient_maps": reject_unlisted_recipient,
    "reject_multi_recipient_bounce": reject_multi_recipient_bounce,
}
