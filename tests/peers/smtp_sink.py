"""Postfix's smtp-sink as an SMTP or LMTP peer that dumps every transaction to a file.

    sink = SmtpSink(peer_tempdir("sink-"), lmtp=False).start()
    ...  # deliver to sink.host:sink.port
    [message] = sink.wait_for_messages(1)
    message.sender, message.recipients, message.message

Dump format (smtp-sink -d DIR/m, one file DIR/m<hex> per transaction, "\\n" line ends):

    X-Client-Addr: 127.0.0.1
    X-Client-Proto: ESMTP                      (SMTP, ESMTP or LMTP)
    X-Helo-Args: client.example                (absent if the client sent no HELO/EHLO/LHLO)
    X-Mail-Args: <sender> SIZE=123 AUTH=...    (parameters as sent)
    X-Rcpt-Args: <rcpt>                        (one per RCPT, in order)
    Received: from helo ([addr])
    \\tby smtp-sink (smtp-sink) with ESMTP id 6d21f280;
    \\tWed, 25 Nov 2026 03:38:14 +0000 (UTC)
    <the message as received, CRLF turned into LF>
    <one empty line>

Refusals: smtp-sink can refuse whole commands, for every transaction:
`hard_reject=("RCPT",)` answers RCPT with `hard_reply` (default "500 5.3.0 Error: command
failed"), `soft_reject=(".",)` answers the end of DATA with `soft_reply` (default "450 4.3.0
Error: command failed"). Command names: CONNECT, HELO, EHLO, LHLO, MAIL, RCPT, DATA, "." (end of
data), RSET, NOOP, QUIT. A refused "." still leaves a dump file. `disconnect=("DATA",)` drops the
connection without a reply, `shutdown=("MAIL",)` answers 421 and hangs up. `-R` is chroot, not
refusal. It cannot refuse only some recipients: use Dovecot LMTP (unknown users get 550) for that.

A transaction's file appears at MAIL FROM and fills until the final "." (or vanishes when the
transaction is aborted): `messages()` and `wait_for_messages()` read only finished ones, telling
them from those still being written by the files smtp-sink has open (`in_progress()`).

For load (bench/relay), `dump=False` writes no file per message (that would dominate) and
`extra_args=("-c",)` makes the sink count sessions and messages instead: `counters()`.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from tests.peers import (check_loopback, free_port, give_to_peer, require_tool, stop_process, unprivileged_ids,
                         wait_for_port)

# one -c record: "sess=N quit=N mesg=N", ended by CR
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")


def _address(args: str) -> tuple[str, list[str]]:
    """'<a@b> SIZE=1 BODY=8BITMIME' -> ('a@b', ['SIZE=1', 'BODY=8BITMIME'])."""
    args = args.strip()
    if args.startswith("<"):
        end = args.find(">")
        if end >= 0:
            return args[1:end], args[end + 1:].split()
    first, *rest = args.split() or [""]
    return first, rest


@dataclass
class SinkedMessage:
    path: Path
    client_addr: str
    client_proto: str
    helo: str | None
    mail_args: str
    rcpt_args: list[str]
    sender: str                    # without <>; "" for the null sender
    mail_parameters: list[str]     # e.g. ["SIZE=123", "AUTH=user@example"]
    recipients: list[str]          # without <>, in RCPT order
    rcpt_parameters: list[list[str]]
    received: str                  # smtp-sink's own three-line Received: header
    message: bytes                 # header and body as received, LF line ends

    @property
    def email(self) -> EmailMessage:
        return email.message_from_bytes(self.message, policy=email.policy.default)

    @property
    def body(self) -> bytes:
        return self.message.split(b"\n\n", 1)[1] if b"\n\n" in self.message else b""

    @classmethod
    def parse(cls, path: Path) -> "SinkedMessage":
        data = path.read_bytes()
        lines = data.split(b"\n")
        fields: dict[str, list[str]] = {}
        index = 0
        while index < len(lines) and lines[index].startswith(b"X-"):
            name, _, value = lines[index].decode("utf-8", "replace").partition(":")
            fields.setdefault(name, []).append(value.strip())
            index += 1
        received: list[bytes] = []
        if index < len(lines) and lines[index].startswith(b"Received: "):
            received.append(lines[index])
            index += 1
            while index < len(lines) and lines[index].startswith(b"\t"):
                received.append(lines[index])
                index += 1
        message = b"\n".join(lines[index:])
        if message.endswith(b"\n\n"):
            message = message[:-1]  # smtp-sink appends one empty line after the message
        if "X-Mail-Args" not in fields:
            raise AssertionError(f"{path} is not a complete smtp-sink dump:\n{data[:500]!r}")
        mail_args = fields["X-Mail-Args"][0]
        sender, mail_parameters = _address(mail_args)
        rcpt_args = fields.get("X-Rcpt-Args", [])
        recipients = [_address(args) for args in rcpt_args]
        return cls(path=path, client_addr=fields.get("X-Client-Addr", [""])[0],
                   client_proto=fields.get("X-Client-Proto", [""])[0],
                   helo=fields.get("X-Helo-Args", [None])[0], mail_args=mail_args, rcpt_args=rcpt_args,
                   sender=sender, mail_parameters=mail_parameters,
                   recipients=[address for address, _ in recipients],
                   rcpt_parameters=[parameters for _, parameters in recipients],
                   received=b"\n".join(received).decode("utf-8", "replace"), message=message)


@dataclass
class SmtpSink:
    """One `smtp-sink` process on a free loopback port. `start()`, then `stop()` (the fixtures do both)."""

    directory: Path
    lmtp: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "smtp-sink.test"
    hard_reject: tuple[str, ...] = ()
    soft_reject: tuple[str, ...] = ()
    hard_reply: str | None = None
    soft_reply: str | None = None
    disconnect: tuple[str, ...] = ()
    shutdown: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    unix_socket: bool = False      # listen on DIR/sink.sock instead of host:port (lmtp:unix:...)
    dump: bool = True              # one file a transaction in DIR/dump (False: nothing written)
    backlog: int = 100             # the listen backlog, smtp-sink's last argument
    process: subprocess.Popen | None = field(default=None, repr=False)
    abandoned: set[Path] = field(default_factory=set, repr=False)   # dumps open when stop() killed it

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.dump_directory = self.directory / "dump"
        self.log_path = self.directory / "smtp-sink.log"
        self.socket_path = self.directory / "sink.sock"
        check_loopback(self.host)
        if not self.port and not self.unix_socket:
            self.port = free_port(self.host)

    @property
    def address(self) -> str:
        """host:port, as a Postfix nexthop would write it without brackets."""
        return f"{self.host}:{self.port}"

    @property
    def nexthop(self) -> str:
        """[host]:port, e.g. for relayhost or an lmtp: destination."""
        return f"[{self.host}]:{self.port}"

    def command(self) -> list[str]:
        command = [require_tool("smtp-sink")]
        if os.geteuid() == 0:
            command += ["-u", unprivileged_ids()[0]]  # smtp-sink refuses to run as root without -u
        command += ["-h", self.hostname]
        if self.dump:
            command += ["-d", str(self.dump_directory / "m")]
        if self.lmtp:
            command.append("-L")
        if self.hard_reject:
            command += ["-f", ",".join(self.hard_reject)]
        if self.soft_reject:
            command += ["-r", ",".join(self.soft_reject)]
        if self.hard_reply:
            command += ["-B", self.hard_reply]
        if self.soft_reply:
            command += ["-b", self.soft_reply]
        if self.disconnect:
            command += ["-q", ",".join(self.disconnect)]
        if self.shutdown:
            command += ["-Q", ",".join(self.shutdown)]
        listen = f"unix:{self.socket_path}" if self.unix_socket else f"{self.host}:{self.port}"
        command += [*self.extra_args, listen, str(self.backlog)]
        return command

    def start(self, timeout: float = 10.0) -> "SmtpSink":
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.dump:
            give_to_peer(self.dump_directory)
        # a file, not a pipe: a chatty sink must never block on a full pipe
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        if self.unix_socket:
            self._wait_for_socket(timeout)
        else:
            wait_for_port(self.host, self.port, timeout, process=self.process, log=self.log_path)
        return self

    def _wait_for_socket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"smtp-sink exited with {self.process.returncode}:\n"
                                     f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket_path))
                os.chmod(self.socket_path, 0o666)   # the daemon under test runs as nobody too
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"smtp-sink is not listening on {self.socket_path} after {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # what SIGTERM cuts off stays behind as a file smtp-sink never finished: remember it
            self.abandoned |= self.in_progress()
        stop_process(self.process)

    def counters(self) -> dict[str, int]:
        """smtp-sink's own counters (start it with extra_args=("-c",)): sessions begun
        (sess), QUITs (quit) and messages whose final "." arrived (mesg), from the last complete
        record it printed; zeros before the first. Reads only the log's tail: cheap enough to
        poll while a bench runs."""
        try:
            with open(self.log_path, "rb") as log:
                size = os.fstat(log.fileno()).st_size
                log.seek(max(0, size - 512))
                tail = log.read()
        except OSError:
            tail = b""
        found = _COUNTERS.findall(tail)
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        return dict(zip(("sess", "quit", "mesg"), map(int, found[-1])))

    def paths(self) -> list[Path]:
        """Every dump file, also those of transactions still in progress (see in_progress)."""
        if not self.dump_directory.exists():
            return []
        return sorted(self.dump_directory.glob("m*"), key=_age)

    def in_progress(self) -> set[Path]:
        """The dump files smtp-sink has open: transactions in progress.

        smtp-sink (src/smtpstone/smtp-sink.c) creates a transaction's file with O_CREAT|O_EXCL when
        it answers MAIL FROM and writes it through a 4 KiB stdio-like buffer, so until the final "."
        the file is empty or holds a prefix of the dump; it closes the file when that "." arrives
        (also when it then refuses it), and unlinks it when the transaction is aborted (RSET, EHLO,
        a lost connection). An open file is therefore the one sign of an unfinished transaction."""
        if self.process is None or self.process.poll() is not None:
            return set()
        descriptors = Path(f"/proc/{self.process.pid}/fd")
        where = self.dump_directory.resolve()
        found: set[Path] = set()
        try:
            names = os.listdir(descriptors)
        except FileNotFoundError:      # it just exited
            return set()
        for name in names:
            try:
                target = os.readlink(descriptors / name)
            except FileNotFoundError:  # closed meanwhile
                continue
            if Path(target).parent == where:
                found.add(self.dump_directory / Path(target).name)
        return found

    def _parse_complete(self) -> tuple[list[SinkedMessage], int]:
        """(every finished transaction, oldest first; how many are still being written)."""
        paths = self.paths()
        unfinished = self.in_progress()
        messages = []
        for path in paths:
            if path in unfinished or path in self.abandoned:
                continue
            try:
                messages.append(SinkedMessage.parse(path))
            except FileNotFoundError:  # aborted after the listing: smtp-sink unlinked it
                continue
        return messages, sum(1 for path in paths if path in unfinished)

    def messages(self) -> list[SinkedMessage]:
        """Every finished transaction so far, oldest first. A dump still being written is left
        out (the next call sees it once its final "." has arrived); a finished one that is not a
        complete dump raises."""
        return self._parse_complete()[0]

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[SinkedMessage]:
        """Wait until at least `count` transactions are finished, then (within the same timeout)
        until none is still being written, so that a copy arriving alongside is seen too; return
        every finished one. Raises if fewer than `count` finished in time."""
        deadline = time.monotonic() + timeout
        while True:
            messages, writing = self._parse_complete()
            if len(messages) >= count and (not writing or time.monotonic() > deadline):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(messages)} of {count} messages reached smtp-sink {self.address} "
                                     f"after {timeout} s ({writing} more still being written)")
            time.sleep(0.02)


def _age(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except FileNotFoundError:          # unlinked (aborted) since the listing
        return 0, path.name
