"""cleanup_service_name: the cleanup services master.cf defines, each with its own -o overrides.

Postfix's smtpd and pickup hand each message to the cleanup service that their
cleanup_service_name names (main.cf's, or the service's `-o cleanup_service_name=`), and
that cleanup(8) process reads main.cf with ITS master.cf -o overrides on top. Public
setups use it to treat submitted mail differently from mail on port 25 (docker-mailserver's
`sender-cleanup` with `-o header_checks=pcre:...sender_header_filter.pcre`, mailcow's
`smtp_sender_cleanup`).

mailferry runs cleanup inside smtpd and pickup, so a "service" here is a CleanupService
built from main.cf plus that master.cf entry's -o overrides: everything cleanup reads
(header_checks, body_checks, canonical maps, masquerading, virtual aliases, always_bcc,
myorigin, ...) comes from that view. `cleanup` is always there (mailferry's cleanup is built
in; a master.cf `cleanup unix ... cleanup` line adds its -o overrides). A name that is no
`cleanup` service of type unix in master.cf cannot be reached: Postfix's smtpd then cannot
connect to the service and the mail waits; here the message is refused with a 4xx
(451 4.3.0, a queue file write error), never accepted and never lost. `check` reports the
name as an error (config/cleanupcheck.py).

qmgr's notices (bounces, delay warnings) go through the default service: in Postfix they
are the bounce daemon's, and it uses main.cf's cleanup_service_name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from mailferry.cleanup.service import CleanupService, Committer
from mailferry.config.config import Config
from mailferry.config.mastercf import MasterCf, Service
from mailferry.maillog import Log, for_service
from mailferry.message import NewMessage
from mailferry.queue import QueueError

T = TypeVar("T")

BUILTIN_NAME = "cleanup"


def is_cleanup_service(service: Service) -> bool:
    """A master.cf entry that cleanup_service_name can name: Postfix connects to public/NAME."""
    return service.command == "cleanup" and service.type == "unix"


class UnreachableCleanup:
    """What a cleanup_service_name naming no master.cf cleanup service gets: every message is
    refused with a 4xx (the sender tries again once the configuration is fixed)."""

    def __init__(self, name: str, fallback: CleanupService):
        self.name = name
        self.fallback = fallback   # for notices only (pickup's returns): bounce uses the default service

    async def enqueue(self, message: NewMessage, queue_id: str, full_name: str = "", milters=None) -> str:
        raise QueueError(f"cleanup_service_name names service {self.name!r}, which master.cf does not "
                         f"define as `{self.name} unix ... cleanup`")

    async def enqueue_notices(self, notices: Sequence[NewMessage],
                              then: Callable[[list[str] | QueueError], T]) -> T:
        return await self.fallback.enqueue_notices(notices, then)


class CleanupServices:
    """One CleanupService per cleanup service name, rebuilt on reload."""

    def __init__(self, config: Config, master: MasterCf | None, committer: Committer, log: Log,
                 on_queued: Callable[[], None]):
        self._committer, self._log, self._on_queued = committer, log, on_queued
        self.services: dict[str, CleanupService] = {}
        self.default_name = BUILTIN_NAME
        self.reload(config, master)

    def reload(self, config: Config, master: MasterCf | None) -> None:
        views = cleanup_views(config, master)
        for name, view in views.items():
            if name in self.services:
                self.services[name].reload(view)
            else:
                self.services[name] = CleanupService.from_config(
                    view, self._committer, for_service(self._log, view.get("syslog_name")), self._on_queued)
        for name in set(self.services) - set(views):
            self.services.pop(name).close()
        self.default_name = config.get("cleanup_service_name")

    @property
    def default(self) -> CleanupService:
        """main.cf's cleanup_service_name (the built-in one when it names nothing reachable)."""
        return self.services.get(self.default_name) or self.services[BUILTIN_NAME]

    def named(self, name: str) -> CleanupService | UnreachableCleanup:
        service = self.services.get(name)
        return service if service is not None else UnreachableCleanup(name, self.default)

    def for_view(self, view: Config) -> CleanupService | UnreachableCleanup:
        """The cleanup service a service with this view (main.cf plus its -o) hands mail to."""
        return self.named(view.get("cleanup_service_name"))


def cleanup_views(config: Config, master: MasterCf | None) -> dict[str, Config]:
    """Each cleanup service's view of main.cf: its master.cf -o overrides on top."""
    views = {BUILTIN_NAME: config}
    for service in master.services if master is not None else []:
        if is_cleanup_service(service):
            views[service.name] = config.with_overrides(service.overrides, f"master.cf, line {service.line}")
    return views
