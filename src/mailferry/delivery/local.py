"""local(8): delivery to the users of this host, through aliases and .forward files.

For each recipient (its next hop is this host), in Postfix's order
(src/local/recipient.c):

1. loop checks: nesting deeper than 100 levels, the same address twice at
   one level (dropped), and a `Delivered-To:` header that already names the
   address ("mail forwarding loop", 5.4.6);
2. the local part is folded to lower case and split at recipient_delimiter
   into user and extension;
3. alias_maps: the whole local part, then the user alone. Each destination
   of the alias is delivered in turn: `|command`, `/file`, `/dir/`
   (Maildir), `:include:/file`, a local address (expanded again, from step
   1), or a remote one (forwarded: a new message through cleanup);
4. a user with an account: the first .forward file of forward_path that
   exists, read with the user's rights, its destinations delivered the same
   way; else the mailbox: mailbox_command, or home_mailbox (`Maildir/` is a
   Maildir) under the home directory, or mail_spool_directory/USER;
5. no account: luser_relay, else bounce `unknown user: "name"` (5.1.1).

Whose rights: a mailbox, and the commands and files of a .forward, are the
user's. The commands and files of an alias are the alias table's owner's,
or default_privs' when root owns it; an :include: file owned by someone
other than root gives its owner's rights to what it lists. This agent never
forks or changes its rights: master/spawner.py does the writing and the
running (delivery/spawn.py). The spawner refuses root, so mail for root's
own mailbox waits with a text asking for a `root:` alias (outcome.py).

Postfix's allow_mail_to_commands and allow_mail_to_files restrict |command
and /file destinations by where they came from (alias, forward, include).

When an alias or .forward fans a recipient out, the recipient's result is
the worst of its parts (outcome.local_combined): if one part must wait, the
whole expansion is tried again later, and parts that were delivered are
delivered again, as in Postfix.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import socket
from dataclasses import dataclass, field, replace
from typing import Protocol

from mailferry.config.config import Config
from mailferry.config.localdomains import local_domain_matcher
from mailferry.delivery import outcome
from mailferry.delivery.local_settings import LocalSettings, censor, expand_local
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import CommandRequest, MailboxRequest, RunAs, Spawner
from mailferry.maillog import Log
from mailferry.message import DeliveryResult, NewMessage, QueuedMessage, Recipient
from mailferry.tables import FOUND, TEMPFAIL, TableError, open_table, split_spec
from mailferry.tables.aliases import AliasTextTable, split_destinations
from mailferry.tables.base import Table

NESTING_LIMIT = 100
ALIAS, FORWARD, INCLUDE = "alias", "forward", "include"
_DEFAULT_PATH = "/usr/bin:/bin"


class ForwardError(Exception):
    """The forwarded copy could not be queued: the recipient waits."""


class Forwarder(Protocol):
    """Queues a copy of a message for new recipients, through cleanup (qmgr/scheduler.py's
    CleanupForwarder): how local(8) sends on to addresses an alias or .forward names.
    Returns the new queue ID; raises ForwardError."""

    async def forward(self, message: NewMessage) -> str: ...


@dataclass(frozen=True, slots=True)
class Rights:
    """Whose rights a |command or /file runs with, and that account's home and shell."""

    user: str
    home: str = "/"
    shell: str = "/bin/sh"

    @property
    def run_as(self) -> RunAs:
        return RunAs(user=self.user)


@dataclass(frozen=True, slots=True)
class AliasMap:
    spec: str
    table: Table
    rights: Rights | None        # None: the table is root's, default_privs applies
    signature: tuple[int, int] | None = None   # the file's (inode, mtime): a rebuilt table is reopened


@dataclass(slots=True)
class Expansion:
    """One recipient of the job, with everything its expansion found."""

    job: DeliveryJob
    recipient: Recipient
    delivered_to: set[str]
    seen: set[tuple] = field(default_factory=set)
    results: list[DeliveryResult] = field(default_factory=list)
    forwards: dict[str, list[Recipient]] = field(default_factory=dict)   # by envelope sender


@dataclass(frozen=True, slots=True)
class Branch:
    """Where in the expansion a destination was found (Postfix's msg_attr and usr_attr)."""

    address: str
    level: int = 0
    kind: str = ""               # "", ALIAS, FORWARD or INCLUDE: what listed it
    expanded_from: str = ""      # the alias or user whose expansion this is
    rights: Rights | None = None
    owner: str = ""              # the user whose .forward, or owner- alias, this came from
    sender: str = ""


class Accounts:
    """The passwd database (a test gives its own)."""

    def by_name(self, name: str) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            return None

    def by_uid(self, uid: int) -> pwd.struct_passwd | None:
        try:
            return pwd.getpwuid(uid)
        except KeyError:
            return None


class LocalAgent:
    def __init__(self, settings: LocalSettings, spawner: Spawner, log: Log, aliases: list[AliasMap],
                 is_local_domain, forwarder: Forwarder | None = None, transport: str = "local",
                 parameter=None, accounts: Accounts | None = None):
        self.settings = settings
        self.spawner = spawner
        self.log = log
        self.aliases = aliases
        self.is_local_domain = is_local_domain
        self.forwarder = forwarder
        self.transport = transport
        self._parameter = parameter or (lambda name: None)
        self.accounts = accounts or Accounts()

    @classmethod
    def from_config(cls, config: Config, spawner: Spawner, log: Log, forwarder: Forwarder | None = None,
                    transport: str = "local", accounts: Accounts | None = None) -> LocalAgent:
        accounts = accounts or Accounts()
        settings = LocalSettings.from_config(config)
        aliases = open_alias_maps(settings.alias_maps, lambda text: log.warning(transport, text), accounts)
        return cls(settings, spawner, log, aliases, local_domain_matcher(config), forwarder, transport,
                   config.raw, accounts)

    # --- the DeliveryAgent interface

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]:
        try:
            self.aliases = refresh_alias_maps(self.aliases, lambda text: self.log.warning(self.transport, text),
                                              self.accounts)
        except TableError as problem:
            return [outcome.local_trouble(f"alias database unavailable: {problem}")] * len(job.recipients)
        delivered_to = _delivered_to_headers(job.content)
        return [await self._deliver_recipient(job, recipient, delivered_to) for recipient in job.recipients]

    def forget_dead_destinations(self) -> None:
        pass

    def close(self) -> None:
        for alias_map in self.aliases:
            alias_map.table.close()
        self.aliases = []

    # --- one recipient

    async def _deliver_recipient(self, job: DeliveryJob, recipient: Recipient,
                                 delivered_to: set[str]) -> DeliveryResult:
        expansion = Expansion(job, recipient, delivered_to)
        await self._address(expansion, Branch(recipient.address, sender=job.message.sender))
        await self._send_forwards(expansion)
        if not expansion.results:
            # Everything it expanded to was a duplicate of something delivered: nothing is lost.
            return outcome.local_delivered("delivered to duplicate destinations")
        return outcome.local_combined(expansion.results)

    async def _address(self, expansion: Expansion, branch: Branch) -> None:
        """deliver_recipient: checks, then the switch."""
        if branch.level > NESTING_LIMIT:
            self.log.warning(self.transport, f"{expansion.job.message.queue_id}: recipient nesting limit "
                                             f"exceeded for {branch.address}")
            return self._add(expansion, outcome.local_nesting_limit())
        if not self._first_time(expansion, ("recipient", branch.level, branch.address.lower())):
            return
        if branch.address.lower() in expansion.delivered_to:
            return self._add(expansion, outcome.local_forwarding_loop(branch.address))
        local, _, domain = branch.address.lower().rpartition("@") if "@" in branch.address \
            else (branch.address.lower(), "", "")
        user, extension = self._split_extension(local)
        if not user:
            return self._add(expansion, outcome.local_null_username(branch.address))
        await self._switch(expansion, branch, Target(branch.address, local, user, extension, domain))

    def _split_extension(self, local: str) -> tuple[str, str | None]:
        delimiters = self.settings.recipient_delimiter
        if not delimiters:
            return local, None
        for index, char in enumerate(local):
            if char in delimiters and index > 0:
                extension = local[index + 1:]
                if "/" in extension:
                    return local[:index], None     # an extension with a slash is dropped (recipient.c)
                return local[:index], extension
        return local, None

    async def _switch(self, expansion: Expansion, branch: Branch, target: Target) -> None:
        """deliver_switch: aliases, then forwarding, then .forward, mailbox, unknown user."""
        if await self._alias(expansion, branch, target, target.local):
            return
        if target.extension is not None and await self._alias(expansion, branch, target, target.user):
            return
        if branch.owner and branch.owner != target.user:
            return self._forward(expansion, branch, branch.address)
        if branch.kind == INCLUDE:
            return self._forward(expansion, branch, branch.address)
        account = self.accounts.by_name(target.user)
        if account is not None:
            if await self._dot_forward(expansion, branch, target, account):
                return
            return await self._mailbox(expansion, branch, target, account)
        await self._unknown(expansion, branch, target)

    # --- aliases

    async def _alias(self, expansion: Expansion, branch: Branch, target: Target, name: str) -> bool:
        if branch.expanded_from and branch.expanded_from.lower() == name:
            return False     # an alias that lists its own name delivers to the user
        for alias_map in self.aliases:
            result = await alias_map.table.lookup(name)
            if result.status == TEMPFAIL:
                self._add(expansion, outcome.local_trouble(
                    f"alias database unavailable: {alias_map.table.spec}: {result.reason or 'lookup failed'}"))
                return True
            if result.status != FOUND:
                continue
            if branch.level >= NESTING_LIMIT:
                self._add(expansion, outcome.local_alias_loop(name))
                return True
            rights = alias_map.rights or self._default_rights()
            sender = branch.sender
            if self.settings.owner_request_special and not name.startswith("owner-"):
                owner = await self._lookup_alias(f"owner-{name}")
                if owner is not None:
                    sender = f"owner-{name}@{self.settings.myorigin}"
            destinations = split_destinations(result.value or "")
            if not destinations:
                self._add(expansion, outcome.local_trouble("alias database unavailable"))
                self.log.warning(self.transport, f"no recipient in alias lookup result for {name}")
                return True
            child = Branch(branch.address, branch.level + 1, ALIAS, name, rights,
                           owner=f"owner-{name}" if sender != branch.sender else "", sender=sender)
            for destination in destinations:
                await self._destination(expansion, child, target, destination)
            return True
        return False

    async def _lookup_alias(self, name: str) -> str | None:
        for alias_map in self.aliases:
            result = await alias_map.table.lookup(name)
            if result.status == FOUND:
                return result.value
        return None

    # --- one destination of an alias, .forward or :include: (token.c)

    async def _destination(self, expansion: Expansion, branch: Branch, target: Target, item: str) -> None:
        if item.lower().startswith(":include:"):
            return await self._include(expansion, branch, target, item[len(":include:"):].strip())
        if item.startswith("|"):
            return await self._command(expansion, branch, target, item[1:].strip())
        if item.startswith("/"):
            return await self._file(expansion, branch, target, item)
        address = item[1:] if item.startswith("\\") else item
        address = address.strip("<>").strip()
        if not address:
            return
        domain = address.rpartition("@")[2].lower() if "@" in address else ""
        if domain and not self.is_local_domain(domain):
            return self._forward(expansion, branch, address)
        if not domain:
            address = f"{address}@{self.settings.myorigin}"
        await self._address(expansion, replace(branch, address=address, level=branch.level + 1))

    async def _include(self, expansion: Expansion, branch: Branch, target: Target, path: str) -> None:
        if not path.startswith("/"):
            return self._add(expansion, outcome.local_bad_destination(
                f":include:{path} is not an absolute path name: write :include:/full/path"))
        if not self._first_time(expansion, ("include", path, branch.rights)):
            return
        rights = branch.rights or self._default_rights()
        try:
            status = os.stat(path)
        except OSError as problem:
            return self._add(expansion, outcome.local_trouble(f"cannot open include file {path}: "
                                                              f"{problem.strerror}"))
        if status.st_uid != 0:
            owner = _rights(self.accounts.by_uid(status.st_uid))
            if owner is None:
                return self._add(expansion, outcome.local_trouble(
                    f"cannot find the owner (uid {status.st_uid}) of include file {path}"))
            rights = owner
        text = await self._read_as(expansion, rights, path, "include file")
        if text is None:
            return
        child = replace(branch, kind=INCLUDE, rights=rights, level=branch.level + 1)
        for destination in _destinations_of_file(text):
            await self._destination(expansion, child, target, destination)

    async def _command(self, expansion: Expansion, branch: Branch, target: Target, command: str) -> None:
        if branch.kind and branch.kind not in self.settings.allow_mail_to_commands:
            return self._add(expansion, outcome.local_restricted("command"))
        rights = branch.rights or self._default_rights()
        if not self._first_time(expansion, ("command", rights.user, command)):
            return
        content = self._with_headers(expansion, branch, "command" in self.settings.prepend_delivered_header)
        request = CommandRequest(rights.run_as, ("/bin/sh", "-c", command), content,
                                 env=self._environment(expansion, branch, target, rights),
                                 cwd=_directory_or_root(rights.home),
                                 time_limit=self.settings.command_time_limit)
        result = await self.spawner.run_command(request)
        self._add(expansion, outcome.local_command_result(command, result, f"delivered to command: {command}"))

    async def _file(self, expansion: Expansion, branch: Branch, target: Target, path: str) -> None:
        if branch.kind and branch.kind not in self.settings.allow_mail_to_files:
            return self._add(expansion, outcome.local_restricted("file"))
        rights = branch.rights or self._default_rights()
        if not self._first_time(expansion, ("file", path)):
            return
        maildir = path.endswith("/")
        content = self._with_headers(expansion, branch, "file" in self.settings.prepend_delivered_header)
        result = await self.spawner.store_in_mailbox(
            self._mailbox_request(expansion, rights.run_as, path, content, branch))
        if result.stored:
            return self._add(expansion, outcome.local_delivered(
                f"delivered to {'maildir' if maildir else 'file'}: {path}"))
        self._add(expansion, outcome.local_mailbox_failed(path, rights.user, result, maildir))

    # --- a user of this host

    async def _dot_forward(self, expansion: Expansion, branch: Branch, target: Target,
                           account: pwd.struct_passwd) -> bool:
        if branch.expanded_from and branch.expanded_from.lower() == target.user:
            return False     # the user's .forward names the user: the mailbox
        rights = Rights(account.pw_name, account.pw_dir, account.pw_shell)
        attributes = self._attributes(expansion, branch, target, rights)
        for pattern in self.settings.forward_path:
            path = expand_local(pattern, attributes, self._parameter)
            if not path or not path.startswith("/"):
                continue
            try:
                status = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError:
                status = None      # not visible to mail_owner: the user's own read decides
            if status is not None and status.st_uid != account.pw_uid:
                self.log.warning(self.transport, f"file {path} has bad owner uid {status.st_uid}; "
                                                 f"it must belong to {account.pw_name}: it is ignored")
                continue
            if not self._first_time(expansion, ("forward", path)):
                return True
            text = await self._read_as(expansion, rights, path, "forward file", missing_ok=status is None)
            if text is None:
                if status is None:
                    continue
                return True
            destinations = _destinations_of_file(text)
            if not destinations:
                continue
            child = Branch(branch.address, branch.level + 1, FORWARD, target.user, rights,
                           owner=target.user, sender=branch.sender)
            for destination in destinations:
                await self._destination(expansion, child, target, destination)
            return True
        return False

    async def _mailbox(self, expansion: Expansion, branch: Branch, target: Target,
                       account: pwd.struct_passwd) -> None:
        if not self._first_time(expansion, ("mailbox", account.pw_name)):
            return
        if account.pw_uid == 0:
            return self._add(expansion, outcome.local_root_mailbox(account.pw_name))
        rights = Rights(account.pw_name, account.pw_dir, account.pw_shell)
        content = self._with_headers(expansion, branch, True)
        settings = self.settings
        if settings.mailbox_command:
            # As written, not $-expanded (postconf(5)): /bin/sh expands "$EXTENSION" and the
            # rest from the environment below, as for Postfix's local(8).
            command = settings.mailbox_command
            request = CommandRequest(rights.run_as, ("/bin/sh", "-c", command), content,
                                     env=self._environment(expansion, branch, target, rights),
                                     cwd=_directory_or_root(rights.home), time_limit=settings.command_time_limit)
            result = await self.spawner.run_command(request)
            return self._add(expansion, outcome.local_command_result(
                command, result, f"delivered to command: {command}"))
        run_as, path = self._mailbox_path(account)
        maildir = path.endswith("/")
        result = await self.spawner.store_in_mailbox(self._mailbox_request(expansion, run_as, path, content, branch))
        if result.stored:
            return self._add(expansion, outcome.local_delivered(
                "delivered to maildir" if maildir else "delivered to mailbox"))
        self._add(expansion, outcome.local_mailbox_failed(path, account.pw_name, result, maildir))

    def _mailbox_path(self, account: pwd.struct_passwd) -> tuple[RunAs, str]:
        """Where the user's mailbox is. For mail_spool_directory/USER the spawner itself gives
        Postfix's spool rights (the spool's group, or a mailbox made by root): spool_access."""
        run_as = RunAs(user=account.pw_name)
        if self.settings.home_mailbox:
            return run_as, os.path.join(account.pw_dir, self.settings.home_mailbox)
        spool = self.settings.mail_spool_directory
        if spool.endswith("/"):
            return run_as, f"{spool}{account.pw_name}/"
        return run_as, os.path.join(spool, account.pw_name)

    async def _unknown(self, expansion: Expansion, branch: Branch, target: Target) -> None:
        relay = self.settings.luser_relay
        if relay:
            rights = self._default_rights()
            expanded = expand_local(relay, self._attributes(expansion, branch, target, rights), self._parameter)
            if expanded:
                child = replace(branch, level=branch.level + 1, expanded_from=target.user)
                for destination in split_destinations(expanded):
                    await self._destination(expansion, child, target, destination)
                return
        self._add(expansion, outcome.local_unknown_user(target.user))

    # --- forwarding: a new message through cleanup

    def _forward(self, expansion: Expansion, branch: Branch, address: str) -> None:
        if not self._first_time(expansion, ("forward-to", address.lower())):
            return
        original = expansion.recipient
        orcpt = original.orcpt or (f"rfc822;{original.address}" if self.settings.enable_original_recipient
                                   else None)
        expansion.forwards.setdefault(branch.sender, []).append(
            Recipient(address, orcpt=orcpt, notify=_without_success(original.notify)))

    async def _send_forwards(self, expansion: Expansion) -> None:
        for sender, recipients in expansion.forwards.items():
            if self.forwarder is None:
                self._add(expansion, outcome.local_forward_failed(
                    "no forwarding path into the queue in this process"))
                continue
            message = expansion.job.message
            headers = b""
            if "forward" in self.settings.prepend_delivered_header:
                headers = f"Delivered-To: {expansion.recipient.address}\r\n".encode("utf-8", "surrogateescape")
            copy = NewMessage(sender=sender, recipients=recipients, content=headers + expansion.job.content,
                              client=message.client, origin="local", dsn_ret=message.dsn_ret,
                              dsn_envid=message.dsn_envid, body_type=message.body_type,
                              smtputf8=message.smtputf8)
            try:
                queue_id = await self.forwarder.forward(copy)
            except ForwardError as problem:
                self._add(expansion, outcome.local_forward_failed(str(problem)))
                continue
            self._add(expansion, outcome.local_forwarded(queue_id))

    # --- helpers

    @staticmethod
    def _add(expansion: Expansion, result: DeliveryResult) -> None:
        expansion.results.append(result)

    @staticmethod
    def _first_time(expansion: Expansion, key: tuple) -> bool:
        """Postfix's duplicate filter: one delivery per destination within one recipient's expansion."""
        if key in expansion.seen:
            return False
        expansion.seen.add(key)
        return True

    def _default_rights(self) -> Rights:
        name = self.settings.default_privs
        return _rights(self.accounts.by_name(name)) or Rights(name)

    def _attributes(self, expansion: Expansion, branch: Branch, target: Target,
                    rights: Rights) -> dict[str, str | None]:
        client = expansion.job.message.client
        return {
            "user": target.user, "home": rights.home, "shell": rights.shell, "local": target.local,
            "extension": target.extension or None, "domain": target.domain or None,
            "recipient": branch.address, "recipient_delimiter": self.settings.recipient_delimiter or None,
            "sender": branch.sender, "mailbox": target.local,
            "client_address": client.address, "client_hostname": client.name, "client_helo": client.helo,
            "client_protocol": client.protocol, "sasl_method": None, "sasl_sender": None,
            "sasl_username": client.sasl_username or None,
        }

    def _environment(self, expansion: Expansion, branch: Branch, target: Target,
                     rights: Rights) -> tuple[tuple[str, str], ...]:
        """The environment local(8) gives a |command (command.c), censored by command_expansion_filter."""
        message = expansion.job.message
        client = message.client
        pairs = [("HOME", rights.home), ("LOGNAME", target.user), ("USER", target.user),
                 ("SENDER", branch.sender), ("RECIPIENT", branch.address), ("LOCAL", target.local),
                 ("SHELL", rights.shell)]
        if target.domain:
            pairs.append(("DOMAIN", target.domain))
        if target.extension:
            pairs.append(("EXTENSION", target.extension))
        original = _original_recipient(expansion.recipient)
        if original:
            pairs.append(("ORIGINAL_RECIPIENT", original))
        if message.dsn_envid:
            pairs.append(("ENVID", message.dsn_envid))
        for name, value in (("CLIENT_HOSTNAME", client.name), ("CLIENT_ADDRESS", client.address),
                            ("CLIENT_HELO", client.helo), ("CLIENT_PROTOCOL", client.protocol),
                            ("SASL_USERNAME", client.sasl_username)):
            if value:
                pairs.append((name, value))
        allowed = self.settings.command_expansion_filter
        env = [(name, censor(value, allowed)) for name, value in pairs]
        env.append(("PATH", _DEFAULT_PATH))
        for name in self.settings.export_environment:
            name, equals, value = name.partition("=")
            if equals:
                env.append((name, value))
            elif name in os.environ:
                env.append((name, os.environ[name]))
        return tuple(env)

    def _with_headers(self, expansion: Expansion, branch: Branch, delivered_to: bool) -> bytes:
        """The message with LF line ends, behind Return-Path:, X-Original-To: and Delivered-To:."""
        headers = [f"Return-Path: <{branch.sender}>"]
        original = _original_recipient(expansion.recipient)
        if original and self.settings.enable_original_recipient:
            headers.append(f"X-Original-To: {original}")
        if delivered_to:
            headers.append(f"Delivered-To: {expansion.recipient.address}")
        top = "\n".join(headers).encode("utf-8", "surrogateescape") + b"\n"
        return top + expansion.job.content.replace(b"\r\n", b"\n")

    def _mailbox_request(self, expansion: Expansion, run_as: RunAs, path: str, content: bytes,
                         branch: Branch) -> MailboxRequest:
        return MailboxRequest(run_as, path, content, sender=branch.sender,
                              maildir_name=maildir_name(expansion.job.message, expansion.recipient.address, path),
                              arrival_time=expansion.job.message.arrival_time, size_limit=self.settings.mailbox_size_limit,
                              locks=self.settings.mailbox_delivery_lock,
                              lock_attempts=self.settings.deliver_lock_attempts,
                              lock_delay=self.settings.deliver_lock_delay,
                              stale_lock_time=self.settings.stale_lock_time)

    async def _read_as(self, expansion: Expansion, rights: Rights, path: str, what: str,
                       missing_ok: bool = False) -> str | None:
        """A .forward or :include: file, read with `rights` (by the spawner: `cat` as that user).
        None, with the result recorded, when it cannot be read."""
        request = CommandRequest(rights.run_as, ("/bin/cat", "--", path), b"", env=(("PATH", _DEFAULT_PATH),),
                                 time_limit=60.0, output_limit=1 << 20)
        result = await self.spawner.run_command(request)
        if result.exit_status == 0:
            return result.output.decode("utf-8", "surrogateescape")
        if missing_ok:
            return None
        said = result.error or result.output.decode("utf-8", "replace").strip() or "cannot read it"
        self._add(expansion, outcome.local_trouble(f"cannot open {what} {path} as {rights.user}: {said}"))
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """The recipient address being delivered, split as local(8) splits it."""

    address: str
    local: str                   # folded local part, extension included
    user: str                    # the local part without the extension
    extension: str | None
    domain: str


def open_alias_maps(specs: list[str], warn, accounts: Accounts | None = None) -> list[AliasMap]:
    """alias_maps, each table with the rights its |commands and /files get. A `nis:` table is
    skipped with a warning (mailferry has no NIS client); one that cannot be opened raises
    TableError, and the local transport waits until it can."""
    maps = []
    for spec in specs:
        if split_spec(spec)[0] == "nis":
            warn(f"alias_maps: {spec}: mailferry has no NIS client; this table is skipped")
            continue
        maps.append(_open_alias_map(spec, warn, accounts or Accounts()))
    return maps


def refresh_alias_maps(maps: list[AliasMap], warn, accounts: Accounts) -> list[AliasMap]:
    """Reopen each table whose file changed since it was opened (`mailferry newaliases` replaces
    it): new aliases apply to the next delivery, as in Postfix, with no reload."""
    fresh = []
    for alias_map in maps:
        if alias_map.signature is not None and _signature(alias_map.table) != alias_map.signature:
            reopened = _open_alias_map(alias_map.spec, warn, accounts)
            alias_map.table.close()
            alias_map = reopened
        fresh.append(alias_map)
    return fresh


def _open_alias_map(spec: str, warn, accounts: Accounts) -> AliasMap:
    type_name, name = split_spec(spec)
    try:
        table: Table = AliasTextTable(name) if type_name == "texthash" else open_table(spec)
    except TableError as problem:
        if "mailferry postmap" not in problem.message:
            raise
        # An alias table is built from aliases(5) syntax: postmap would misread it.
        raise TableError(f"{problem.message.split('; ')[0]}; build it with: mailferry newaliases {spec}",
                         problem.file) from None
    for text in getattr(table, "warnings", ()):
        warn(text)
    return AliasMap(spec, table, _table_rights(table, accounts), _signature(table))


def _table_file(table: Table) -> str | None:
    return getattr(table, "path", None) or (table.name if table.type_name == "texthash" else None)


def _signature(table: Table) -> tuple[int, int] | None:
    path = _table_file(table)
    if not path:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return (0, 0)
    return status.st_ino, status.st_mtime_ns


def _table_rights(table: Table, accounts: Accounts) -> Rights | None:
    """Postfix runs an alias's |command and /file as the owner of the alias database,
    or as default_privs when root owns it (a table that is not a file: root's)."""
    path = _table_file(table)
    if not path:
        return None
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    if uid == 0:
        return None
    owner = _rights(accounts.by_uid(uid))
    if owner is None:
        raise TableError(f"no account has uid {uid}, the owner of the alias database", path)
    return owner


def maildir_name(message: QueuedMessage, recipient: str, path: str) -> str:
    """The Maildir file name of this message for this recipient in this Maildir; "" for an mbox.
    The same on every try: a delivery repeated because a crash came before the queue recorded
    it finds its file already in new/ (delivery/mailbox.py), so the message is there once."""
    if not path.endswith("/"):
        return ""
    digest = hashlib.sha256(f"{recipient.lower()}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(message.arrival_time)}.Q{message.queue_id}R{digest}.{host}"


def _rights(account: pwd.struct_passwd | None) -> Rights | None:
    return None if account is None else Rights(account.pw_name, account.pw_dir, account.pw_shell)


def _destinations_of_file(text: str) -> list[str]:
    """A .forward or :include: file: destinations separated by commas or new lines; # comments."""
    destinations = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        destinations += split_destinations(line)
    return destinations


def _delivered_to_headers(content: bytes) -> set[str]:
    """The addresses of the message's Delivered-To: headers, folded: the loop check's memory."""
    found = set()
    for line in content.split(b"\r\n"):
        if not line:
            break
        if line[:13].lower() == b"delivered-to:":
            found.add(line[13:].strip().decode("utf-8", "surrogateescape").lower())
    return found


def _original_recipient(recipient: Recipient) -> str:
    kind, _, original = (recipient.orcpt or "").partition(";")
    if kind.strip().lower() == "rfc822" and original.strip():
        return original.strip()
    return recipient.address


def _without_success(notify: str | None) -> str | None:
    """DSN: the copies an alias makes notify as the original asked, except SUCCESS (alias.c)."""
    if not notify:
        return notify
    kept = [word for word in notify.split(",") if word.strip().upper() != "SUCCESS"]
    return ",".join(kept) if kept else "NEVER"


def _directory_or_root(path: str) -> str:
    return path if path and os.path.isdir(path) else "/"
