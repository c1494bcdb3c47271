"""local(8)'s view of main.cf, and its `$name` expansion of per-recipient attributes.

forward_path, luser_relay and mailbox_command name attributes of the
recipient being delivered ($user, $home, $extension...), which only the
delivery knows: `expand_local` expands them, with every other `$name`
taken from main.cf as usual.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mailferry.config.config import Config
from mailferry.config.expand import Expander

# The attributes local(8) expands (local_expand.c).
LOCAL_ATTRIBUTES = ("user", "home", "shell", "local", "extension", "domain", "recipient",
                    "recipient_delimiter", "mailbox", "sender", "client_address", "client_hostname",
                    "client_helo", "client_protocol", "sasl_method", "sasl_sender", "sasl_username")
_PLAIN_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))")


@dataclass(frozen=True, slots=True)
class LocalSettings:
    alias_maps: list[str]
    recipient_delimiter: str = ""
    forward_path: tuple[str, ...] = ("$home/.forward${recipient_delimiter}${extension}", "$home/.forward")
    allow_mail_to_commands: frozenset[str] = frozenset({"alias", "forward"})
    allow_mail_to_files: frozenset[str] = frozenset({"alias", "forward"})
    home_mailbox: str = ""
    mail_spool_directory: str = "/var/mail"
    mailbox_command: str = ""
    mailbox_size_limit: int = 51200000
    luser_relay: str = ""
    default_privs: str = "nobody"
    command_time_limit: float = 1000.0
    export_environment: tuple[str, ...] = ("TZ", "MAIL_CONFIG", "LANG")
    command_expansion_filter: str = ""
    prepend_delivered_header: frozenset[str] = frozenset({"command", "file", "forward"})
    owner_request_special: bool = True
    mailbox_delivery_lock: tuple[str, ...] = ("fcntl", "dotlock")
    deliver_lock_attempts: int = 20
    deliver_lock_delay: float = 1.0
    stale_lock_time: float = 500.0
    myorigin: str = "localhost"
    enable_original_recipient: bool = True

    @classmethod
    def from_config(cls, config: Config) -> LocalSettings:
        def words(name: str) -> frozenset[str]:
            return frozenset(word.lower() for word in config.list(name))
        return cls(
            alias_maps=config.list("alias_maps"),
            recipient_delimiter=config.get("recipient_delimiter"),
            # Expanded per recipient, so read raw: $home is not a main.cf parameter.
            forward_path=tuple(_split_raw(config.raw("forward_path") or "")),
            allow_mail_to_commands=words("allow_mail_to_commands"),
            allow_mail_to_files=words("allow_mail_to_files"),
            home_mailbox=config.get("home_mailbox"),
            mail_spool_directory=config.get("mail_spool_directory"),
            mailbox_command=config.raw("mailbox_command") or "",
            mailbox_size_limit=config.size("mailbox_size_limit"),
            luser_relay=config.raw("luser_relay") or "",
            default_privs=config.get("default_privs"),
            command_time_limit=float(config.time("command_time_limit")),
            export_environment=tuple(config.list("export_environment")),
            command_expansion_filter=config.get("command_expansion_filter"),
            prepend_delivered_header=words("prepend_delivered_header"),
            owner_request_special=config.boolean("owner_request_special"),
            mailbox_delivery_lock=tuple(config.list("mailbox_delivery_lock")),
            deliver_lock_attempts=config.integer("deliver_lock_attempts"),
            deliver_lock_delay=float(config.time("deliver_lock_delay")),
            stale_lock_time=float(config.time("stale_lock_time")),
            myorigin=config.get("myorigin"),
            enable_original_recipient=config.boolean("enable_original_recipient"),
        )


def _split_raw(text: str) -> list[str]:
    # forward_path separates entries with commas or blanks, as every list parameter.
    return [item for item in re.split(r"[\s,]+", text) if item]


def expand_local(text: str, attributes: Mapping[str, str | None],
                 parameter: Callable[[str], str | None]) -> str | None:
    """`text` with the recipient's attributes (and main.cf's other parameters) expanded; None
    when it names an attribute unconditionally that is not defined for this recipient (no
    extension, say): Postfix then skips that forward_path entry (MAC_PARSE_UNDEF)."""
    for match in _PLAIN_REFERENCE.finditer(text):
        name = next(group for group in match.groups() if group)
        if name in attributes and not attributes[name]:
            return None

    def lookup(name: str) -> str | None:
        if name in attributes:
            value = attributes[name]
            # A value comes from the message (an extension, a sender): never expand inside it.
            return None if value is None else value.replace("$", "$$")
        return parameter(name)
    return Expander(lookup).expand(text)


def censor(value: str, allowed: str) -> str:
    """command_expansion_filter: each character of `value` not in `allowed` becomes `_`
    (what local(8) does to the environment of a |command)."""
    if not allowed:
        return value
    keep = set(allowed)
    return "".join(char if char in keep else "_" for char in value)
