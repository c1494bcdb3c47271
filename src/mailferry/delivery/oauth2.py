"""OAuth2 access tokens for the SMTP client's XOAUTH2 and OAUTHBEARER (a mailferry addition).

An entry of smtp_sasl_password_maps whose password is `oauth2:/path/file.json` names an
OAuth2 settings file (token_endpoint, client_id, client_secret, refresh_token; the key
names of sasl-xoauth2's token files). The lookup, its keys and their order are
delivery/sasl.py's, unchanged: only what the entry holds differs.

Access tokens are fetched with the refresh_token grant (RFC 6749 6) and cached on disk,
one JSON file per settings file, mode 0600, under $queue_directory/oauth2 (mail_owner's):
a restart does not refresh while the cached token is good. A token is refreshed a margin
before it expires (a fifth of its lifetime, at most five minutes), and once more when the
server refuses it. In one process, deliveries that need a token at the same time share one
refresh (an asyncio lock per settings file); across processes, an flock on the cache file
does the same. The HTTP request runs in a thread: the event loop never waits on it.

Every failure is an OAuth2Error: the mail is deferred, never bounced. A refused refresh
token (invalid_grant) says to run `mailferry oauth2` again. Tokens and secrets are never
logged or put in an exception's text.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from mailferry.maillog import Log

PASSWORD_PREFIX = "oauth2:"
MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
CACHE_SUBDIRECTORY = "oauth2"
MAX_MARGIN = 300.0          # refresh at most five minutes before expiry
HTTP_TIMEOUT = 30.0
DOC = "docs/oauth2.md"


class OAuth2Error(Exception):
    """No access token now: defer the mail. str() is safe to log (no token, no secret)."""


class RefreshTokenRefused(OAuth2Error):
    """The token endpoint refused the refresh token (invalid_grant): an administrator must act."""


@dataclass(frozen=True, slots=True, repr=False)
class OAuth2Settings:
    path: str
    token_endpoint: str
    client_id: str
    client_secret: str
    refresh_token: str
    user: str = ""
    scope: str = ""

    def __repr__(self) -> str:
        return f"OAuth2Settings(path={self.path!r}, token_endpoint={self.token_endpoint!r}, secrets=<hidden>)"

    @property
    def cache_key(self) -> str:
        """Names the cache file: a new refresh token (`mailferry oauth2` again) starts a new cache."""
        digest = hashlib.sha256(f"{os.path.abspath(self.path)}\0{self.refresh_token}".encode()).hexdigest()
        return digest[:24]


def settings_path(password: str) -> str | None:
    """The settings file an `oauth2:/path` password names, else None (a plain password)."""
    if password.startswith(PASSWORD_PREFIX):
        return password[len(PASSWORD_PREFIX):].strip()
    return None


def load_settings(path: str) -> OAuth2Settings:
    """Read one settings file; OAuth2Error naming the file and what to do."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise OAuth2Error(f"OAuth2 settings file {path} does not exist: create it with "
                          f"`mailferry oauth2` ({DOC})") from None
    except PermissionError:
        raise OAuth2Error(f"cannot read OAuth2 settings file {path}: permission denied; it must be readable "
                          "by mail_owner (chown mail_owner, chmod 600)") from None
    except OSError as error:
        raise OAuth2Error(f"cannot read OAuth2 settings file {path}: {error.strerror}") from None
    except ValueError as error:
        raise OAuth2Error(f"OAuth2 settings file {path} is not valid JSON: line {getattr(error, 'lineno', '?')}"
                          ) from None
    if not isinstance(data, dict):
        raise OAuth2Error(f"OAuth2 settings file {path}: expected a JSON object")
    missing = [name for name in ("token_endpoint", "client_id", "refresh_token") if not data.get(name)]
    if missing:
        raise OAuth2Error(f"OAuth2 settings file {path} has no {', '.join(missing)}: write it again with "
                          f"`mailferry oauth2` ({DOC})")
    return OAuth2Settings(path=path, token_endpoint=str(data["token_endpoint"]), client_id=str(data["client_id"]),
                          client_secret=str(data.get("client_secret") or ""),
                          refresh_token=str(data["refresh_token"]), user=str(data.get("user") or ""),
                          scope=str(data.get("scope") or ""))


def refresh_margin(lifetime: float) -> float:
    return min(MAX_MARGIN, max(lifetime, 0.0) / 5)


# --- HTTP to the token endpoint (blocking: call it in a thread) ---------------------------------

def post_form(url: str, fields: dict[str, str], timeout: float = HTTP_TIMEOUT) -> tuple[int, dict]:
    """POST application/x-www-form-urlencoded, answer (HTTP status, JSON object).

    OAuth2Error when the endpoint cannot be reached or does not answer JSON; an OAuth2
    error answer (4xx with {"error": ...}) is returned, not raised.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise OAuth2Error(f"token endpoint {url!r} is not an http(s) URL")
    body = urllib.parse.urlencode(fields).encode("ascii")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
        "User-Agent": "mailferry"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read(1 << 20)
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read(1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or error
        raise OAuth2Error(f"token endpoint {url} unreachable: {reason}") from None
    try:
        answer = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise OAuth2Error(f"token endpoint {url} answered HTTP {status} without JSON") from None
    if not isinstance(answer, dict):
        raise OAuth2Error(f"token endpoint {url} answered HTTP {status} with JSON that is not an object")
    return status, answer


def oauth_error_text(answer: dict) -> str:
    """"invalid_grant (Token has been expired or revoked.)": the endpoint's words, never a token."""
    error = str(answer.get("error") or "error")[:80]
    description = str(answer.get("error_description") or "")[:200]
    return f"{error} ({description})" if description else error


# --- the cache ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, repr=False)
class CachedToken:
    access_token: str
    expires_at: float          # wall clock: the cache outlives the process
    refresh_at: float
    obtained_at: float
    refresh_token: str = ""    # a rotated refresh token the endpoint handed out, else ""

    def __repr__(self) -> str:
        return f"CachedToken(expires_at={self.expires_at}, access_token=<hidden>)"

    def fresh(self, now: float) -> bool:
        return bool(self.access_token) and now < self.refresh_at


class TokenCache:
    """One JSON file per settings file under `directory` (mode 0700), each mode 0600."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, settings: OAuth2Settings) -> str:
        return os.path.join(self.directory, f"{settings.cache_key}.json")

    def read(self, settings: OAuth2Settings) -> tuple[CachedToken | None, dict]:
        """(the cached token or None, the file's other facts: last failure)."""
        try:
            with open(self.path(settings), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None, {}
        if not isinstance(data, dict):
            return None, {}
        token = None
        if data.get("access_token"):
            try:
                token = CachedToken(str(data["access_token"]), float(data["expires_at"]), float(data["refresh_at"]),
                                    float(data.get("obtained_at", 0)), str(data.get("refresh_token") or ""))
            except (KeyError, TypeError, ValueError):
                token = None
        return token, data

    def _make_directory(self) -> None:
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            _give_to_parents_owner(self.directory)

    def write(self, settings: OAuth2Settings, data: dict) -> None:
        self._make_directory()
        path = self.path(settings)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _give_to_parents_owner(temporary, fd)
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def lock(self, settings: OAuth2Settings) -> int | None:
        """An exclusive flock on the settings' lock file (blocking: in a thread); close the fd to unlock.
        None when the lock file cannot be had: the refresh goes on unshared rather than not at all."""
        try:
            self._make_directory()
            fd = os.open(self.path(settings) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        _give_to_parents_owner(self.path(settings) + ".lock", fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd


def _give_to_parents_owner(path: str, fd: int | None = None) -> None:
    """Run as root (relay-check, a test), a file made here stays mail_owner's, as its directory is."""
    if os.geteuid() != 0:
        return
    try:
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
        if fd is not None:
            os.fchown(fd, parent.st_uid, parent.st_gid)
        else:
            os.chown(path, parent.st_uid, parent.st_gid)
    except OSError:
        pass


def cache_directory(queue_directory: str) -> str:
    return os.path.join(queue_directory, CACHE_SUBDIRECTORY)


# --- the token manager --------------------------------------------------------------------------

class TokenManager:
    """Access tokens for OAuth2 settings files, refreshed before they expire and shared."""

    def __init__(self, directory: str, log: Log | None = None, program: str = "smtp", clock=time.time):
        self.cache = TokenCache(directory)
        self.log = log
        self.program = program
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.refreshes = 0          # this process' requests to token endpoints

    async def access_token(self, settings: OAuth2Settings, *, stale: str | None = None) -> str:
        """A token good for now; with `stale` (a token the server refused), never that one again."""
        lock = self._locks.setdefault(settings.cache_key, asyncio.Lock())
        async with lock:
            token, _ = self.cache.read(settings)
            if token is not None and token.fresh(self.clock()) and token.access_token != stale:
                return token.access_token
            return await asyncio.to_thread(self._refresh_locked, settings, stale)

    def _refresh_locked(self, settings: OAuth2Settings, stale: str | None) -> str:
        fd = self.cache.lock(settings)
        try:
            token, data = self.cache.read(settings)   # another process may have refreshed meanwhile
            if token is not None and token.fresh(self.clock()) and token.access_token != stale:
                return token.access_token
            return self._refresh(settings, token, data)
        finally:
            if fd is not None:
                os.close(fd)

    def _refresh(self, settings: OAuth2Settings, old: CachedToken | None, data: dict) -> str:
        refresh_token = (old.refresh_token if old is not None else "") or data.get("refresh_token") \
            or settings.refresh_token
        fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": settings.client_id}
        if settings.client_secret:
            fields["client_secret"] = settings.client_secret
        if settings.scope:
            fields["scope"] = settings.scope
        self.refreshes += 1
        started = self.clock()
        status, answer = post_form(settings.token_endpoint, fields)
        who = f" for {settings.user}" if settings.user else ""
        if status != 200 or "error" in answer:
            if answer.get("error") == "invalid_grant":
                text = (f"OAuth2 refresh token{who} in {settings.path} was refused by {settings.token_endpoint}: "
                        f"{oauth_error_text(answer)}; mail stays queued: get a new refresh token with "
                        f"`mailferry oauth2 --settings {settings.path} ...` ({DOC})")
                self._remember_failure(settings, data, text)
                raise RefreshTokenRefused(text)
            text = (f"OAuth2 token endpoint {settings.token_endpoint} refused a refresh{who} "
                    f"(HTTP {status}): {oauth_error_text(answer)}")
            self._remember_failure(settings, data, text)
            raise OAuth2Error(text)
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise OAuth2Error(f"token endpoint {settings.token_endpoint} answered without an access_token")
        try:
            lifetime = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        rotated = answer.get("refresh_token")
        keep_refresh = rotated if isinstance(rotated, str) and rotated and rotated != settings.refresh_token \
            else ((old.refresh_token if old else "") or data.get("refresh_token") or "")
        record = {"access_token": access, "obtained_at": started, "expires_at": started + lifetime,
                  "refresh_at": started + lifetime - refresh_margin(lifetime),
                  "token_endpoint": settings.token_endpoint, "settings": os.path.abspath(settings.path)}
        if keep_refresh:
            record["refresh_token"] = keep_refresh
        try:
            self.cache.write(settings, record)
        except OSError as error:
            if self.log is not None:
                self.log.warning(self.program, f"cannot cache the OAuth2 access token in {self.cache.directory}: "
                                               f"{error.strerror}; each delivery will refresh it")
        if self.log is not None:
            self.log.line(self.program, f"OAuth2 access token{who} refreshed from {settings.token_endpoint}, "
                                        f"valid for {int(lifetime)}s")
        return access

    def _remember_failure(self, settings: OAuth2Settings, data: dict, text: str) -> None:
        """Kept for `relay-check` and token_status; the token (if any) stays unused."""
        record = {key: value for key, value in data.items() if key != "access_token"}
        record.update({"failed_at": self.clock(), "failure": text})
        try:
            self.cache.write(settings, record)
        except OSError:
            pass


# --- status, for relay-check --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TokenStatus:
    state: str            # "valid", "refresh-due", "expired", "none", "refused", "failed"
    text: str             # one line for an administrator; never a token
    expires_at: float | None = None


def token_status(settings: OAuth2Settings, directory: str, now: float | None = None) -> TokenStatus:
    """What the cache says about this settings file's access token, without contacting anyone."""
    now = time.time() if now is None else now
    token, data = TokenCache(directory).read(settings)
    when = lambda moment: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))  # noqa: E731
    if token is None:
        failure = data.get("failure")
        if failure:
            state = "refused" if "invalid_grant" in failure else "failed"
            return TokenStatus(state, f"last refresh failed at {when(float(data.get('failed_at', 0)))}: {failure}")
        return TokenStatus("none", f"no access token cached yet: the first delivery fetches one from "
                                   f"{settings.token_endpoint}")
    if now >= token.expires_at:
        return TokenStatus("expired", f"cached access token expired at {when(token.expires_at)}: the next delivery "
                                      "refreshes it", token.expires_at)
    if now >= token.refresh_at:
        return TokenStatus("refresh-due", f"cached access token valid until {when(token.expires_at)}, due for "
                                          "refresh at the next delivery", token.expires_at)
    return TokenStatus("valid", f"cached access token valid until {when(token.expires_at)} (refreshed at the first "
                                f"delivery after {when(token.refresh_at)})", token.expires_at)


# --- the SASL exchanges ---------------------------------------------------------------------------

class OAuth2Exchange:
    """XOAUTH2 (Google's) or OAUTHBEARER (RFC 7628) with a bearer token: one initial response.

    A server that refuses the token sends a 334 with a JSON error; the client answers it
    with the empty response (XOAUTH2) or ^A (OAUTHBEARER) and the server then says 535.
    `refused_token` is set when that happened, so the caller refreshes and tries once more.
    """

    def __init__(self, mechanism: str, user: str, token: str, host: str = "", port: int | None = None):
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported OAuth2 SASL mechanism {mechanism!r}")
        if "\x01" in user or "\x01" in token:
            raise ValueError("the OAuth2 user name contains a character the SASL mechanism cannot carry")
        self.mechanism = mechanism
        self._user = user
        self._token = token
        self._host = host
        self._port = port
        self.error: dict | None = None
        self.refused_token = False

    def initial_response(self) -> bytes:
        if self.mechanism == "XOAUTH2":
            return f"user={self._user}\x01auth=Bearer {self._token}\x01\x01".encode()
        user = self._user.replace("=", "=3D").replace(",", "=2C")
        extra = f"host={self._host}\x01" if self._host else ""
        extra += f"port={self._port}\x01" if self._port else ""
        return f"n,a={user},\x01{extra}auth=Bearer {self._token}\x01\x01".encode()

    def answer(self, challenge: bytes) -> bytes:
        if self.error is not None:
            raise ValueError("a second challenge after the OAuth2 error")
        try:
            error = json.loads(challenge.decode("utf-8")) if challenge else {}
        except ValueError:
            error = {}
        self.error = error if isinstance(error, dict) else {}
        self.refused_token = True
        return b"" if self.mechanism == "XOAUTH2" else b"\x01"

    def error_text(self) -> str:
        """The server's JSON error, for the log: status and scheme, no token."""
        if not self.error:
            return ""
        return ", ".join(f"{key}={str(value)[:60]}" for key, value in sorted(self.error.items()))


def entry_status(password: str, queue_directory: str) -> TokenStatus | None:
    """For relay-check: the token status of a password map entry's `oauth2:FILE` password, None for a
    plain password. A settings file that cannot be read is a status ("unusable"), not an exception."""
    path = settings_path(password)
    if path is None:
        return None
    try:
        settings = load_settings(path)
    except OAuth2Error as problem:
        return TokenStatus("unusable", str(problem))
    return token_status(settings, cache_directory(queue_directory))
