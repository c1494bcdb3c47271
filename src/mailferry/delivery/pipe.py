"""pipe(8): hand a message to an external command, as a master.cf service describes it.

    cyrus unix - n n - - pipe
      flags=R user=cyrus argv=/usr/lib64/cyrus-imapd/deliver -e -r ${sender} -m ${extension} ${user}

The facts follow Postfix's pipe(8) manual and src/pipe/pipe.c,
src/global/pipe_command.c and src/global/mail_copy.c:

- `argv=` words are expanded per pipe(8): `$name`, `${name}`, `$(name)`, `$$`.
  A word holding a per-recipient macro (recipient, original_recipient, user,
  extension, mailbox, domain) becomes one argument per recipient. An
  unknown macro name is a configuration error.
- The message is written to the command's standard input with the queue's
  CRLF line ends turned into `eol=` (default LF), led by the From_ line and
  the Return-Path:, X-Original-To: and Delivered-To: headers its `flags=`
  ask for, with `.` and `>From ` quoting and a blank line at the end when
  asked.
- The command runs as `user=` (never root nor mail_owner), with only the
  `export_environment` variables and PATH=/usr/bin:/bin, killed after
  `<service>_time_limit` ($command_time_limit). The spawner runs it:
  this agent never forks or changes its own rights.
- Up to `<service>_destination_recipient_limit` recipients go to one command.

Where mailferry differs, on purpose (docs/pipe.md says so too):
- Postfix expands each per-recipient word on its own, so the seed's
  `-m ${extension} ${user}` with two recipients becomes
  `-m ext1 ext2 user1 user2`, and refuses flags D and O for more than one
  recipient (it defers with "mail system configuration error" until
  `<service>_destination_recipient_limit = 1` is set). mailferry runs one
  command per recipient in those cases, which is what that setting asks
  Postfix for; `mailferry check` suggests setting it.
- A command that exceeds its time limit is deferred (4.3.0), not bounced:
  the usual cause is a mail store that is stuck for now.
- The working directory is `directory=`, else `/` (Postfix's is its queue
  directory, which mailferry keeps private to mail_owner).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailferry.config.mastercf import PipeSpec, Service
from mailferry.config.pipe_service import (PER_RECIPIENT_MACROS, MacroError, account_problem, check_argv,
                                           needs_one_command_per_recipient, parse_word)
from mailferry.delivery import outcome
from mailferry.delivery.destinations import Destinations
from mailferry.delivery.settings import per_transport
from mailferry.delivery.smtp import DeliveryJob
from mailferry.delivery.spawn import CommandRequest, RunAs, Spawner
from mailferry.maillog import Log
from mailferry.message import DeliveryResult, QueuedMessage, Recipient
from mailferry.protocol.address import quote_local_part

# pipe_command() resets the command search path to <paths.h>'s _PATH_DEFPATH.
COMMAND_PATH = "/usr/bin:/bin"
MAILER_DAEMON = "MAILER-DAEMON"


# --- argv=: the macros' values (config/pipe_service.py reads the words) ---------------------------

def split_extension(localpart: str, delimiters: str) -> tuple[str, str | None]:
    """(user, extension) per recipient_delimiter, with Postfix's split_addr() exceptions:
    postmaster and MAILER-DAEMON are never split, nor owner-foo and foo-request when
    `-` is a delimiter, nor a name that would be left empty."""
    lowered = localpart.lower()
    if not delimiters or lowered in ("postmaster", MAILER_DAEMON.lower()):
        return localpart, None
    if "-" in delimiters and (lowered.startswith("owner-") or
                              (len(lowered) > 8 and lowered.endswith("-request"))):
        return localpart, None
    for index, char in enumerate(localpart):
        if char in delimiters:
            if index == 0:
                return localpart, None
            return localpart[:index], localpart[index + 1:]
    return localpart, None


def fold_address(address: str, flags: str) -> str:
    """Flag u lowercases the local part (all of an address without @), h the domain."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower() if "u" in flags else address
    return (local.lower() if "u" in flags else local) + "@" + (domain.lower() if "h" in flags else domain)


def quote_address(address: str) -> str:
    """Postfix's quote_822_local(): quote the local part (left of the rightmost @) when needed."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    quoted = quote_local_part(local) if local else '""'
    return quoted + at + domain


def _morph(address: str, flags: str) -> str:
    return fold_address(quote_address(address) if "q" in flags else address, flags)


def recipient_values(recipient: Recipient, flags: str, delimiters: str) -> dict[str, str]:
    """The per-recipient macros for one recipient, as pipe.c's expand_argv() makes them."""
    address = recipient.address
    folded = fold_address(address, flags)
    local, at, domain = folded.rpartition("@")
    if not at:
        local, domain = folded, ""
    user, extension = split_extension(local, delimiters)
    return {"recipient": _morph(address, flags),
            "original_recipient": _morph(original_recipient(recipient), flags),
            "user": user, "extension": extension or "", "mailbox": local, "domain": domain}


def original_recipient(recipient: Recipient) -> str:
    """The address as given to us, before rewriting: ORCPT's rfc822 address, else the address."""
    kind, _, original = (recipient.orcpt or "").partition(";")
    original = original.strip()
    return original if kind.strip().lower() == "rfc822" and original else recipient.address


def message_values(message: QueuedMessage, nexthop: str, spec: PipeSpec) -> dict[str, str]:
    """The macros that are the same for every recipient of the message."""
    sender = message.sender or spec.null_sender
    client = message.client
    return {
        # A non-empty null_sender replacement is quoted too, the empty sender never.
        "sender": quote_address(sender) if sender and "q" in spec.flags else sender,
        "nexthop": nexthop.lower() if "h" in spec.flags else nexthop,
        "size": str(message.size), "queue_id": message.queue_id, "envid": message.dsn_envid or "",
        "client_address": client.address, "client_hostname": client.name,
        "client_port": str(client.port) if client.port else "", "client_protocol": client.protocol,
        "client_helo": client.helo, "sasl_method": "", "sasl_username": client.sasl_username,
        "sasl_sender": "",
    }


def expand_argv(argv: Sequence[str], recipients: Sequence[Recipient], values: dict[str, str],
                flags: str = "", delimiters: str = "") -> list[str]:
    """The command line for `recipients`: a word with a per-recipient macro once per recipient."""
    expanded: list[str] = []
    for word in argv:
        pieces = parse_word(word)
        if not any(is_macro and text in PER_RECIPIENT_MACROS for is_macro, text in pieces):
            expanded.append(_fill(pieces, values))
            continue
        for recipient in recipients:
            expanded.append(_fill(pieces, {**values, **recipient_values(recipient, flags, delimiters)}))
    return expanded


def _fill(pieces: list[tuple[bool, str]], values: dict[str, str]) -> str:
    return "".join(values.get(text, "") if is_macro else text for is_macro, text in pieces)


# --- the content on the command's standard input -------------------------------------------------

def command_input(content: bytes, flags: str, eol: bytes = b"\n", sender: str = "",
                  original: str = "", delivered: str = "", now: float | None = None) -> bytes:
    """What mail_copy() writes: the requested envelope lines and headers, then the message
    (CRLF turned into `eol`, `.` and `>From ` quoting per flags), then a blank line for B.
    `sender` is the envelope sender after the null_sender replacement."""
    head: list[bytes] = []
    quoted_sender = quote_address(sender) if sender else ""
    if "F" in flags:
        stamp = time.asctime(time.localtime(time.time() if now is None else now))
        head.append(f"From {quoted_sender or MAILER_DAEMON}  {stamp}".encode())
    if "R" in flags:
        head.append(f"Return-Path: <{quoted_sender}>".encode())
    if "O" in flags and original:
        head.append(f"X-Original-To: {quote_address(original)}".encode())
    if "D" in flags:
        head.append(f"Delivered-To: {quote_address(delivered)}".encode())
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()     # the last line's end, not an empty line
    out = bytearray()
    for line in head:
        out += line + eol
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if ">" in flags and line.startswith(b"From "):
            out += b">"
        if "." in flags and line.startswith(b"."):
            out += b"."
        out += line + eol
    if "B" in flags:
        out += eol
    return bytes(out)


def delivered_to(content: bytes) -> set[str]:
    """The addresses of the Delivered-To: headers in the message's header, lowercased."""
    found = set()
    for line in content.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue    # a folded header's continuation
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            found.add(value.strip().decode("utf-8", "replace").lower())
    return found


# --- settings: the service's attributes and the parameters it reads ------------------------------

@dataclass(frozen=True, slots=True)
class PipeSettings:
    service: str                     # the master.cf name: the relay= word and the log's service
    where: str                       # "master.cf, line N" for messages about the service
    spec: PipeSpec
    run_as: RunAs
    time_limit: float                # <service>_time_limit, else command_time_limit
    recipient_limit: int             # <service>_destination_recipient_limit
    concurrency_limit: int           # <service>_destination_concurrency_limit
    recipient_delimiter: str
    environment: tuple[tuple[str, str], ...]

    @classmethod
    def from_config(cls, config, service: Service, master_path: str,
                    environ: dict[str, str] | None = None) -> PipeSettings:
        """`config`: main.cf as the service sees it (with its -o options). Raises ValueError,
        naming the master.cf line, for what Postfix's pipe refuses to start with."""
        where = f"{master_path}, line {service.line}"
        spec = service.pipe
        if spec is None:
            raise ValueError(f"{where}: service {service.name}: its pipe attributes are not valid "
                             "(mailferry check says why)")
        try:
            check_argv(spec.argv)
        except MacroError as problem:
            raise ValueError(f"{where}: service {service.name}: {problem}") from None
        if spec.chroot:
            raise ValueError(f"{where}: service {service.name}: mailferry does not support pipe's chroot=; "
                             "remove it")
        return cls(
            service=service.name, where=where, spec=spec,
            run_as=pipe_account(spec, config.get("mail_owner"), config.get("setgid_group"),
                                f"{where}: service {service.name}"),
            time_limit=float(config.time(_per_service(config, service.name, "time_limit", "command_time_limit"))),
            recipient_limit=per_transport(config, service.name, "destination_recipient_limit"),
            concurrency_limit=per_transport(config, service.name, "destination_concurrency_limit"),
            recipient_delimiter=config.get("recipient_delimiter"),
            environment=command_environment(config.list("export_environment"),
                                            os.environ if environ is None else environ, config.config_dir))


def _per_service(config, service: str, suffix: str, fallback: str) -> str:
    name = f"{service}_{suffix}"
    return name if config.raw(name) is not None else fallback


def pipe_account(spec: PipeSpec, mail_owner: str, setgid_group: str, where: str) -> RunAs:
    """user=name[:group] as RunAs, or ValueError naming `where` when pipe(8) refuses it."""
    problem = account_problem(spec.user, spec.group, mail_owner, setgid_group)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return RunAs(user=spec.user, group=spec.group or "")


def command_environment(export: Sequence[str], environ: dict[str, str],
                        config_directory: str) -> tuple[tuple[str, str], ...]:
    """What pipe_command() leaves the command: the export_environment names present in the
    daemon's environment (`name=value` items as given), then PATH. MAIL_CONFIG, which
    postfix(1) puts in every daemon's environment, is the configuration directory."""
    environment: dict[str, str] = {}
    for item in export:
        name, equals, value = item.partition("=")
        if equals:
            environment[name] = value
        elif name in environ:
            environment[name] = environ[name]
        elif name == "MAIL_CONFIG":
            environment[name] = config_directory
    environment["PATH"] = COMMAND_PATH
    return tuple(environment.items())


# --- the agent -----------------------------------------------------------------------------------

class PipeAgent:
    """One master.cf pipe service: DeliveryAgent for delivery/agents.py's Transports."""

    def __init__(self, settings: PipeSettings, spawner: Spawner, log: Log):
        self.settings = settings
        self.spawner = spawner
        self.log = log
        self.destinations = Destinations(settings.concurrency_limit)

    async def deliver(self, job: DeliveryJob) -> list[DeliveryResult]:
        spec = self.settings.spec
        if spec.size and job.message.size > spec.size:
            return [outcome.pipe_too_big(self.settings.service)] * len(job.recipients)
        results: dict[int, DeliveryResult] = {}
        for batch in self.batches(job.recipients):
            async with self.destinations.slot(job.nexthop):
                for recipient, result in zip(batch, await self._run(job, batch)):
                    results[id(recipient)] = result
        return [results[id(recipient)] for recipient in job.recipients]

    def batches(self, recipients: Sequence[Recipient]) -> list[list[Recipient]]:
        spec = self.settings.spec
        size = 1 if needs_one_command_per_recipient(spec.argv, spec.flags) else self.settings.recipient_limit
        return [list(recipients[start:start + size]) for start in range(0, len(recipients), size)]

    async def _run(self, job: DeliveryJob, batch: list[Recipient]) -> list[DeliveryResult]:
        settings, spec = self.settings, self.settings.spec
        service = settings.service
        if "D" in spec.flags and batch[0].address.lower() in delivered_to(job.content):
            return [outcome.pipe_loop(batch[0].address, service)]
        sender = job.message.sender or spec.null_sender
        argv = expand_argv(spec.argv, batch, message_values(job.message, job.nexthop, spec),
                           spec.flags, settings.recipient_delimiter)
        stdin = command_input(job.content, spec.flags, spec.eol.encode("utf-8", "surrogateescape"), sender,
                              original_recipient(batch[0]), batch[0].address)
        request = CommandRequest(run_as=settings.run_as, argv=tuple(argv), stdin=stdin,
                                 env=settings.environment, cwd=spec.directory or "/",
                                 time_limit=settings.time_limit)
        started = time.monotonic()
        try:
            result = await self.spawner.run_command(request)
        except OSError as problem:
            return [outcome.pipe_spawner_unavailable(problem, service)] * len(batch)
        answer = outcome.pipe_result(result, argv[0], service)
        answer.transfer_seconds = time.monotonic() - started     # the log's delays=a/b/c/d: d
        return [answer] * len(batch)

    def forget_dead_destinations(self) -> None:
        """A command has no dead sites to forget: each message runs it again."""

    def close(self) -> None:
        """Nothing stays open between deliveries."""
