"""virtual(8): hosted mailboxes, one file or Maildir per address, owned by mapped ids.

For each recipient, as Postfix's virtual delivery agent does:
1. virtual_mailbox_maps, searched in the address lookup order (user+ext@domain,
   user@domain, @domain): no entry bounces 5.1.1 `unknown user: "addr"`;
2. the mailbox is virtual_mailbox_base + "/" + the value; a value ending in
   "/" is a Maildir, anything else an mbox file; a value with "/../" defers;
3. virtual_uid_maps and virtual_gid_maps, in the same order, give the numeric
   owner (often `static:5000`); none, a non-number, a uid below
   virtual_minimum_uid or gid 0 defers with "mail system configuration error",
   as in Postfix: the administrator has a table to fix, the mail waits;
4. the spawner (master/spawner.py) stores the message with those ids, with
   Return-Path:, X-Original-To: and Delivered-To: in front. virtual_mailbox_limit
   caps an mbox file (and a single Maildir file): over it bounces 5.2.2.

A table that fails for now defers the recipient (4.3.5). The agent never
writes a mailbox itself: only the spawner holds the rights to.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailferry.config.config import Config
from mailferry.config.localdomains import local_domain_matcher
from mailferry.delivery import outcome
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import MailboxRequest, RunAs, Spawner
from mailferry.maillog import Log
from mailferry.message import DeliveryResult, Recipient
from mailferry.tables import Maps, TableError, open_maps
from mailferry.tables.addresses import lookup_address

MAILBOX_LOCKS = ("flock", "fcntl", "dotlock")


@dataclass(frozen=True, slots=True)
class VirtualSettings:
    mailbox_base: str
    minimum_uid: int = 100
    mailbox_limit: int = 51200000
    mailbox_lock: tuple[str, ...] = ("fcntl", "dotlock")
    recipient_delimiter: str = ""
    lock_attempts: int = 20          # deliver_lock_attempts
    lock_delay: float = 1.0          # deliver_lock_delay
    stale_lock_time: float = 500.0

    @classmethod
    def from_config(cls, config: Config) -> VirtualSettings:
        settings = cls(mailbox_base=config.get("virtual_mailbox_base").strip(),
                       minimum_uid=config.integer("virtual_minimum_uid"),
                       mailbox_limit=config.size("virtual_mailbox_limit"),
                       mailbox_lock=tuple(config.list("virtual_mailbox_lock")),
                       recipient_delimiter=config.get("recipient_delimiter"),
                       lock_attempts=config.integer("deliver_lock_attempts"),
                       lock_delay=float(config.time("deliver_lock_delay")),
                       stale_lock_time=float(config.time("stale_lock_time")))
        settings.check(config.size("message_size_limit"))
        return settings

    def check(self, message_size_limit: int) -> None:
        """The settings Postfix's virtual refuses to start with: raises ValueError."""
        if not self.mailbox_base.startswith("/"):
            raise ValueError(f"virtual_mailbox_base = {self.mailbox_base}: do not specify a relative or empty "
                             "path name; set it to the directory under which virtual_mailbox_maps' paths lie")
        unknown = [lock for lock in self.mailbox_lock if lock not in MAILBOX_LOCKS]
        if unknown:
            raise ValueError(f"virtual_mailbox_lock: unknown locking method {unknown[0]!r}; "
                             f"use {', '.join(MAILBOX_LOCKS)}")
        if self.mailbox_limit:
            if not message_size_limit:
                raise ValueError("virtual_mailbox_limit is limited but message_size_limit is unlimited: "
                                 "set virtual_mailbox_limit = 0 or limit message_size_limit")
            if self.mailbox_limit < message_size_limit:
                raise ValueError(f"virtual_mailbox_limit ({self.mailbox_limit}) is smaller than "
                                 f"message_size_limit ({message_size_limit}): raise virtual_mailbox_limit")


@dataclass(frozen=True, slots=True)
class Mailbox:
    path: str          # absolute; ends in "/" for a Maildir
    uid: int
    gid: int

    @property
    def is_maildir(self) -> bool:
        return self.path.endswith("/")


class VirtualMaps:
    """virtual_mailbox_maps, virtual_uid_maps and virtual_gid_maps, and what they say of one address."""

    def __init__(self, settings: VirtualSettings, mailbox_maps: Maps, uid_maps: Maps, gid_maps: Maps,
                 is_local_domain=lambda domain: False, log: Log | None = None):
        self._settings = settings
        self._tables = {"virtual_mailbox_maps": mailbox_maps, "virtual_uid_maps": uid_maps,
                        "virtual_gid_maps": gid_maps}
        self._is_local = is_local_domain
        self._log = log

    @classmethod
    def from_config(cls, config: Config, settings: VirtualSettings, log: Log | None = None) -> VirtualMaps:
        maps = []
        for name in ("virtual_mailbox_maps", "virtual_uid_maps", "virtual_gid_maps"):
            try:
                maps.append(open_maps(config.get(name)))
            except TableError as problem:
                raise ValueError(f"{name}: {problem}") from None
        return cls(settings, *maps, is_local_domain=local_domain_matcher(config), log=log)

    def close(self) -> None:
        for maps in self._tables.values():
            maps.close()

    async def mailbox(self, address: str) -> Mailbox | DeliveryResult:
        """The mailbox and its owner, or the result that ends this recipient's delivery now."""
        found = await self._find("virtual_mailbox_maps", address)
        if isinstance(found, DeliveryResult):
            return found
        if found is None:
            return outcome.virtual_unknown_user(address)
        path = mailbox_path(self._settings.mailbox_base, found)
        if path is None:
            return self._misconfigured(f"recipient {address}: bad mailbox path {found} in virtual_mailbox_maps")
        ids = []
        for name in ("virtual_uid_maps", "virtual_gid_maps"):
            value = await self._find(name, address)
            if isinstance(value, DeliveryResult):
                return value
            if value is None:
                return self._misconfigured(f"recipient {address}: not found in {name}")
            number = parse_id(value)
            if number is None or not self._acceptable(name, number):
                kind = "uid" if name == "virtual_uid_maps" else "gid"
                return self._misconfigured(f"recipient {address}: bad {kind} {value} in {name}"
                                           + self._why_bad(name, number))
            ids.append(number)
        return Mailbox(path, ids[0], ids[1])

    def _acceptable(self, name: str, number: int) -> bool:
        if name == "virtual_uid_maps":
            return number >= self._settings.minimum_uid
        return number != 0

    def _why_bad(self, name: str, number: int | None) -> str:
        if number is None:
            return " (not a number)"
        if name == "virtual_uid_maps":
            return f" (below virtual_minimum_uid = {self._settings.minimum_uid})"
        return " (gid 0 is refused)"

    async def _find(self, name: str, address: str) -> str | None | DeliveryResult:
        match = await lookup_address(self._tables[name], address.lower(), self._is_local,
                                     self._settings.recipient_delimiter)
        if match.result.tempfail:
            return self._misconfigured(f"table {name}: lookup {address}: {match.result.reason}")
        return match.result.value if match.result.found else None

    def _misconfigured(self, warning: str) -> DeliveryResult:
        if self._log is not None:
            self._log.warning("virtual", warning)
        return outcome.virtual_configuration_error()


def mailbox_path(base: str, value: str) -> str | None:
    """virtual_mailbox_base + "/" + the table's value; None for a value that climbs out ("/../")."""
    path = f"{base}/{value.strip()}"
    if "/../" in path[len(base):] or path.endswith("/.."):
        return None
    return path


def parse_id(value: str) -> int | None:
    """A uid or gid as virtual_uid_maps/virtual_gid_maps give it: a plain decimal number, not -1."""
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number < 2**32 - 1 else None


def delivery_headers(sender: str, recipient: Recipient) -> bytes:
    """What virtual(8) puts in front of the message: Return-Path:, X-Original-To: (the
    address before rewriting, kept as ORCPT) and Delivered-To:, LF-ended."""
    original = recipient.address
    if recipient.orcpt:
        original = recipient.orcpt.partition(";")[2].strip() or recipient.orcpt
    lines = [f"Return-Path: <{sender}>", f"X-Original-To: {original}", f"Delivered-To: {recipient.address}"]
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def with_lf(content: bytes) -> bytes:
    return content.replace(b"\r\n", b"\n")


class VirtualAgent:
    """The `virtual` master.cf service's agent (Transports._make_agent)."""

    def __init__(self, settings: VirtualSettings, maps: VirtualMaps, spawner: Spawner):
        self.settings = settings
        self.maps = maps
        self.spawner = spawner

    @classmethod
    def from_config(cls, config: Config, spawner: Spawner, log: Log | None = None) -> VirtualAgent:
        settings = VirtualSettings.from_config(config)
        return cls(settings, VirtualMaps.from_config(config, settings, log), spawner)

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]:
        body = with_lf(job.content)
        return [await self._deliver_one(job, recipient, body) for recipient in job.recipients]

    async def _deliver_one(self, job: DeliveryJob, recipient: Recipient, body: bytes) -> DeliveryResult:
        mailbox = await self.maps.mailbox(recipient.address)
        if isinstance(mailbox, DeliveryResult):
            return mailbox
        content = delivery_headers(job.message.sender, recipient) + body
        # virtual_mailbox_limit caps an mbox file and each Maildir file: the spawner checks it
        request = MailboxRequest(RunAs(uid=mailbox.uid, gid=mailbox.gid), mailbox.path, content,
                                 sender=job.message.sender, arrival_time=job.message.arrival_time,
                                 size_limit=self.settings.mailbox_limit, locks=self.settings.mailbox_lock,
                                 lock_attempts=self.settings.lock_attempts, lock_delay=self.settings.lock_delay,
                                 stale_lock_time=self.settings.stale_lock_time)
        try:
            result = await self.spawner.store_in_mailbox(request)
        except OSError as problem:     # the spawner itself is gone: the mail waits
            return outcome.virtual_spawner_failed(problem)
        return outcome.virtual_stored(result, mailbox.path, mailbox.is_maildir)

    def forget_dead_destinations(self) -> None:
        pass

    def close(self) -> None:
        self.maps.close()

