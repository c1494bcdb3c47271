"""The one way into the queue, for smtpd, pickup and qmgr's notices alike.

`enqueue` finishes a message from smtpd or pickup (cleanup.clean), hands it
to the group committer and returns only once the message is durable. A
QueueError (disk full, write error) propagates: smtpd turns it into a 4xx
and pickup leaves the maildrop file for the next pass.

`enqueue_notices` takes the notices qmgr makes (a bounce, a delay warning,
a postmaster copy) together with qmgr's write of the delivery outcome that
caused them, and commits both in ONE transaction (GroupCommitter.submit_with):
a crash can neither lose a notice nor let the failure produce it twice.
qmgr's write learns whether the notices went in (their queue IDs) or not
(the QueueError), and records the outcome accordingly.

cleanup logs only its own line, `ID: message-id=<...>`, before the commit, as
Postfix's cleanup does. The `from=<...>, size=N, nrcpt=N (queue active)` line
is qmgr's: the scheduler writes it when it takes the message into its active
set (qmgr/scheduler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from mailferry import metrics
from mailferry.cleanup.checks import ContentChecks
from mailferry.cleanup import milters as cleanup_milters
from mailferry.cleanup.cleanup import CleanupSettings, clean, clean_notice
from mailferry.cleanup.rewrite import AddressRewriter, RewriteDeferred
from mailferry.config.config import Config
from mailferry.config.hostinfo import local_addresses
from mailferry.maillog import Log
from mailferry.message import NewMessage, Recipient
from mailferry.milter.session import MilterSession
from mailferry.queue import QueueError, new_queue_id
from mailferry.refusals import Refusal
from mailferry.tables import TableError
from mailferry.tables.match_lists import NetworkList

T = TypeVar("T")


class ContentRefused(Exception):
    """A content check (header_checks, body_checks: REJECT) or a milter (reject, tempfail, a
    custom reply) refused the message at the end of its data. Nothing was queued. smtpd answers
    with `refusal.reply` in place of its 250; pickup returns the message to its sender, as
    Postfix's cleanup does for mail that sendmail submitted."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reply.text)
        self.refusal = refusal


class Committer(Protocol):
    """The queue's group committer (queue/commit.py)."""

    async def submit(self, message: NewMessage) -> str: ...

    async def submit_with(self, messages: Sequence[NewMessage],
                          then: Callable[[list[str] | QueueError], T]) -> T: ...


class CleanupService:
    def __init__(self, settings: CleanupSettings, committer: Committer, log: Log,
                 is_local_client: Callable[[str], bool], on_queued: Callable[[], None],
                 rewriter: AddressRewriter | None = None, checks: ContentChecks | None = None):
        self.settings = settings
        self.checks = checks or ContentChecks.none(log)
        self.rewriter = rewriter or AddressRewriter(None, None, None, None, None)
        self.committer = committer
        self.log = log
        self.is_local_client = is_local_client
        self.on_queued = on_queued

    @classmethod
    def from_config(cls, config: Config, committer: Committer, log: Log,
                    on_queued: Callable[[], None]) -> CleanupService:
        """`on_queued` is called after each message from smtpd or pickup is durable."""
        return cls(CleanupSettings.from_config(config), committer, log,
                   local_header_clients(config).matches, on_queued, AddressRewriter.from_config(config),
                   ContentChecks.from_config(config, log))

    def close(self) -> None:
        """Its tables, when a reload drops the service (cleanup/services.py)."""
        self.checks.close()

    def reload(self, config: Config) -> None:
        self.settings = CleanupSettings.from_config(config)
        self.is_local_client = local_header_clients(config).matches
        try:
            self.rewriter = AddressRewriter.from_config(config)
        except TableError as problem:
            # check (run before every reload) lets a table mail_owner cannot read pass with a warning.
            self.log.warning("cleanup", f"reload: {problem}; keeping the address rewriting tables loaded before")
        try:
            self.checks, replaced = ContentChecks.from_config(config, self.log), self.checks
            replaced.close()
        except TableError as problem:
            self.log.warning("cleanup", f"reload: {problem}; keeping the header and body checks loaded before")

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "",
                      milters: MilterSession | None = None) -> str:
        """`milters`: the milters of the message's SMTP session (smtpd_milters) or of its
        non-SMTP submission (non_smtpd_milters), for their content phase."""
        add_headers = message.origin == "local" or self.is_local_client(message.client.address)
        clean(message, queue_id, self.settings, add_headers, full_name)
        message.queue_id = queue_id
        await self.checks.apply(message)
        if not await cleanup_milters.run_content_milters(message, milters, self.log):
            return queue_id
        await self._rewrite(message, add_headers, bcc_ok=True)
        self._log_message_id(message)
        if not self._restriction_actions(message):
            return queue_id
        queued = await self.committer.submit(message)
        metrics.message_received(message.origin)
        self.on_queued()
        return queued

    def _restriction_actions(self, message: NewMessage) -> bool:
        """smtpd's REDIRECT and DISCARD (HOLD is the queue's: it stores the message on hold;
        FILTER, like content_filter, is qmgr's: it routes by the stored content_filter).
        False when the message is not to be queued (DISCARD)."""
        if message.redirect:
            first = message.recipients[0] if message.recipients else Recipient(message.redirect)
            message.recipients = [Recipient(message.redirect, orcpt=first.orcpt, notify=first.notify)]
        if message.discard:
            if not self.checks.logged_discard(message.queue_id):   # a DISCARD action logged its own
                self.log.line("cleanup", f"{message.queue_id}: discard: the restrictions asked to discard it;"
                                         f" from=<{message.sender}>")
            return False
        return True

    async def enqueue_notices(self, notices: Sequence[NewMessage],
                              then: Callable[[list[str] | QueueError], T]) -> T:
        """Queue qmgr's `notices` in the transaction of `then`, qmgr's write of the
        outcome that caused them; return what `then` returns, once committed."""
        try:
            for notice in notices:
                clean_notice(notice, new_queue_id())
                await self._rewrite(notice, True)
        except RewriteDeferred as problem:
            # As when the queue is full: qmgr's write records that the notices wait.
            return await self.committer.submit_with([], lambda _ids: then(problem))
        for notice in notices:
            self._log_message_id(notice)
        return await self.committer.submit_with(notices, then)

    async def _rewrite(self, message: NewMessage, rewrite_headers: bool, bcc_ok: bool = False) -> None:
        """Canonical, masquerading, virtual aliases and, with `bcc_ok` (mail from smtpd and
        pickup, not notices), the automatic BCC recipients (cleanup/rewrite.py).
        Raises RewriteDeferred, after logging Postfix's warning."""
        def warn(text: str) -> None:
            self.log.warning("cleanup", f"{message.queue_id}: {text}")
        try:
            await self.rewriter.rewrite(message, rewrite_headers, warn, bcc_ok)
        except RewriteDeferred as problem:
            warn(str(problem))
            raise

    def _log_message_id(self, message: NewMessage) -> None:
        self.log.line("cleanup", f"{message.queue_id}: message-id={message.message_id or '<>'}")


def local_header_clients(config: Config) -> NetworkList:
    """local_header_rewrite_clients: permit_inet_interfaces (the default) and permit_mynetworks."""
    networks = []
    for item in config.list("local_header_rewrite_clients"):
        if item == "permit_inet_interfaces":
            networks += ["127.0.0.0/8", "[::1]/128"]
            networks += [str(address) for address, _ in local_addresses()]
        elif item == "permit_mynetworks":
            networks.append(config.get("mynetworks"))
        elif item == "static:all":
            networks += ["0.0.0.0/0", "[::]/0"]
    return NetworkList(" ".join(networks))
