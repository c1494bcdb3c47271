"""The queue manager: take due mail, deliver it, record what happened.

What Postfix logs for each recipient attempt (the delivery agent's line):
    TRANSPORT[..]: QUEUEID: to=<rcpt>, relay=R, delay=D, delays=a/b/c/d, dsn=X.Y.Z, status=STATUS (reason)
and qmgr's `QUEUEID: removed` once no recipient is left. A temporary failure
leaves the message in the deferred queue until now + its age, kept between
minimal_backoff_time and maximal_backoff_time.

Everything here is real (RAM queue, group committer, cleanup, resolver, master.cf,
Transports with its discard and error agents) except the SMTP client: a
scripted agent stands at the delivery-agent boundary, so the scheduler's
policy can be checked without a network. Time is controlled through the
settings and through arrival times in the past, never by sleeping.

The delay format is Postfix's format_tv(..., sig_dig = 2, max_dig =
delay_logging_resolution_limit = 2): postconf(5) says "Large delay values
are rounded off to an integral number of seconds; delay values below the
delay_logging_resolution_limit are logged as "0", and delay values under
100s are logged with at most two-digit precision", trailing zeros dropped.
"""

import asyncio
import dataclasses
import re
import time
from contextlib import contextmanager

import pytest

from mailferry.cleanup.cleanup import CleanupSettings
from mailferry.cleanup.service import CleanupService
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
from mailferry.delivery import outcome
from mailferry.delivery.agents import Transports
from mailferry.message import (BOUNCED, DEFERRED, DEFERRED_QUEUE, SENT, ClientInfo, NewMessage,
                               Recipient)
from mailferry.queue import GroupCommitter, RamQueueStore
from mailferry.qmgr import scheduler as scheduler_module
from mailferry.qmgr.scheduler import Scheduler, SchedulerSettings, _seconds
from mailferry.routing.resolve import Resolver, RoutingSettings
from mailferry.tables import open_maps
from tests.unit import listlog

LOCAL = "example.com"
SENDER = "alice@example.com"      # a local sender: its notices are discarded when they run
CONTENT = b"Received: by mx.example.com\r\nSubject: s\r\nMessage-ID: <m@example.com>\r\n\r\nbody\r\n"

DELIVERY_LINE = re.compile(
    r"^(?P<id>[0-9A-Za-z]+): to=<(?P<rcpt>[^>]*)>, relay=(?P<relay>\S+), delay=(?P<delay>[0-9.]+), "
    r"delays=(?P<a>[0-9.]+)/(?P<b>[0-9.]+)/(?P<c>[0-9.]+)/(?P<d>[0-9.]+), dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}), "
    r"status=(?P<status>\w+) \((?P<reason>.*)\)$")

# A stock master.cf, trimmed: relay and other are SMTP clients (scripted below);
# there is no `smtp unix` service, so the default transport is unavailable.
MASTER_CF = """\
smtp      inet  n       -       n       -       -       smtpd
relay     unix  -       -       n       -       -       smtp
other     unix  -       -       n       -       -       smtp
discard   unix  -       -       n       -       -       discard
error     unix  -       -       n       -       -       error
"""

# Routes without tables: example.com is local (discarded); bad.example is a
# relay domain whose mail bounces 5.1.1; everything else goes to `smtp`,
# which has no master.cf service and so defers.
ROUTING = RoutingSettings(local_transport="discard:", relay_transport="error:5.1.1 no such user",
                          relay_domains="bad.example", default_transport="smtp")
# The same, but remote mail goes to the scripted `relay` SMTP client.
SCRIPTED = RoutingSettings(local_transport="discard:", relay_transport="error:5.1.1 no such user",
                           relay_domains="bad.example", default_transport="relay")

FAST = SchedulerSettings(minimal_backoff_time=300, maximal_backoff_time=4000)
CLEANUP = CleanupSettings(myhostname="mx.example.com", myorigin="example.com")


class ListLog(listlog.ListLog):
    def deliveries(self):
        return [(program, DELIVERY_LINE.match(text)) for program, text in self.lines
                if DELIVERY_LINE.match(text)]


class BatchCountingStore(RamQueueStore):
    """The RAM backend, counting the write transactions the committer opens."""

    def __init__(self):
        super().__init__()
        self.transactions = 0

    @contextmanager
    def batch(self):
        self.transactions += 1
        with super().batch():
            yield


class ScriptedAgent:
    """An SMTP client's interface, answering from a script: address -> DeliveryResult
    (sent by default). It records every job it is given: (nexthop, [addresses])."""

    def __init__(self, script=None, gate: asyncio.Event | None = None, fail: Exception | None = None):
        self.script = script or {}
        self.gate = gate
        self.fail = fail
        self.jobs: list[tuple[str, list[str]]] = []
        self.entered = asyncio.Event()
        self.forgotten = 0

    async def deliver(self, job):
        self.jobs.append((job.nexthop, [r.address for r in job.recipients]))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [self.script.get(r.address, outcome.sent("2.0.0", "250 2.0.0 Ok: queued as 4XyZ",
                                                        relay=f"{job.nexthop}[192.0.2.1]:25"))
                for r in job.recipients]

    def addresses(self) -> list[str]:
        return [address for _, addresses in self.jobs for address in addresses]

    def forget_dead_destinations(self) -> None:
        self.forgotten += 1

    def close(self) -> None:
        pass


class ScriptedTransports(Transports):
    """The real Transports (master.cf decides; discard and error answer at once)
    with scripted agents in place of the SMTP clients of the named transports."""

    def __init__(self, master, log, agents: dict[str, ScriptedAgent]):
        super().__init__(None, master, log, dns=None)
        self.agents = agents

    def client(self, transport: str):
        if transport in self.agents:
            return self.agents[transport]
        return super().client(transport)

    def forget_dead_destinations(self) -> None:
        super().forget_dead_destinations()
        for agent in self.agents.values():
            agent.forget_dead_destinations()


class Harness:
    def __init__(self, routing=ROUTING, settings=FAST, agents=None, transport_maps=None,
                 master=MASTER_CF, store=None):
        self.store = store if store is not None else BatchCountingStore()
        self.log = ListLog()
        self.settings = settings
        self.agents = agents or {}
        self.resolver = Resolver(routing, lambda domain: domain == LOCAL, transport_maps)
        self.transports = ScriptedTransports(parse_master_cf(master, "master.cf"), self.log, self.agents)
        self.committer = None
        self.cleanup = None
        self.scheduler = None

    def run(self, scenario):
        async def main():
            self.committer = GroupCommitter(self.store)
            self.cleanup = CleanupService(CLEANUP, self.committer, self.log, lambda address: True,
                                          lambda: self.scheduler.wake())
            self.scheduler = Scheduler(self.store, self.committer, self.cleanup, self.resolver,
                                       self.transports, self.log, self.settings)
            try:
                return await scenario(self)
            finally:
                await self.committer.close()
        return asyncio.run(main())

    def queue(self, *messages: NewMessage) -> list[str]:
        return self.store.insert_many(list(messages))

    async def once(self) -> int:
        if isinstance(self.store, BatchCountingStore):
            self.store.transactions = 0
        return await self.scheduler.run_once()

    def notices(self, origin="bounce"):
        return [m for m in self.store.messages() if m.origin == origin]


def message(*recipients, sender=SENDER, age=0.0, origin="smtp", notify=None):
    return NewMessage(sender=sender, recipients=[Recipient(r, notify=notify) for r in recipients],
                      content=CONTENT, client=ClientInfo(), origin=origin,
                      arrival_time=time.time() - age if age else 0.0)


def single_pass(*messages, **harness):
    """Queue `messages`, run the scheduler once; return (harness, ids)."""
    h = Harness(**harness)
    ids = h.queue(*messages)

    async def scenario(h):
        assert await h.once() == len(messages)
    h.run(scenario)
    return h, ids


# --- discard, error, an unavailable transport


def test_a_discarded_recipient_is_sent_and_the_message_removed():
    h, [queue_id] = single_pass(message("bob@example.com"))
    assert h.store.get(queue_id) is None
    [(program, line)] = h.log.deliveries()
    assert program == "discard"
    assert (line["id"], line["rcpt"], line["relay"], line["dsn"], line["status"], line["reason"]) == \
        (queue_id, "bob@example.com", "none", "2.0.0", "sent", "discarded")
    assert (line["b"], line["c"], line["d"]) == ("0", "0", "0")    # no time in qmgr, no connection
    assert h.log.lines[-1] == ("qmgr", f"{queue_id}: removed")
    assert h.store.messages() == []


def test_every_recipient_gets_its_own_line_and_the_message_is_removed_once():
    h, [queue_id] = single_pass(message("a@example.com", "b@example.com"))
    assert [line["rcpt"] for _, line in h.log.deliveries()] == ["a@example.com", "b@example.com"]
    assert h.log.texts().count(f"{queue_id}: removed") == 1
    assert h.store.messages() == []


def test_a_rewritten_recipient_is_logged_with_its_original_as_orig_to():
    """Postfix: `to=<final>, orig_to=<original>, relay=...`; cleanup keeps the original as ORCPT."""
    rewritten = NewMessage(sender=SENDER, content=CONTENT, client=ClientInfo(), origin="smtp", recipients=[
        Recipient("bob@example.com", orcpt="rfc822;Sales@virtual.example"),
        Recipient("carol@example.com", orcpt="rfc822;carol@example.com"),   # not rewritten
        Recipient("dave@example.com", orcpt="x-foo;sales@virtual.example"),  # not an address type
        Recipient("erin@example.com")])
    h, [queue_id] = single_pass(rewritten)
    lines = [text for program, text in h.log.lines if program == "discard"]
    assert lines[0].startswith(f"{queue_id}: to=<bob@example.com>, orig_to=<Sales@virtual.example>, relay=none, ")
    assert [line.split(", relay=")[0] for line in lines[1:]] == [
        f"{queue_id}: to=<carol@example.com>", f"{queue_id}: to=<dave@example.com>", f"{queue_id}: to=<erin@example.com>"]


def test_an_error_route_with_a_status_code_bounces_with_that_code():
    h, [queue_id] = single_pass(message("bob@bad.example"))
    [(program, line)] = h.log.deliveries()
    assert program == "error"
    assert (line["dsn"], line["status"], line["reason"]) == ("5.1.1", "bounced", "no such user")
    assert h.store.get(queue_id) is None
    assert f"{queue_id}: removed" in h.log.texts()


def test_an_error_route_without_text_still_says_why():
    h, _ = single_pass(message("bob@example.com"), routing=RoutingSettings(local_transport="error:"))
    [(_, line)] = h.log.deliveries()
    assert (line["status"], line["dsn"]) == ("bounced", "5.0.0")
    assert line["reason"]


def test_an_unavailable_transport_defers_until_the_minimal_backoff():
    before = time.time()
    h, [queue_id] = single_pass(message("carol@example.org"))
    after = time.time()
    [(program, line)] = h.log.deliveries()
    assert program == "smtp"
    assert (line["status"], line["dsn"]) == ("deferred", "4.3.0")
    assert line["reason"] == "mail transport unavailable: no master.cf service named smtp (type unix)"
    deferred = h.store.get(queue_id)
    assert deferred.queue == DEFERRED_QUEUE
    assert deferred.attempts == 1
    assert (deferred.recipients[0].status, deferred.recipients[0].dsn) == (DEFERRED, "4.3.0")
    # A new message's age is below minimal_backoff_time: that is the wait.
    assert before + 300 <= deferred.next_attempt <= after + 300
    assert f"{queue_id}: removed" not in h.log.texts()
    assert h.notices() == []


def test_the_backoff_is_the_message_age_between_the_two_limits():
    young, middle, old = message("y@example.org"), message("m@example.org", age=1000), \
        message("o@example.org", age=10000)
    before = time.time()
    h, [young_id, middle_id, old_id] = single_pass(young, middle, old)
    after = time.time()
    arrival = h.store.get(middle_id).arrival_time
    assert before + 300 <= h.store.get(young_id).next_attempt <= after + 300          # minimal_backoff_time
    # now + (now - arrival), with now somewhere in [before, after]
    assert 2 * before - arrival <= h.store.get(middle_id).next_attempt <= 2 * after - arrival
    assert before + 4000 <= h.store.get(old_id).next_attempt <= after + 4000          # maximal_backoff_time
    assert {m.queue for m in h.store.messages()} == {DEFERRED_QUEUE}


def test_deferred_mail_is_not_due_again_before_its_backoff():
    h = Harness()
    h.queue(message("carol@example.org"))

    async def scenario(h):
        return await h.once(), await h.once()
    assert h.run(scenario) == (1, 0)
    assert len(h.log.deliveries()) == 1


# --- failure notices (DSN)


def test_a_bounced_recipient_gets_a_failure_notice_to_the_sender():
    h, [queue_id] = single_pass(message("bob@bad.example"))
    assert h.store.get(queue_id) is None
    [notice] = h.store.messages()
    assert (notice.sender, [r.address for r in notice.recipients], notice.origin) == ("", [SENDER], "bounce")
    content = h.store.content(notice.queue_id)
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in content
    assert b"Subject: Undelivered Mail Returned to Sender" in content
    assert b"Final-Recipient: rfc822; bob@bad.example" in content
    assert b"Status: 5.1.1" in content
    texts = h.log.texts()
    assert f"{queue_id}: sender non-delivery notification: {notice.queue_id}" in texts
    assert texts[-1] == f"{queue_id}: removed"
    assert texts.index(f"{queue_id}: sender non-delivery notification: {notice.queue_id}") < len(texts) - 1


def test_the_failure_notice_is_delivered_on_the_next_run():
    h = Harness()
    h.queue(message("bob@bad.example"))

    async def scenario(h):
        return await h.once(), await h.once()
    assert h.run(scenario) == (1, 1)
    assert h.store.messages() == []
    assert [(line["rcpt"], line["status"]) for _, line in h.log.deliveries()] == [
        ("bob@bad.example", "bounced"), (SENDER, "sent")]


def test_notify_never_gets_no_failure_notice():
    h, [queue_id] = single_pass(message("bob@bad.example", notify="NEVER"))
    assert h.store.messages() == []
    assert not [t for t in h.log.texts() if "notification" in t]
    assert h.log.texts()[-1] == f"{queue_id}: removed"


def test_mail_from_the_null_sender_is_never_bounced():
    h, [queue_id] = single_pass(message("bob@bad.example", sender=""))
    assert h.store.messages() == []
    assert not [t for t in h.log.texts() if "notification" in t]
    assert h.log.texts()[-1] == f"{queue_id}: removed"


# --- double bounces


def test_a_bouncing_notice_is_dropped_by_default_as_postfix_does():
    # Postfix's notify_classes default (resource, software) has neither bounce nor 2bounce.
    h, [queue_id] = single_pass(message("bob@bad.example", sender="", origin="bounce"))
    assert h.store.get(queue_id) is None
    assert h.store.messages() == []
    assert not [t for t in h.log.texts() if "notification" in t]


def test_a_bouncing_notice_goes_once_to_the_postmaster():
    settings = SchedulerSettings(double_bounce_recipient="hostmaster@example.com",
                                 notify_classes=frozenset({"2bounce"}))
    h, [queue_id] = single_pass(message("bob@bad.example", sender="", origin="bounce"), settings=settings)
    assert h.store.get(queue_id) is None
    [copy] = h.store.messages()
    assert (copy.sender, [r.address for r in copy.recipients], copy.origin) == \
        ("double-bounce", ["hostmaster@example.com"], "2bounce")
    content = h.store.content(copy.queue_id)
    assert b"Subject: Postmaster Copy: Undelivered Mail" in content
    assert b"multipart/report" in content
    assert f"{queue_id}: postmaster non-delivery notification: {copy.queue_id}" in h.log.texts()


def test_a_failing_postmaster_copy_is_dropped_not_bounced_again():
    h = Harness(settings=dataclasses.replace(FAST, notify_classes=frozenset({"2bounce"})))
    h.queue(message("bob@bad.example", sender="", origin="bounce"))

    async def scenario(h):
        await h.once()
        [copy] = h.notices("2bounce")
        # The postmaster's mailbox fails too: the copy bounces and that is the end.
        h.resolver = Resolver(RoutingSettings(local_transport="error:5.1.1 no mailbox"), lambda d: True)
        h.scheduler.resolver = h.resolver
        assert await h.once() == 1
        return copy.queue_id
    copy_id = h.run(scenario)
    assert h.store.messages() == []
    assert h.log.texts()[-1] == f"{copy_id}: removed"
    assert not [t for t in h.log.texts() if t.startswith(f"{copy_id}: ") and "notification" in t]
    assert [w for w in h.log.warnings() if copy_id in w and "discarding undeliverable postmaster" in w]


# --- several recipients


def test_mixed_outcomes_bounce_only_the_bounced_and_retry_only_the_deferred():
    agent = ScriptedAgent({"later@example.net": outcome.deferred("4.4.1", "connect to mx: timed out"),
                           "gone@example.net": outcome.bounced("5.1.1", "host mx[192.0.2.1] said: 550 5.1.1 "
                                                               "no such user (in reply to RCPT TO command)")})
    h = Harness(routing=SCRIPTED, agents={"relay": agent})
    [queue_id] = h.queue(message("ok@example.net", "later@example.net", "gone@example.net"))

    async def scenario(h):
        await h.once()
        kept = h.store.get(queue_id)
        [notice] = h.notices()
        content = h.store.content(notice.queue_id)
        h.store.flush([queue_id])
        await h.once()       # the original again, and the notice (discarded: the sender is local)
        return kept, content
    kept, content = h.run(scenario)
    assert kept.queue == DEFERRED_QUEUE
    assert [(r.address, r.status) for r in kept.recipients] == [
        ("ok@example.net", SENT), ("later@example.net", DEFERRED), ("gone@example.net", BOUNCED)]
    assert b"Final-Recipient: rfc822; gone@example.net" in content
    assert b"later@example.net" not in content and b"ok@example.net" not in content
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in content
    # One job for the three on the first run; only the deferred one on the second.
    assert agent.jobs == [("example.net", ["ok@example.net", "later@example.net", "gone@example.net"]),
                          ("example.net", ["later@example.net"])]
    again = h.store.get(queue_id)
    assert again.attempts == 2
    assert [r.status for r in again.recipients] == [SENT, DEFERRED, BOUNCED]
    assert len([t for t in h.log.texts() if "sender non-delivery notification" in t]) == 1
    assert h.store.messages() == [again]
    relays = {line["rcpt"]: line["relay"] for _, line in h.log.deliveries()}
    assert relays["ok@example.net"] == "example.net[192.0.2.1]:25"


def test_recipients_with_the_same_route_are_one_job():
    relay, other = ScriptedAgent(), ScriptedAgent()
    routing = RoutingSettings(local_transport="discard:", default_transport="relay",
                              relay_transport="other", relay_domains="two.example")
    h, [queue_id] = single_pass(
        message("a@one.example", "b@one.example", "c@two.example", "d@three.example", "e@example.com"),
        routing=routing, agents={"relay": relay, "other": other})
    assert sorted(relay.jobs) == [("one.example", ["a@one.example", "b@one.example"]),
                                  ("three.example", ["d@three.example"])]
    assert other.jobs == [("two.example", ["c@two.example"])]
    assert h.store.get(queue_id) is None
    assert sorted(line["rcpt"] for _, line in h.log.deliveries()) == [
        "a@one.example", "b@one.example", "c@two.example", "d@three.example", "e@example.com"]


def test_the_same_next_hop_on_two_transports_is_two_jobs_and_one_transport_one_job():
    relay, other = ScriptedAgent(), ScriptedAgent()
    routing = RoutingSettings(local_transport="discard:", default_transport="relay",
                              relay_transport="other", relay_domains="two.example",
                              relayhost="[mx.example.net]")
    single_pass(message("a@one.example", "b@four.example", "c@two.example"),
                routing=routing, agents={"relay": relay, "other": other})
    assert relay.jobs == [("[mx.example.net]", ["a@one.example", "b@four.example"])]
    assert other.jobs == [("[mx.example.net]", ["c@two.example"])]


def test_a_failing_delivery_agent_defers_its_recipients():
    agent = ScriptedAgent(fail=RuntimeError("bug"))
    h, [queue_id] = single_pass(message("a@one.example", "b@example.com"), routing=SCRIPTED,
                                agents={"relay": agent})
    kept = h.store.get(queue_id)
    assert [(r.status, r.dsn) for r in kept.recipients] == [(DEFERRED, "4.3.0"), (SENT, "2.0.0")]
    assert kept.recipients[0].reason == "delivery agent failed: RuntimeError"
    assert [w for w in h.log.warnings() if queue_id in w and "delivery agent failed" in w]


def test_a_notice_the_queue_cannot_take_does_not_make_sent_recipients_go_again():
    agent = ScriptedAgent()
    # A full queue (as a full disk would be): the message fits, its failure notice does not.
    h = Harness(routing=SCRIPTED, agents={"relay": agent}, store=RamQueueStore(max_messages=1))
    [queue_id] = h.queue(message("ok@one.example", "gone@bad.example"))

    async def scenario(h):
        await h.once()
        await h.once()
    h.run(scenario)
    assert agent.addresses() == ["ok@one.example"]          # delivered once, not once per scan
    kept = h.store.get(queue_id)
    assert kept.recipients[0].status == SENT


# --- queue lifetime


def test_a_message_past_the_queue_lifetime_bounces_as_expired():
    settings = SchedulerSettings(maximal_queue_lifetime=3600, bounce_queue_lifetime=3600)
    h, [queue_id] = single_pass(message("carol@example.org", age=7200), settings=settings)
    assert h.store.get(queue_id) is None
    [notice] = h.notices()
    content = h.store.content(notice.queue_id)
    assert b"Final-Recipient: rfc822; carol@example.org" in content
    assert b"Status: 5.3.0" in content
    assert b"mail transport unavailable" in content
    texts = h.log.texts()
    assert f"{queue_id}: from=<{SENDER}>, status=expired, returned to sender" in texts
    assert f"{queue_id}: sender non-delivery notification: {notice.queue_id}" in texts
    assert texts[-1] == f"{queue_id}: removed"


def test_a_message_within_the_queue_lifetime_waits():
    settings = SchedulerSettings(maximal_queue_lifetime=3600, bounce_queue_lifetime=3600)
    h, [queue_id] = single_pass(message("carol@example.org", age=1800), settings=settings)
    assert h.store.get(queue_id).queue == DEFERRED_QUEUE
    assert h.notices() == []
    assert not [t for t in h.log.texts() if "expired" in t]


def test_bounce_queue_lifetime_applies_to_mail_from_the_null_sender():
    settings = SchedulerSettings(maximal_queue_lifetime=5 * 86400, bounce_queue_lifetime=3600)
    h, [null_id, normal_id] = single_pass(message("carol@example.org", sender="", age=7200),
                                          message("dave@example.org", age=7200), settings=settings)
    assert h.store.get(null_id) is None
    assert f"{null_id}: from=<>, status=expired, returned to sender" in h.log.texts()
    assert h.store.get(normal_id).queue == DEFERRED_QUEUE
    assert h.notices() == []           # nothing to return mail from <> to


# --- delay warnings


def test_a_delay_warning_is_sent_once():
    settings = SchedulerSettings(delay_warning_time=3600)
    h = Harness(settings=settings)
    [queue_id] = h.queue(message("carol@example.org", age=7200))

    async def scenario(h):
        await h.once()
        [notice] = h.notices()
        content = h.store.content(notice.queue_id)
        warned = h.store.get(queue_id).delay_warned
        h.store.flush([queue_id])
        await h.once()     # the original again (still deferred), and the notice (discarded)
        return notice, content, warned
    notice, content, warned = h.run(scenario)
    assert warned is True
    assert (notice.sender, [r.address for r in notice.recipients]) == ("", [SENDER])
    assert b"Subject: Delayed Mail (still being retried)" in content
    assert b"Action: delayed" in content
    assert h.store.get(queue_id).attempts == 2
    assert h.store.get(queue_id).delay_warned is True
    assert h.store.messages() == [h.store.get(queue_id)]      # no second notice
    assert len([t for t in h.log.texts() if "sender delay notification" in t]) == 1


def test_no_delay_warning_before_delay_warning_time():
    h, _ = single_pass(message("carol@example.org", age=600),
                       settings=SchedulerSettings(delay_warning_time=3600))
    assert h.notices() == []


RETRY_MASTER_CF = MASTER_CF + "retry     unix  -       -       n       -       -       error\n"


def test_a_retry_route_on_the_stock_master_cf_waits():
    h, [queue_id] = single_pass(message("bob@example.com"),
                                routing=RoutingSettings(local_transport="retry:mailbox migration"),
                                master=RETRY_MASTER_CF)
    [(program, line)] = h.log.deliveries()
    assert (program, line["status"], line["dsn"], line["reason"]) == \
        ("retry", "deferred", "4.0.0", "mailbox migration")
    assert h.store.get(queue_id).queue == DEFERRED_QUEUE
    assert h.notices() == []


def test_a_retry_route_without_a_master_cf_service_waits():
    h, [queue_id] = single_pass(message("bob@example.com"),
                                routing=RoutingSettings(local_transport="retry:4.2.1 mailbox migration"))
    [(program, line)] = h.log.deliveries()
    assert (program, line["status"], line["dsn"], line["reason"]) == \
        ("retry", "deferred", "4.2.1", "mailbox migration")
    assert h.store.get(queue_id).queue == DEFERRED_QUEUE


# --- routing errors


def test_a_transport_table_failure_defers_with_4_3_0(unreachable_ldap):
    h, [queue_id] = single_pass(message("carol@example.org"), transport_maps=open_maps(unreachable_ldap))
    [(program, line)] = h.log.deliveries()
    assert program == "qmgr"
    assert (line["status"], line["dsn"]) == ("deferred", "4.3.0")
    assert "transport_maps lookup of carol@example.org failed" in line["reason"]
    kept = h.store.get(queue_id)
    assert kept.queue == DEFERRED_QUEUE
    assert (kept.recipients[0].status, kept.recipients[0].dsn) == (DEFERRED, "4.3.0")


# --- the queue scan


def test_a_message_in_flight_is_not_taken_again():
    gate = asyncio.Event()
    agent = ScriptedAgent(gate=gate)
    h = Harness(routing=SCRIPTED, agents={"relay": agent})
    [queue_id] = h.queue(message("bob@one.example"))

    async def scenario(h):
        assert await h.scheduler._take_due() == 1
        await asyncio.wait_for(agent.entered.wait(), 2)
        # Still due as far as the store knows; only the scheduler's exclusion keeps it back.
        assert [m.queue_id for m in h.store.due(time.time(), 10)] == [queue_id]
        assert await h.scheduler._take_due() == 0
        gate.set()
        await h.scheduler.run_once()
    h.run(scenario)
    assert agent.jobs == [("one.example", ["bob@one.example"])]
    assert h.store.get(queue_id) is None
    assert h.log.texts().count(f"{queue_id}: removed") == 1


def test_mail_left_for_lack_of_room_goes_as_soon_as_room_is_made(monkeypatch):
    """Content in flight is capped (IN_FLIGHT_BYTES): the second message waits for the
    first to finish, and is taken then, not at the next queue_run_delay."""
    gate = asyncio.Event()
    agent = ScriptedAgent(gate=gate)
    h = Harness(routing=SCRIPTED, agents={"relay": agent})
    first, second = h.queue(message("a@one.example"), message("b@two.example"))
    monkeypatch.setattr(scheduler_module, "IN_FLIGHT_BYTES", 1)

    async def scenario(h):
        loop = asyncio.create_task(h.scheduler.run(idle_seconds=3600))
        await asyncio.wait_for(agent.entered.wait(), 2)
        assert [job[0] for job in agent.jobs] == ["one.example"]   # one message at a time
        gate.set()
        for _ in range(200):
            if h.store.get(second) is None:
                break
            await asyncio.sleep(0.01)
        h.scheduler.stop()
        await loop
    h.run(scenario)
    assert [job[0] for job in agent.jobs] == ["one.example", "two.example"]
    assert h.store.get(first) is None and h.store.get(second) is None


def test_mail_queued_during_a_scan_is_taken_without_waiting_for_the_timer():
    """A commit's wake-up that comes while the loop is scanning (the scan's query has
    already run) is not lost: the message goes now, not after queue_run_delay."""
    agent = ScriptedAgent()
    h = Harness(routing=SCRIPTED, agents={"relay": agent})
    h.queue(message("a@one.example"))
    scan = None

    async def scenario(h):
        nonlocal scan
        scan = h.scheduler._take_due
        late = []

        async def scan_then_queue_one_more():
            taken = await scan()
            if not late:
                late.extend(h.queue(message("b@two.example")))
                h.scheduler.wake()
            return taken
        h.scheduler._take_due = scan_then_queue_one_more
        loop = asyncio.create_task(h.scheduler.run(idle_seconds=3600))
        try:
            while len(agent.jobs) < 2:
                agent.entered.clear()
                await asyncio.wait_for(agent.entered.wait(), 10)
        finally:
            h.scheduler.stop()
            h.scheduler.wake()
            await loop
    h.run(scenario)
    assert [job[0] for job in agent.jobs] == ["one.example", "two.example"]


def test_flush_makes_the_clients_forget_dead_destinations():
    agent = ScriptedAgent()
    h = Harness(routing=SCRIPTED, agents={"relay": agent})

    async def scenario(h):
        h.scheduler.flush()
    h.run(scenario)
    assert agent.forgotten == 1


# --- the committer


def test_a_whole_run_is_written_in_few_transactions():
    h = Harness()
    ids = h.queue(*[message(f"u{i}@example.com") for i in range(50)])

    async def scenario(h):
        return await h.once(), h.store.transactions
    taken, transactions = h.run(scenario)
    assert taken == 50
    assert 1 <= transactions <= 3
    assert h.store.stats["remove"] == 50
    assert h.store.stats["due"] == 1 and h.store.stats["contents"] == 1
    assert h.store.messages() == []
    assert sorted(line["id"] for _, line in h.log.deliveries()) == sorted(ids)


# --- log lines: each service its own, notices through cleanup

QUEUE_ID = "6C8A2F41B3D7"
REMOTE = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net")


def smtp_message(sender="alice@example.net", recipients=("bob@example.org", "carol@example.org")):
    return NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients],
                      content=b"Subject: s\r\nMessage-ID: <m1@example.net>\r\n\r\nbody\r\n",
                      client=REMOTE, origin="smtp")


def test_a_message_from_cleanup_is_logged_message_id_then_queue_active_in_postfix_form():
    # Postfix: cleanup[..]: ID: message-id=<...>, then qmgr[..]: ID: from=<sender>, size=N,
    # nrcpt=N (queue active) when qmgr takes the message into its active set.
    h = Harness()

    async def scenario(h):
        await h.cleanup.enqueue(smtp_message(), QUEUE_ID)
        size = len(h.store.content(QUEUE_ID))
        await h.once()
        return size
    size = h.run(scenario)
    assert h.log.lines[:2] == [
        ("cleanup", f"{QUEUE_ID}: message-id=<m1@example.net>"),
        ("qmgr", f"{QUEUE_ID}: from=<alice@example.net>, size={size}, nrcpt=2 (queue active)"),
    ]


def test_the_logged_sender_is_the_qualified_one_and_the_null_sender_is_empty_brackets():
    h = Harness()

    async def scenario(h):
        await h.cleanup.enqueue(smtp_message(sender="alice"), "AAAAAAAAAAA1")
        await h.cleanup.enqueue(smtp_message(sender=""), "AAAAAAAAAAA2")
        await h.once()
    h.run(scenario)
    active = {text.split(":")[0]: text for program, text in h.log.lines if text.endswith("(queue active)")}
    assert active["AAAAAAAAAAA1"].startswith("AAAAAAAAAAA1: from=<alice@example.com>, ")
    assert active["AAAAAAAAAAA2"].startswith("AAAAAAAAAAA2: from=<>, ")


def test_queue_active_is_logged_each_time_the_message_enters_the_active_set():
    gate = asyncio.Event()
    agent = ScriptedAgent({"later@one.example": outcome.deferred("4.4.1", "connect to mx: timed out")},
                          gate=gate)
    h = Harness(routing=SCRIPTED, agents={"relay": agent})
    [queue_id] = h.queue(message("later@one.example", "ok@example.com"))

    async def scenario(h):
        assert await h.scheduler._take_due() == 1
        await asyncio.wait_for(agent.entered.wait(), 2)
        assert await h.scheduler._take_due() == 0      # in flight: not entered again
        gate.set()
        await h.scheduler.run_once()
        h.store.flush([queue_id])                      # the retry
        await h.once()
    h.run(scenario)
    size = len(CONTENT)
    active = [(program, text) for program, text in h.log.lines if text.endswith("(queue active)")]
    # nrcpt is the message's recipient count, done ones included, as Postfix's qmgr reads it.
    assert active == [("qmgr", f"{queue_id}: from=<{SENDER}>, size={size}, nrcpt=2 (queue active)")] * 2


def test_a_notice_enters_through_cleanup_and_each_service_logs_its_own_line():
    h = Harness()
    [queue_id] = h.queue(message("bob@bad.example"))

    async def scenario(h):
        await h.once()
        [notice] = h.notices()
        first_run = list(h.log.lines)
        content = h.store.content(notice.queue_id)
        await h.once()     # the notice itself (to a local sender: discarded)
        return notice, first_run, content
    notice, first_run, content = h.run(scenario)
    message_id = re.search(rb"\r\nMessage-Id: (<[^>]+>)\r\n", content).group(1).decode()
    settled = [line for line in first_run if not DELIVERY_LINE.match(line[1])][1:]   # after (queue active)
    assert settled == [
        ("cleanup", f"{notice.queue_id}: message-id={message_id}"),
        ("bounce", f"{queue_id}: sender non-delivery notification: {notice.queue_id}"),
        ("qmgr", f"{queue_id}: removed"),
    ]
    assert ("qmgr", f"{notice.queue_id}: from=<>, size={len(content)}, nrcpt=1 (queue active)") \
        in h.log.lines[len(first_run):]


def test_a_notice_and_the_outcome_that_caused_it_are_committed_in_one_transaction():
    h = Harness()
    [queue_id] = h.queue(message("bob@bad.example"))

    async def scenario(h):
        await h.once()
        return h.store.transactions
    assert h.run(scenario) == 1
    assert h.store.get(queue_id) is None
    assert [m.origin for m in h.store.messages()] == ["bounce"]


# --- configuration


def config_of(text):
    return Config("/nonexistent", parse_main_cf(text, "/nonexistent/main.cf"))


def test_from_config_reads_qmgr_settings_and_reload_replaces_them_and_the_agents():
    master = parse_master_cf(MASTER_CF, "master.cf")
    h = Harness()

    async def scenario(h):
        scheduler = Scheduler.from_config(config_of("minimal_backoff_time = 10s\n"), master, h.store,
                                          h.committer, h.cleanup, h.log)
        before = (scheduler.settings.minimal_backoff_time, scheduler.transports)
        scheduler.reload(config_of("minimal_backoff_time = 20s\nqmgr_message_active_limit = 7\n"), master)
        return before, scheduler
    (backoff, old_agents), scheduler = h.run(scenario)
    assert backoff == 10
    assert (scheduler.settings.minimal_backoff_time, scheduler.settings.active_limit) == (20, 7)
    assert scheduler.transports is not old_agents


# --- the delay format


@pytest.mark.parametrize("value, text", [
    (0.0, "0"),
    (0.004, "0"),          # below the 2-decimal resolution
    (0.006, "0.01"),
    (0.1, "0.1"),          # trailing zeros dropped
    (0.123, "0.12"),
    (0.5, "0.5"),
    (2.5, "2.5"),
    (3.0, "3"),
    (10.0, "10"),
    (12.4, "12"),
    (250.0, "250"),
    (1e-7, "0"),           # never scientific notation
    (123456789.0, "123456789"),
])
def test_delay_format(value, text):
    assert _seconds(value) == text


@pytest.mark.parametrize("value, text", [
    (1.23, "1.2"),         # two significant digits between 1 and 10 s
    (5.06, "5.1"),
    (9.99, "10"),
    (10.6, "11"),          # rounded, not truncated, to whole seconds
    (99.9, "100"),
])
def test_delay_format_has_two_significant_digits_and_rounds_as_postfix_does(value, text):
    assert _seconds(value) == text


def test_a_negative_delay_from_a_clock_step_is_logged_as_zero():
    assert _seconds(-0.5) == "0"


def test_the_log_line_shows_the_message_age():
    h, _ = single_pass(message("bob@example.com", age=42))
    [(_, line)] = h.log.deliveries()
    assert line["delay"] == "42" and line["a"] == "42"


# --- content filters (content_filter, the FILTER action)


def filtered(content_filter, *recipients):
    queued = message(*recipients)
    queued.content_filter = content_filter
    return queued


def test_a_content_filter_takes_every_recipient_whatever_its_route():
    """Local, bouncing and remote recipients alike go to the filter, in one job."""
    relay, other = ScriptedAgent(), ScriptedAgent()
    h, [queue_id] = single_pass(
        filtered("other:[127.0.0.1]:10024", "a@example.com", "b@bad.example", "c@remote.example"),
        routing=SCRIPTED, agents={"relay": relay, "other": other})
    assert other.jobs == [("[127.0.0.1]:10024", ["a@example.com", "b@bad.example", "c@remote.example"])]
    assert relay.jobs == []
    assert [program for program, _ in h.log.deliveries()] == ["other"] * 3
    assert [line["status"] for _, line in h.log.deliveries()] == ["sent"] * 3
    assert h.store.get(queue_id) is None


def test_unfiltered_mail_is_routed_as_usual():
    relay, other = ScriptedAgent(), ScriptedAgent()
    single_pass(filtered("", "c@remote.example"), routing=SCRIPTED, agents={"relay": relay, "other": other})
    assert relay.jobs == [("remote.example", ["c@remote.example"])] and other.jobs == []


def test_a_content_filter_without_a_next_hop_uses_the_recipient_domain():
    """postconf(5) default_filter_nexthop: empty means the domain in the recipient address."""
    other = ScriptedAgent()
    single_pass(filtered("other:", "a@one.example", "b@two.example", "c@one.example"),
                routing=SCRIPTED, agents={"other": other})
    assert sorted(other.jobs) == [("one.example", ["a@one.example", "c@one.example"]),
                                  ("two.example", ["b@two.example"])]


def test_default_filter_nexthop_replaces_the_recipient_domain():
    other = ScriptedAgent()
    settings = SchedulerSettings(minimal_backoff_time=300, maximal_backoff_time=4000,
                                 default_filter_nexthop="[127.0.0.1]:10026")
    single_pass(filtered("other:", "a@one.example", "b@two.example"),
                routing=SCRIPTED, agents={"other": other}, settings=settings)
    assert other.jobs == [("[127.0.0.1]:10026", ["a@one.example", "b@two.example"])]


def test_a_content_filter_on_a_transport_master_cf_lacks_defers():
    h, [queue_id] = single_pass(filtered("nosuch:[127.0.0.1]:10024", "a@remote.example"), routing=SCRIPTED)
    [(_, line)] = h.log.deliveries()
    assert (line["status"], line["dsn"]) == ("deferred", "4.3.0")
    assert "mail transport unavailable" in line["reason"]
    assert h.store.get(queue_id).content_filter == "nosuch:[127.0.0.1]:10024"


def test_a_filtered_message_that_is_deferred_goes_to_the_filter_again():
    other = ScriptedAgent(script={"a@remote.example": outcome.deferred("4.4.1", "connect refused")})
    h, [queue_id] = single_pass(filtered("other:[127.0.0.1]:10024", "a@remote.example"),
                                routing=SCRIPTED, agents={"other": other})
    stored = h.store.get(queue_id)
    assert stored.content_filter == "other:[127.0.0.1]:10024"
    assert [r.status for r in stored.recipients] == ["deferred"]
