"""The plain records that services hand each other.

smtpd and pickup build a NewMessage; cleanup completes its headers; the
queue stores it and hands back QueuedMessage records; delivery agents
report a DeliveryResult per recipient. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Recipient states in the queue.
PENDING = "pending"      # not tried yet, or to be retried
DEFERRED = "deferred"    # last attempt failed temporarily
SENT = "sent"            # delivered (or discarded)
BOUNCED = "bounced"      # failed permanently

# Queues, as postqueue -p and postsuper name them.
INCOMING = "incoming"    # being written: never delivered, removed by recovery
ACTIVE = "active"
DEFERRED_QUEUE = "deferred"
HOLD = "hold"


@dataclass(slots=True)
class Recipient:
    address: str
    orcpt: str | None = None      # DSN ORCPT=, as given (type;address)
    notify: str | None = None     # DSN NOTIFY=, e.g. "SUCCESS,FAILURE" or "NEVER"
    status: str = PENDING
    dsn: str = ""                 # enhanced status code of the last attempt, e.g. 4.4.1
    reason: str = ""              # the last attempt's reply or error text


@dataclass(slots=True)
class ClientInfo:
    """Who handed us the message: for Received:, logging and policy."""

    name: str = "localhost"       # verified host name, or "unknown"
    address: str = "127.0.0.1"
    port: int = 0
    helo: str = ""
    protocol: str = "ESMTP"       # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, or "local" for pickup
    tls: str = ""                 # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
    sasl_username: str = ""
    uid: int | None = None        # the submitting user, for local submissions (pickup)


@dataclass(slots=True)
class NewMessage:
    """A message on its way into the queue. `content` is the whole message,
    headers and body, with CRLF line endings and no dot-stuffing."""

    sender: str                   # "" for the null sender <>
    recipients: list[Recipient]
    content: bytes
    client: ClientInfo = field(default_factory=ClientInfo)
    origin: str = "smtp"          # "smtp" or "local"
    message_id: str = ""          # for logging; cleanup fills it in
    dsn_ret: str | None = None    # DSN RET=FULL|HDRS
    dsn_envid: str | None = None  # DSN ENVID=
    body_type: str | None = None  # 7BIT, 8BITMIME, BINARYMIME
    smtputf8: bool = False
    arrival_time: float = 0.0
    # Assigned when the transaction starts (Postfix logs `ID: client=` at MAIL
    # FROM and puts the ID in Received:), so the store keeps it rather than
    # making one; empty means "store, assign one".
    queue_id: str = ""
    # What smtpd's restrictions asked of the message (access(5) actions, policy
    # servers); cleanup honours them.
    hold: bool = False            # HOLD: into the hold queue, not delivered until released
    discard: bool = False         # DISCARD: accepted, then dropped
    redirect: str = ""            # REDIRECT: this one recipient replaces all others
    # content_filter: transport:destination the whole message goes to before delivery (a content
    # filter that re-injects it). smtpd and pickup set it from their content_filter parameter, a
    # FILTER action replaces it; bounces and other notices have none.
    content_filter: str = ""
    prepend: list[str] = field(default_factory=list)   # PREPEND: header lines, above Received:
    # receive_override_options of the service that received it (no_header_body_checks,
    # no_address_mappings, no_milters, ...): cleanup skips those steps for this message.
    receive_overrides: frozenset[str] = frozenset()
    # The byte range of the headers cleanup added itself (Message-Id:, Date:, From:): header
    # checks skip them, as Postfix's do. clean() sets it.
    own_headers: tuple[int, int] = (0, 0)
    # Set by the queue when it wrote a large content to its own file before the row
    # (queue/sqlite.py, stage_content): the file's name in queue_directory/content/.
    content_file: str = ""


@dataclass(slots=True)
class QueuedMessage:
    """A message in the queue, as the scheduler and the queue tools see it.
    The content is fetched separately (QueueStore.content)."""

    queue_id: str
    queue: str                    # ACTIVE, DEFERRED_QUEUE or HOLD
    sender: str
    recipients: list[Recipient]
    size: int
    arrival_time: float
    next_attempt: float = 0.0
    attempts: int = 0
    message_id: str = ""
    client: ClientInfo = field(default_factory=ClientInfo)
    origin: str = "smtp"
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    body_type: str | None = None
    smtputf8: bool = False
    delay_warned: bool = False    # a delay notice went out (delay_warning_time)
    content_filter: str = ""      # transport:destination every pending recipient goes to (NewMessage's)


@dataclass(slots=True)
class DeliveryResult:
    """What one delivery attempt did for one recipient, as a delivery agent reports it.
    delivery/outcome.py is the one place that builds these from replies and errors."""

    status: str                   # SENT, DEFERRED or BOUNCED
    dsn: str                      # enhanced status code, e.g. 2.0.0, 4.4.1, 5.1.1
    reason: str                   # Postfix's text in the log's parentheses
    relay: str = "none"           # host[address]:port, or a transport's own word (none, local)
    setup_seconds: float = 0.0    # connection setup: DNS, greeting, EHLO, TLS, AUTH (delays= c)
    transfer_seconds: float = 0.0  # the transaction itself (delays= d)
