"""What Postfix's cleanup(8) does to a message before it enters the queue.

- Qualifies bare envelope addresses as trivial-rewrite does: `host!user` →
  `user@host` (swap_bangpath), `user%host` → `user@host` (allow_percent_hack),
  else `@$myorigin` (append_at_myorigin).
- Prepends the Received: header, in Postfix's layout.
- Adds Message-ID:, Date: and From: when missing. As in Postfix 2.6 and
  later, only for local submissions and for clients that
  `local_header_rewrite_clients` matches (by default, clients on our own
  interface addresses), so a remote sender's DKIM signature is never broken
  by a header we invent.
Address rewriting (canonical, masquerading, virtual aliases) needs table
lookups, which may wait: it is cleanup/rewrite.py's, run by the service
after clean().

Notices that qmgr makes (bounces, delay warnings, postmaster copies) pass
here too, through `clean_notice`: bounce wrote all their headers and their
addresses are complete, so nothing is added to them, but the steps that
apply to every message (address rewriting) belong to both paths. Header and body
checks (cleanup/checks.py) apply only to mail from smtpd and pickup, as in Postfix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate

from mailferry.config.config import Config
from mailferry.message import NewMessage
from mailferry.routing.addresses import rewrite_bare

_HEADER_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class CleanupSettings:
    myhostname: str
    myorigin: str
    append_at_myorigin: bool = True
    tls_received_header: bool = False
    sasl_authenticated_header: bool = False     # smtpd_sasl_authenticated_header
    mail_name: str = "mailferry"
    percent_hack: bool = True      # allow_percent_hack
    swap_bangpath: bool = True

    @classmethod
    def from_config(cls, config: Config) -> CleanupSettings:
        return cls(myhostname=config.get("myhostname"), myorigin=config.get("myorigin"),
                   append_at_myorigin=config.boolean("append_at_myorigin"),
                   tls_received_header=config.boolean("smtpd_tls_received_header"),
                   sasl_authenticated_header=config.boolean("smtpd_sasl_authenticated_header"),
                   mail_name=config.get("mail_name"),
                   percent_hack=config.boolean("allow_percent_hack"),
                   swap_bangpath=config.boolean("swap_bangpath"))


def qualify(address: str, settings: CleanupSettings) -> str:
    """`user` → `user@$myorigin`, `host!user` and `user%host` → `user@host` (the null sender
    stays empty): trivial-rewrite's rewrite_tree in the local context."""
    if not address:
        return address
    return rewrite_bare(address, settings.myorigin if settings.append_at_myorigin else "",
                        settings.percent_hack, settings.swap_bangpath)


def clean(message: NewMessage, queue_id: str, settings: CleanupSettings,
          add_missing_headers: bool, full_name: str = "", now: float | None = None) -> NewMessage:
    """Return `message` ready for the queue (it is changed in place and returned)."""
    now = time.time() if now is None else now
    message.sender = qualify(message.sender, settings)
    for recipient in message.recipients:
        recipient.address = qualify(recipient.address, settings)
    fields = _header_fields(message.content)
    present = {name for name, _ in fields}
    added = [f"{header}\r\n" for header in message.prepend]   # PREPEND goes above Received:, as in Postfix
    added.append(_received(message, queue_id, settings, now))
    own_start = len("".join(added).encode("utf-8", "surrogateescape"))   # what follows is cleanup's own
    if add_missing_headers:
        if b"message-id" not in present:
            message.message_id = f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{queue_id}@{settings.myhostname}>"
            added.append(f"Message-Id: {message.message_id}\r\n")
        if b"date" not in present:
            added.append(f"Date: {_date(now)}\r\n")
        if b"from" not in present:
            added.append(_from_header(message.sender, full_name))
    if not message.message_id:
        message.message_id = _message_id(fields)
    if not present and not message.content.startswith(b"\r\n"):
        # No header section at all: keep the body a body by ending our headers with the separator.
        message.content = b"\r\n" + message.content
    prefix = "".join(added).encode("utf-8", "surrogateescape")
    message.own_headers = (own_start, len(prefix))
    message.content = prefix + message.content
    message.arrival_time = message.arrival_time or now
    return message


def clean_notice(message: NewMessage, queue_id: str) -> NewMessage:
    """Return a notice from qmgr ready for the queue (changed in place and returned).
    Its Message-Id: header, which bounce wrote, is the one logged."""
    message.queue_id = queue_id
    message.message_id = _message_id(_header_fields(message.content)) or message.message_id
    return message


def _message_id(fields: list[tuple[bytes, bytes]]) -> str:
    return next((value.decode("utf-8", "replace") for name, value in fields if name == b"message-id"), "")


_date_cache: tuple[int, str] = (-1, "")


def _date(now: float) -> str:
    """RFC 5322 date of `now`, formatted once per second: it is in every message's Received:."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, localtime=True))
    return _date_cache[1]


def _header_fields(content: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, unfolded value) of each header field, from the header
    section only: it ends at the first empty line or the first line that is
    neither a field nor a continuation (then there was no header section)."""
    fields: list[tuple[bytes, bytes]] = []
    # Only the lines before the first empty one can be fields: split no further (a 1 MiB
    # body split into lines cost 4 ms a message, measured with bench/relay -l 1048576).
    end = content.find(b"\r\n\r\n")
    for line in (content if end < 0 else content[:end + 2]).split(b"\r\n"):
        if not line:
            break
        if line[0] in b" \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, (value + b" " + line.strip()).strip())
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or not name or b" " in name or b"\t" in name:
            return fields  # not a field: the header section (if any) has ended
        fields.append((name.lower(), value.strip()))
    return fields


def _received(message: NewMessage, queue_id: str, settings: CleanupSettings, now: float) -> str:
    """Received:, laid out as Postfix's smtpd and pickup write it."""
    date = _date(now)
    client = message.client
    if message.origin == "local":
        uid = f", from userid {client.uid}" if client.uid is not None else ""
        return f"Received: by {settings.myhostname} ({settings.mail_name}{uid})\r\n\tid {queue_id}; {date}\r\n"
    helo = client.helo or client.name
    tls = f"\r\n\t(using {client.tls})" if client.tls and settings.tls_received_header else ""
    if client.sasl_username and settings.sasl_authenticated_header:
        tls += f"\r\n\t(Authenticated sender: {_comment_text(client.sasl_username)})"
    if len(message.recipients) == 1:
        tail = f"\r\n\tfor <{message.recipients[0].address}>; {date}"
    else:
        tail = f";\r\n\t{date}"
    return (f"Received: from {helo} ({client.name} [{client.address}]){tls}\r\n"
            f"\tby {settings.myhostname} ({settings.mail_name}) with {client.protocol} id {queue_id}"
            f"{tail}\r\n")


def _comment_text(text: str) -> str:
    """As Postfix's comment_sanitize(): nothing that could end the comment or the line."""
    cleaned = "".join(char if char.isprintable() and char not in "()\\" else "?" for char in text)
    return cleaned


def _from_header(sender: str, full_name: str) -> str:
    if not sender:
        return "From: MAILER-DAEMON\r\n"
    if full_name:
        return f"From: {_quote_phrase(full_name)} <{sender}>\r\n"
    return f"From: {sender}\r\n"


def _quote_phrase(name: str) -> str:
    if all(char.isalnum() or char in " !#$%&'*+-/=?^_`{|}~" for char in name):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
