"""The state of one evaluation, and what a transaction carries to cleanup.

Postfix's smtpd_check keeps, while it walks a list: whether warn_if_reject
is in force (and at which nesting level), a pending defer_if_permit and a
pending defer_if_reject (the first reason of each), and the nesting depth of
restriction classes. Those live in CheckState. What outlives one
evaluation lives in PolicySession: the defer_if_permit results of the
client, helo and sender stages (carried into RCPT, as Postfix does), the
message actions (HOLD, DISCARD, REDIRECT, FILTER, PREPEND, BCC) and the log
notes the session driver writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailferry.policy.facts import SessionFacts
from mailferry.protocol.replies import Reply

# Postfix's error classes (MAIL_ERROR_*): software, resource and data errors
# are never softened by warn_if_reject.
POLICY = "policy"
PROTOCOL = "protocol"
SOFTWARE = "software"
RESOURCE = "resource"
DATA = "data"
BOUNCE = "bounce"
NOT_SOFTENED = frozenset({SOFTWARE, RESOURCE, DATA})


@dataclass(slots=True)
class Pending:
    """A defer_if_permit or defer_if_reject waiting for the list's outcome."""

    active: bool = False
    error_class: str = POLICY
    code: int = 450
    dsn: str = "4.7.1"
    text: str = ""

    def keep_first(self, error_class: str, code: int, dsn: str, text: str) -> None:
        if not self.active:
            self.active, self.error_class, self.code, self.dsn, self.text = True, error_class, code, dsn, text


@dataclass(slots=True)
class CheckState:
    recursion: int = 0
    warn_if_reject: int = 0          # 0, or the nesting level that asked for it
    defer_if_permit: Pending = field(default_factory=Pending)
    defer_if_reject: Pending = field(default_factory=Pending)
    reply: Reply | None = None       # set by a rejection
    reply_action: str = ""           # refusals.REJECT or DEFER
    log_reason: str = ""


@dataclass(slots=True)
class MessageActions:
    """What access maps and policy servers asked to do to the message (cleanup honours it)."""

    hold: str = ""                   # the reason, non-empty = put on hold
    discard: bool = False
    redirect: str = ""               # the one recipient that replaces all others
    filter: str = ""                 # transport:destination (content_filter for this message)
    prepend: list[str] = field(default_factory=list)   # header lines
    bcc: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Note:
    """A line for the log: Postfix's log_whatsup(whatsup, text)."""

    whatsup: str                     # reject, reject_warning, warn, info, hold, discard, redirect, filter...
    text: str


@dataclass(slots=True)
class PolicySession:
    facts: SessionFacts
    defer_if_permit_client: bool = False
    defer_if_permit_helo: bool = False
    defer_if_permit_sender: bool = False
    # One record, as Postfix's state->defer_if_permit: the stages' flags say whether it is in force.
    defer_if_permit: Pending = field(default_factory=Pending)
    sender_unlisted_checked: bool = False
    recipient_unlisted_checked: bool = False
    actions: MessageActions = field(default_factory=MessageActions)
    notes: list[Note] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # configuration problems, for log.warning

    def reset_transaction(self) -> None:
        """Postfix's mail_reset: access map side effects end with the transaction."""
        self.actions = MessageActions()
        self.defer_if_permit_sender = False
        self.sender_unlisted_checked = False

    def take_notes(self) -> tuple[list[Note], list[str]]:
        notes, warnings = self.notes, self.warnings
        self.notes, self.warnings = [], []
        return notes, warnings
