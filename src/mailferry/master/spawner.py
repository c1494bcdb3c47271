"""The privileged spawner: the one part of mailferry that keeps root.

The daemon gives up root at start (master/privileges.py), but a pipe(8)
`user=` command, a local(8) or virtual(8) mailbox and a `.forward` command
must run with the recipient's rights, and `reload` must re-read password
tables only root can read. The master forks this process in prepare(),
while still root and before any thread or event loop exists; it does
nothing else for the rest of its life. docs/privileges.md describes the
trust boundary; in short, it believes nothing the daemon sends beyond
"this account, this command or mailbox, this input", and it refuses root.

How the daemon reaches it. A socketpair (SOCK_SEQPACKET) made before the
fork is the only way in: no path in the file system, so no other process,
whatever its uid, can connect, and there is no SO_PEERCRED check to get
wrong. The smtpd workers close their copy (they never deliver). For each
request the daemon makes a fresh stream socketpair and passes one end over
the control socket (SCM_RIGHTS). The spawner forks a child for that end
and goes back to waiting: requests run side by side (several deliveries at
once), a slow command never holds up another, and the loop that stays
root is a few lines that receive a descriptor, fork and reap.

The child. It reads one request from its socket: a 4-byte length, a JSON
header, then the raw bytes of the input (the message) - JSON and bytes
only, never pickle, so a compromised daemon cannot make root run code it
sends. It checks every field, becomes the named account (initgroups or
setgroups, setgid, setuid; it then checks it cannot get root back), and
only then runs the command or writes the mailbox (delivery/mailbox.py)
and answers in the same framing. Refused: uid 0, gid 0, accounts and
groups passwd does not know, and anything malformed.

Commands are run as pipe(8) and local(8) run them: argv executed directly
(no shell), exactly the environment given, standard input fed from the
request (a command that exits without reading it is not an error), stdout
and stderr captured together up to output_limit, in a process group of
their own that is killed with SIGKILL after time_limit, in the working
directory asked for. A directory the user cannot enter, or a program that
cannot be executed, is a temporary error (`error`, temporary=True), as
Postfix's pipe_command exits EX_TEMPFAIL for both: the mail waits.

Not started as root (the quickstart), the spawner runs everything as the
user that started mailferry, and refuses a request naming another account:
"mailferry is not running as root: cannot deliver as USER".

The spawner cannot be restarted once root is given up. If it dies, the
master says so in the log, and every delivery that needs it defers with
a temporary error until mailferry is restarted; no mail is lost.
"""

from __future__ import annotations

import array
import asyncio
import errno
import grp
import json
import os
import pwd
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import time
from dataclasses import asdict, dataclass

from mailferry.config.config import load
from mailferry.config.mastercf import read_master_cf
from mailferry.delivery import mailbox
from mailferry.delivery.agents import password_table_specs
from mailferry.delivery.spawn import (CommandRequest, CommandResult, MailboxRequest, MailboxResult, RunAs)
from mailferry.syntax import split_list
from mailferry.tables import Maps, TableError, open_table
from mailferry.tables.memory import DictTable

COMMAND = "command"
MAILBOX = "mailbox"
PASSWORD_TABLES = "password tables"

HEADER_LIMIT = 1 << 20          # a request's JSON header: argv, environment, paths
BODY_LIMIT = 1 << 31            # a request's input: one message
READ_TIMEOUT = 60.0             # a child waits this long for its request to arrive
ANSWER_MARGIN = 60.0            # the daemon waits this long beyond a request's own time limits
LOCKS = ("fcntl", "flock", "dotlock")
_LENGTH = struct.Struct(">I")


class RequestError(Exception):
    """A request the spawner will not run. `temporary`: may a later try succeed?"""

    def __init__(self, message: str, temporary: bool = True):
        super().__init__(message)
        self.temporary = temporary


class SpawnerUnavailable(Exception):
    """The daemon cannot reach the spawner (it died): deliveries that need it wait."""


# ---- the wire: 4-byte length, JSON header (with "body": its length), raw body

def encode_frame(header: dict, body: bytes = b"") -> bytes:
    encoded = json.dumps({**header, "body": len(body)}).encode("ascii")
    return _LENGTH.pack(len(encoded)) + encoded + body


def decode_header(encoded: bytes) -> dict:
    try:
        header = json.loads(encoded)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("malformed request: the header is not JSON") from None
    if not isinstance(header, dict):
        raise RequestError("malformed request: the header is not an object")
    body = header.get("body")
    if not _is_int(body) or not 0 <= body <= BODY_LIMIT:
        raise RequestError("malformed request: bad body length")
    return header


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise RequestError("malformed request: the connection ended early")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[dict, bytes]:
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if length > HEADER_LIMIT:
        raise RequestError("malformed request: the header is too long")
    header = decode_header(_read_exactly(sock, length))
    return header, _read_exactly(sock, header["body"])


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[dict, bytes]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > HEADER_LIMIT:
        raise RequestError("malformed answer: the header is too long")
    header = decode_header(await reader.readexactly(length))
    return header, await reader.readexactly(header["body"])


# ---- requests as JSON, and checking what arrives

def command_header(request: CommandRequest) -> dict:
    return {"kind": COMMAND, "run_as": asdict(request.run_as), "argv": list(request.argv),
            "env": [list(pair) for pair in request.env], "cwd": request.cwd,
            "time_limit": request.time_limit, "output_limit": request.output_limit}


def mailbox_header(request: MailboxRequest) -> dict:
    return {"kind": MAILBOX, "run_as": asdict(request.run_as), "path": request.path, "sender": request.sender,
            "arrival_time": request.arrival_time, "size_limit": request.size_limit,
            "locks": list(request.locks), "lock_attempts": request.lock_attempts,
            "lock_delay": request.lock_delay, "stale_lock_time": request.stale_lock_time,
            "maildir_name": request.maildir_name}


def parse_command(header: dict, body: bytes) -> CommandRequest:
    argv = header.get("argv")
    if not isinstance(argv, list) or not argv or not all(_is_text(item) for item in argv) or not argv[0]:
        raise RequestError("malformed request: argv must be a non-empty list of strings")
    env = header.get("env", [])
    if not isinstance(env, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(_is_text(item) for item in pair)
            and pair[0] and "=" not in pair[0] for pair in env):
        raise RequestError("malformed request: env must be a list of [name, value] strings")
    return CommandRequest(parse_run_as(header.get("run_as")), tuple(argv), body,
                          tuple((name, value) for name, value in env), _path(header, "cwd"),
                          _number(header, "time_limit", positive=True),
                          int(_number(header, "output_limit", integer=True)))


def parse_mailbox(header: dict, body: bytes) -> MailboxRequest:
    locks = header.get("locks", [])
    if not isinstance(locks, list) or not all(lock in LOCKS for lock in locks):
        raise RequestError(f"malformed request: locks must be some of {', '.join(LOCKS)}")
    sender = header.get("sender", "")
    if not _is_text(sender) or "\n" in sender:
        raise RequestError("malformed request: sender")
    return MailboxRequest(parse_run_as(header.get("run_as")), _path(header, "path"), body, sender,
                          _number(header, "arrival_time"), int(_number(header, "size_limit", integer=True)),
                          tuple(locks), int(_number(header, "lock_attempts", integer=True)),
                          _number(header, "lock_delay"), _number(header, "stale_lock_time"),
                          _maildir_name(header))


def _maildir_name(header: dict) -> str:
    name = header.get("maildir_name", "")
    if not _is_text(name) or len(name) > 255 or "/" in name or "\0" in name or name.startswith("."):
        raise RequestError("malformed request: maildir_name must be a plain file name")
    return name


def parse_run_as(value) -> RunAs:
    if not isinstance(value, dict) or set(value) - {"user", "group", "uid", "gid"}:
        raise RequestError("malformed request: run_as")
    user, group = value.get("user", ""), value.get("group", "")
    uid, gid = value.get("uid"), value.get("gid")
    if not _is_text(user) or not _is_text(group):
        raise RequestError("malformed request: run_as user and group must be strings")
    for number in (uid, gid):
        if number is not None and (not _is_int(number) or not 0 <= number < 2 ** 32 - 1):
            raise RequestError("malformed request: run_as uid and gid must be account numbers")
    if bool(user) == (uid is not None) or (uid is None) != (gid is None) or (group and not user):
        raise RequestError("malformed request: run_as names either a user (and maybe a group) "
                           "or both a uid and a gid")
    return RunAs(user, group, uid, gid)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value) -> bool:
    return isinstance(value, str) and "\0" not in value


def _path(header: dict, name: str) -> str:
    value = header.get(name)
    if not _is_text(value) or not value.startswith("/"):
        raise RequestError(f"malformed request: {name} must be an absolute path")
    return value


def _number(header: dict, name: str, positive: bool = False, integer: bool = False) -> float:
    value = header.get(name)
    if not (_is_int(value) or (isinstance(value, float) and not integer and value == value)) \
            or value < 0 or (positive and value == 0) or value > 2 ** 62:
        raise RequestError(f"malformed request: {name}")
    return value


# ---- becoming the account

@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int


def resolve_account(run_as: RunAs) -> Account:
    """The account a request names, checked: known to passwd/group, not root."""
    if run_as.user:
        try:
            entry = pwd.getpwnam(run_as.user)
        except KeyError:
            raise RequestError(f"unknown user: {run_as.user}", temporary=False) from None
        gid = _group_id(run_as.group) if run_as.group else entry.pw_gid
        account = Account(entry.pw_name, entry.pw_uid, gid)
    else:
        try:
            name = pwd.getpwuid(run_as.uid).pw_name
        except KeyError:
            name = ""          # virtual(8) ids need no passwd entry, as in Postfix
        account = Account(name, run_as.uid, run_as.gid)
    if account.uid == 0 or account.gid == 0:
        who = run_as.user or f"uid {run_as.uid}"
        raise RequestError(f"refusing to deliver as {who}: root privileges (uid 0 or gid 0) are never "
                           "given to a delivery; name an unprivileged account")
    return account


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise RequestError(f"unknown group: {name}", temporary=False) from None


def become(run_as: RunAs, account: Account | None = None) -> Account:
    """Switch this (child) process to the account for good, or raise RequestError.
    `account`: already resolved (and maybe given the spool's group, see spool_access)."""
    if os.getuid() != 0:
        return _check_current_user(run_as)
    account = account or resolve_account(run_as)
    try:
        if run_as.user:
            os.initgroups(account.name, account.gid)
        else:
            os.setgroups([])
        os.setgid(account.gid)
        os.setuid(account.uid)
    except OSError as exc:
        raise RequestError(f"cannot switch to {account.name or account.uid}: {exc.strerror}") from None
    if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) or _can_become_root():
        raise RequestError("could not give up root")
    return account


def _can_become_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


def _check_current_user(run_as: RunAs) -> Account:
    """Not root: only the user mailferry runs as may be named."""
    me = pwd.getpwuid(os.getuid())
    named = run_as.user or (str(run_as.uid) if run_as.uid is not None else "")
    if (run_as.user and run_as.user != me.pw_name) or (run_as.uid is not None and run_as.uid != me.pw_uid):
        raise RequestError(f"mailferry is not running as root: cannot deliver as {named}")
    gid = _group_id(run_as.group) if run_as.group else run_as.gid
    if gid is not None and gid != os.getgid() and gid not in os.getgroups():
        raise RequestError(f"mailferry is not running as root: cannot deliver with group {run_as.group or gid}")
    return Account(me.pw_name, me.pw_uid, os.getgid())


# ---- the mail spool directory (local(8) without home_mailbox)

def spool_access(request: MailboxRequest, config_dir: str) -> Account | None:
    """Postfix's local(8) rights for `mail_spool_directory/user`, as root, before becoming the user.

    A world-writable spool: the user's own rights. A group-writable one (Debian's
    /var/mail, root:mail 2775): the user with the spool's group. Otherwise root
    creates the missing mailbox (mode 0600) and gives it to the user, as Postfix
    does. Only for exactly `<mail_spool_directory of our own main.cf>/<that user>`:
    the daemon cannot have a file made anywhere else. None: nothing special."""
    if os.getuid() != 0 or not request.run_as.user:
        return None
    account = resolve_account(request.run_as)
    directory, name = os.path.split(request.path)
    if name != account.name:
        return None
    try:
        spool = load(config_dir).get("mail_spool_directory").rstrip("/")
    except Exception:      # noqa: BLE001 - an unreadable main.cf leaves the plain rules
        return None
    if not spool or os.path.realpath(directory) != os.path.realpath(spool):
        return None
    try:
        info = os.stat(directory)
    except OSError:
        return None
    if info.st_mode & stat.S_IWOTH:
        return None
    if info.st_mode & stat.S_IWGRP:
        return Account(account.name, account.uid, info.st_gid)
    try:
        fd = os.open(request.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return None
    try:
        os.fchown(fd, account.uid, account.gid)
    finally:
        os.close(fd)
    return None


# ---- running a command (in the child, as the account)

def run_command(request: CommandRequest) -> CommandResult:
    try:
        os.chdir(request.cwd)
    except OSError as exc:
        return CommandResult(None, error=f'cannot change directory to "{request.cwd}" for uid={os.getuid()} '
                                         f'gid={os.getgid()}: {exc.strerror}')
    try:
        process = subprocess.Popen(list(request.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=dict(request.env),
                                   process_group=0, close_fds=True)
    except OSError as exc:
        return CommandResult(None, error=f"execvp {request.argv[0]}: {exc.strerror or exc}")
    deadline = time.monotonic() + request.time_limit
    output = bytearray()
    timed_out = not _exchange(process, request.stdin, output, request.output_limit, deadline)
    if not timed_out:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill_group(process.pid)
        process.wait()
    status = process.returncode
    return CommandResult(status if status >= 0 else None, signal=-status if status < 0 else None,
                         timed_out=timed_out, output=bytes(output))


def _exchange(process: subprocess.Popen, data: bytes, output: bytearray, limit: int, deadline: float) -> bool:
    """Feed stdin and keep the first `limit` bytes of output in `output` until the output
    ends (True) or the time is up (False)."""
    pending = memoryview(data)
    with selectors.DefaultSelector() as selector:
        for stream, event in ((process.stdin, selectors.EVENT_WRITE), (process.stdout, selectors.EVENT_READ)):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, event)
        if not pending:
            selector.unregister(process.stdin)
            process.stdin.close()
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                if key.fileobj is process.stdin:
                    pending = _feed(process, selector, pending)
                else:
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(process.stdout)
                        process.stdout.close()
                    output += chunk[:max(0, limit - len(output))]
    return True


def _feed(process: subprocess.Popen, selector, pending: memoryview) -> memoryview:
    try:
        pending = pending[os.write(process.stdin.fileno(), pending[:65536]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[:0]      # the command did not read its input: not an error, as in Postfix
    if not pending:
        selector.unregister(process.stdin)
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
    return pending


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- reading the password tables again (in the child, as root)

def read_password_tables(config_dir: str) -> dict:
    """The SMTP clients' smtp_sasl_password_maps, as main.cf and master.cf in the
    spawner's own configuration directory name them: the daemon cannot name a file."""
    try:
        config = load(config_dir)
        master = read_master_cf(os.path.join(config_dir, "master.cf"))
    except Exception as exc:     # noqa: BLE001 - any configuration problem is an answer, not a crash
        raise RequestError(f"cannot read the configuration in {config_dir}: {exc}") from None
    answers = {}
    for spec in sorted(password_table_specs(config, master)):
        try:
            answers[spec] = {"tables": [_table_contents(one) for one in split_list(spec)]}
        except TableError as exc:
            answers[spec] = {"error": str(exc)}
    return answers


def _table_contents(spec: str) -> dict:
    table = open_table(spec)
    try:
        return {"type": table.type_name, "name": table.name, "entries": [list(item) for item in table.items()]}
    except TableError:
        return {"type": table.type_name, "name": table.name, "open": True}   # no listing: the daemon opens it
    finally:
        table.close()


class CopiedTable(DictTable):
    """A table the spawner read with root's rights, held in the daemon's memory."""

    def __init__(self, type_name: str, name: str, entries: dict[str, str]):
        super().__init__(name, entries)
        self.type_name = type_name


def maps_from_answer(answer: dict) -> Maps:
    if "error" in answer:
        raise TableError(answer["error"])
    tables = []
    for table in answer["tables"]:
        if table.get("open"):
            tables.append(open_table(f"{table['type']}:{table['name']}"))
        else:
            entries: dict[str, str] = {}
            for key, value in table["entries"]:
                entries.setdefault(key.lower(), value)
            tables.append(CopiedTable(table["type"], table["name"], entries))
    return Maps(tables)


# ---- the child: one request, one answer

def serve_request(sock: socket.socket, config_dir: str) -> None:
    sock.settimeout(READ_TIMEOUT)
    kind = ""
    try:
        header, body = read_frame(sock)
        kind = header.get("kind")
        if kind == COMMAND:
            request = parse_command(header, body)
            become(request.run_as)
            answer, output = _result_header(run_command(request))
        elif kind == MAILBOX:
            request = parse_mailbox(header, body)
            become(request.run_as, spool_access(request, config_dir))
            answer, output = _result_header(mailbox.store(request))
        elif kind == PASSWORD_TABLES:
            answer, output = {"tables": read_password_tables(config_dir)}, b""
        else:
            raise RequestError(f"malformed request: unknown kind {kind!r}")
    except RequestError as exc:
        answer, output = {"refused": str(exc), "temporary": exc.temporary}, b""
    except Exception as exc:      # noqa: BLE001 - whatever happened, the daemon gets an answer, the mail waits
        answer, output = {"refused": f"spawner: {type(exc).__name__}: {exc}", "temporary": True}, b""
    sock.settimeout(READ_TIMEOUT)
    sock.sendall(encode_frame(answer, output))


def _result_header(result) -> tuple[dict, bytes]:
    fields = asdict(result)
    output = fields.pop("output", b"")
    return {"result": fields}, output


# ---- the process that stays root

@dataclass
class SpawnerProcess:
    """The master's handle: the spawner's pid and the daemon's end of the control socket."""

    pid: int
    control: socket.socket
    dead: bool = False

    def close_in_worker(self) -> None:
        """An smtpd worker never delivers: it keeps no way to the spawner."""
        self.control.close()

    def check(self, log) -> None:
        """Called from the master's loop: a spawner that died is logged, once."""
        if self.dead:
            return
        try:
            done, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            done, status = self.pid, 0
        if done:
            self.dead = True
            log.warning("master", f"process spawner pid {self.pid} exit status {os.waitstatus_to_exitcode(status)}; "
                                  "it cannot be restarted without root: deliveries that run as another user "
                                  "(pipe user=, local and virtual mailboxes) defer until mailferry is restarted")

    def stop(self, timeout: float = 5.0) -> None:
        """At shutdown: closing the control socket ends its loop; deliveries under way finish."""
        self.control.close()
        if self.dead:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.dead = True
                return
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.dead = True


def start_spawner(config_dir: str, keep_stderr: bool = True) -> SpawnerProcess:
    """Fork the spawner. Call it while still root, before threads or an event loop exist."""
    daemon_end, spawner_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            daemon_end.close()
            code = _spawner_loop(spawner_end, config_dir, keep_stderr)
        finally:
            os._exit(code)
    spawner_end.close()
    daemon_end.setblocking(False)
    return SpawnerProcess(pid, daemon_end)


def _spawner_loop(control: socket.socket, config_dir: str, keep_stderr: bool) -> int:
    _shed_inheritance(control.fileno(), keep_stderr)
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([control], [], [], 1.0)
        children = _reap(children)
        if not readable:
            continue
        try:
            message, ancillary, _, _ = control.recvmsg(16, socket.CMSG_SPACE(4 * array.array("i").itemsize))
        except InterruptedError:
            continue
        fds = _received_fds(ancillary)
        if not message and not fds:
            return 0            # the master is gone, or stopping
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        children.add(_fork_child(control, fds[0], config_dir))
        os.close(fds[0])


def _fork_child(control: socket.socket, fd: int, config_dir: str) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            control.close()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            serve_request(socket.socket(fileno=fd), config_dir)
            code = 0
        finally:
            os._exit(code)
    return pid


def _received_fds(ancillary) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _reap(children: set[int]) -> set[int]:
    alive = set()
    for pid in children:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if not done:
            alive.add(pid)
    return alive


def _shed_inheritance(keep_fd: int, keep_stderr: bool) -> None:
    """Keep nothing of the master's but the control socket: no listeners, no log, no queue;
    Ctrl-C and SIGHUP are the master's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1) if keep_stderr else (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))


# ---- the daemon's side

class SpawnerClient:
    """The delivery.spawn.Spawner the daemon's agents use. Never raises for a dead
    spawner: the answer is a temporary error, and the mail waits in the queue."""

    def __init__(self, control: socket.socket):
        self.control = control
        self.password_tables: dict[str, Maps] = {}

    async def run_command(self, request: CommandRequest) -> CommandResult:
        try:
            answer, output = await self._ask(command_header(request), request.stdin,
                                             request.time_limit + ANSWER_MARGIN)
        except SpawnerUnavailable as exc:
            return CommandResult(None, error=str(exc))
        if "refused" in answer:
            return CommandResult(None, error=answer["refused"], temporary=bool(answer.get("temporary", True)))
        return CommandResult(**{**answer["result"], "output": output})

    async def store_in_mailbox(self, request: MailboxRequest) -> MailboxResult:
        waiting = request.lock_attempts * request.lock_delay + ANSWER_MARGIN
        try:
            answer, _ = await self._ask(mailbox_header(request), request.content, waiting)
        except SpawnerUnavailable as exc:
            return MailboxResult(False, error=str(exc), errno=errno.EAGAIN)
        if "refused" in answer:
            # An unknown account is permanent (ENOENT); anything else may pass later (EAGAIN)
            return MailboxResult(False, error=answer["refused"],
                                 errno=errno.EAGAIN if answer.get("temporary", True) else errno.ENOENT)
        return MailboxResult(**answer["result"])

    async def refresh_password_tables(self, log) -> None:
        """At reload: the password tables read again with root's rights, kept in
        `password_tables` for delivery.agents.reopen_client_tables."""
        self.password_tables = {}
        try:
            answer, _ = await self._ask({"kind": PASSWORD_TABLES}, b"", ANSWER_MARGIN)
        except SpawnerUnavailable as exc:
            log.warning("master", f"reload: cannot re-read the password tables: {exc}")
            return
        if "refused" in answer:
            log.warning("master", f"reload: cannot re-read the password tables: {answer['refused']}")
            return
        for spec, contents in answer["tables"].items():
            try:
                self.password_tables[spec] = maps_from_answer(contents)
            except TableError as exc:
                log.warning("master", f"reload: cannot re-read {spec} with root's rights: {exc}")

    async def _ask(self, header: dict, body: bytes, timeout: float) -> tuple[dict, bytes]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                self.control.sendmsg([b"r"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               array.array("i", [theirs.fileno()]))])
            except OSError as exc:
                ours.close()
                raise SpawnerUnavailable(_unavailable(exc.strerror or str(exc))) from None
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        try:
            writer.write(encode_frame(header, body))
            await writer.drain()
            return await asyncio.wait_for(read_frame_async(reader), timeout)
        except (OSError, asyncio.IncompleteReadError, RequestError) as exc:
            raise SpawnerUnavailable(f"no answer from the privileged spawner ({exc})") from None
        except TimeoutError:
            raise SpawnerUnavailable(f"no answer from the privileged spawner in {timeout:.0f} s") from None
        finally:
            writer.close()

    def close(self) -> None:
        self.control.close()


def _unavailable(why: str) -> str:
    return (f"the privileged spawner is not available ({why}); deliveries that run as another user "
            "wait until mailferry is restarted")
