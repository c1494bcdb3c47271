"""check_policy_service: Postfix's policy delegation protocol (SMTPD_POLICY_README).

A request is `name=value` lines ended by an empty line; the answer is
`action=...` (other attributes are ignored), ended by an empty line. The
action is then read as an access(5) action (engine.py), so a policy server
may answer OK, DUNNO, REJECT text, DEFER_IF_PERMIT text, PREPEND header:
text, a 4xx/5xx reply, a restriction class name...

Connections are kept and reused (smtpd_policy_service_max_idle,
smtpd_policy_service_max_ttl, smtpd_policy_service_request_limit); a
request that fails (cannot connect, times out after
smtpd_policy_service_timeout, a malformed answer) is tried again on a new
connection after smtpd_policy_service_retry_delay, up to
smtpd_policy_service_try_limit tries in all. When every try failed, the
answer is smtpd_policy_service_default_action (Postfix's `451 4.3.5 Server
configuration problem`) and the log has Postfix's warning.

Endpoints: `inet:host:port`, `unix:/path`, or `unix:private/policy`
(relative to queue_directory), or Postfix 3's braced form
`{ inet:host:port, timeout=10s, default_action=DUNNO, try_limit=1,
policy_context=ctx, max_idle=.., max_ttl=.., request_limit=.., retry_delay=.. }`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mailferry.config.values import parse_time

_ANSWER_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class PolicyServiceSettings:
    timeout: float = 100.0
    max_idle: float = 300.0
    max_ttl: float = 1000.0
    request_limit: int = 0
    retry_delay: float = 1.0
    try_limit: int = 2
    default_action: str = "451 4.3.5 Server configuration problem"
    policy_context: str = ""


class PolicyServiceError(Exception):
    pass


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    used: float
    requests: int = 0


class PolicyClient:
    def __init__(self, endpoint: str, settings: PolicyServiceSettings, queue_directory: str = ""):
        self.endpoint = endpoint
        self.settings = settings
        self._queue_directory = queue_directory
        self._idle: list[_Connection] = []

    @classmethod
    def from_spec(cls, spec: str, defaults: PolicyServiceSettings, queue_directory: str = "") -> PolicyClient:
        """`inet:host:port`, `unix:path`, or `{ endpoint, name=value, ... }`."""
        spec = spec.strip()
        if not spec.startswith("{"):
            return cls(spec, defaults, queue_directory)
        items = [item.strip() for item in spec[1:-1].split(",")] if spec.endswith("}") else []
        endpoint = items[0] if items else ""
        settings = defaults
        for item in items[1:]:
            name, equals, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not equals:
                raise ValueError(f"check_policy_service {spec}: expected name=value, found {item!r}")
            settings = _with_option(settings, name, value, spec)
        return cls(endpoint, settings, queue_directory)

    async def query(self, attributes: Mapping[str, str | int]) -> str:
        """The server's action; raises PolicyServiceError when every try failed."""
        request = "".join(f"{name}={_clean(value)}\n" for name, value in attributes.items())
        payload = (request + "\n").encode("utf-8", "surrogateescape")
        problem = ""
        for attempt in range(max(self.settings.try_limit, 1)):
            if attempt:
                await asyncio.sleep(self.settings.retry_delay)
            try:
                return await asyncio.wait_for(self._ask(payload), self.settings.timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, PolicyServiceError) as exc:
                problem = str(exc) or type(exc).__name__
        raise PolicyServiceError(f"problem talking to server {self.endpoint}: {problem}")

    async def _ask(self, payload: bytes) -> str:
        connection = self._take_idle() or await self._connect()
        try:
            connection.writer.write(payload)
            await connection.writer.drain()
            answer = await _read_answer(connection.reader)
        except BaseException:
            _close(connection)
            raise
        connection.requests += 1
        connection.used = time.monotonic()
        self._put_back(connection)
        action = answer.get("action")
        if action is None:
            raise PolicyServiceError("missing action attribute in the answer")
        return action

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if (now - connection.used <= self.settings.max_idle and now - connection.opened <= self.settings.max_ttl
                    and not connection.reader.at_eof()):
                return connection
            _close(connection)
        return None

    def _put_back(self, connection: _Connection) -> None:
        limit = self.settings.request_limit
        if limit and connection.requests >= limit:
            _close(connection)
            return
        self._idle.append(connection)

    async def _connect(self) -> _Connection:
        kind, _, where = self.endpoint.partition(":")
        if kind == "inet":
            host, _, port = where.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        elif kind == "unix":
            path = where if os.path.isabs(where) else os.path.join(self._queue_directory, where)
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            raise PolicyServiceError(f"unsupported endpoint {self.endpoint!r}: use inet:host:port or unix:path")
        now = time.monotonic()
        return _Connection(reader, writer, now, now)

    def close(self) -> None:
        for connection in self._idle:
            _close(connection)
        self._idle = []


async def _read_answer(reader: asyncio.StreamReader) -> dict[str, str]:
    answer: dict[str, str] = {}
    size = 0
    while True:
        line = await reader.readline()
        if not line:
            raise PolicyServiceError("connection closed before the end of the answer")
        size += len(line)
        if size > _ANSWER_LIMIT:
            raise PolicyServiceError("answer too long")
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            return answer
        name, equals, value = text.partition("=")
        if not equals:
            raise PolicyServiceError(f"malformed answer line: {text[:100]!r}")
        answer.setdefault(name.strip(), value)


def _close(connection: _Connection) -> None:
    try:
        connection.writer.close()
    except OSError:
        pass


def _clean(value: str | int) -> str:
    """A value never carries a line end into the request."""
    return str(value).replace("\n", " ").replace("\r", " ")


_TIME_OPTIONS = {"timeout": "timeout", "max_idle": "max_idle", "max_ttl": "max_ttl", "retry_delay": "retry_delay"}


def _with_option(settings: PolicyServiceSettings, name: str, value: str, spec: str) -> PolicyServiceSettings:
    if name in _TIME_OPTIONS:
        return replace(settings, **{_TIME_OPTIONS[name]: float(parse_time(value, "s"))})
    if name in ("request_limit", "try_limit"):
        return replace(settings, **{name: int(value)})
    if name == "default_action":
        return replace(settings, default_action=value)
    if name == "policy_context":
        return replace(settings, policy_context=value)
    raise ValueError(f"check_policy_service {spec}: unknown attribute {name!r}")

