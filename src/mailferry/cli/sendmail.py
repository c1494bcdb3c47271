"""`mailferry-sendmail` (and `mailferry sendmail`): the /usr/sbin/sendmail interface.

It reads a message from standard input, writes it into the maildrop
directory and pokes the daemon; nothing more. So it works while the daemon
is down (pickup finds the file when it starts), and it exits 0 only once
the message is on disk. Installed as `mailq` it lists the queue, as
`newaliases` (or with -bi, -I) it builds the alias database (cli/newaliases.py).

Options, as Postfix's sendmail(1) reads them (POSIX getopt: option
processing stops at the first recipient, or at `--`):

  -t            also send to the To:, Cc: and Bcc: (or Resent-To/Cc/Bcc) addresses;
                Bcc: is removed at pickup
  -f SENDER     envelope sender; -r SENDER too; -f '' or -f '<>' is the null sender;
                one pair of <> is removed. Default: the caller's login name,
                qualified with $myorigin later (cleanup)
  -F NAME       sender's full name for the From: header cleanup adds (else $NAME,
                else the GECOS name)
  -i, -oi       a line with only "." does not end the message. Without them it
                does (and nothing after it is read). Dots are never un-stuffed.
  -N DSN        never | comma list of success, delay, failure (bad values: warning, ignored)
  -R RET        hdrs | full (bad values: warning, ignored)
  -V ENVID      DSN envelope ID
  -B TYPE       7BIT | 8BITMIME (exactly; anything else is fatal, as in Postfix)
  -C DIR        configuration directory, or the path of main.cf in it
  -bm           read a message (the default)
  -bp           list the queue (mailq)
  -q            flush the queue (postqueue -f); -qIQUEUE_ID one message; -qRSITE is
                not supported; -qINTERVAL is ignored
  -v            say where the message was dropped (Postfix mails a delivery report;
                mailferry has none)
  -bs           SMTP on standard input and output; each message goes to maildrop
  -bi, -I       build the alias database, as `mailferry newaliases`
  -bv           do not collect or deliver a message: mail the sender a report saying, for
                each recipient, where it would go (cli/verify_report.py)
  -bd, -bl      not supported: each says what to use instead
  ignored, as Postfix ignores them: -Am -Ac -G -U -c -m -n -x -h N -L LABEL -O OPT
                -e X -p X -oXVALUE (other than -oi; -o7 -o8 -om -oA...) -XV (VERP) -X LOG
                -bh -bH

A leading "From " line (mbox style) is dropped, as Postfix's sendmail drops it.

Exit status, as Postfix's sendmail: 0 when the message is safely in
maildrop. Every refusal, usage errors included, is 75 (EX_TEMPFAIL), as
Postfix's are: a calling program keeps the message rather than losing it.
66 (EX_NOINPUT) when standard input cannot be read, 70 (EX_SOFTWARE) on an
internal error.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from dataclasses import dataclass, field
from email.utils import getaddresses

from mailferry.cli.options import default_config_dir
from mailferry.cli.output import Reporter

EX_OK = 0
EX_NOINPUT = 66
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
USAGE = "usage: sendmail [options] [recipient...]"

OPTIONS_WITH_VALUE = frozenset("ABCFLNORVXbefhopr")
OPTIONS_WITHOUT_VALUE = frozenset("GIUcimntvx")
DSN_NOTIFY_WORDS = ("SUCCESS", "DELAY", "FAILURE")
BODY_TYPES = ("7BIT", "8BITMIME")


class SendmailUsageError(Exception):
    """A command line sendmail refuses; the text says why."""


@dataclass(slots=True)
class SendmailRequest:
    mode: str = "m"                        # -b letter: m (read a message), p (list the queue), ...
    recipients: list[str] = field(default_factory=list)
    sender: str | None = None              # None: the caller's login name
    full_name: str | None = None
    extract_recipients: bool = False
    ignore_dots: bool = False
    config_dir: str | None = None
    verbose: int = 0
    dsn_notify: str | None = None
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    body_type: str | None = None
    flush: str | None = None               # -q: "" all deferred mail, "I<id>", "R<site>", "S<site>"
    warnings: list[str] = field(default_factory=list)


# ---- the command line

def parse_arguments(argv: list[str]) -> SendmailRequest:
    request = SendmailRequest()
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            index += 1
            break
        if not argument.startswith("-") or argument == "-":
            break
        index = _parse_option_group(argv, index, request)
    request.recipients = _addresses(argv[index:])
    for address in [request.sender or "", *request.recipients]:
        _refuse_controls(address)
    return request


def _refuse_controls(address: str) -> None:
    """An address never holds a control character: a CR LF in one would end our SMTP client's
    command line early (smtp_client refuses to send it) and split a log line in two."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in address):
        raise SendmailUsageError(f"bad address syntax: {address[:100]!r}: an address cannot contain "
                                 "CR, LF, NUL or other control characters")


def _parse_option_group(argv: list[str], index: int, request: SendmailRequest) -> int:
    """Read `-abc` or `-fVALUE` / `-f VALUE` at argv[index]; the index after it."""
    argument = argv[index]
    position = 1
    while position < len(argument):
        letter = argument[position]
        rest = argument[position + 1:]
        if letter == "q":
            _apply_queue_option(rest, request)
            return index + 1
        if letter in OPTIONS_WITH_VALUE:
            if rest:
                _apply_option(letter, rest, request)
                return index + 1
            if index + 1 >= len(argv):
                raise SendmailUsageError(f"option requires an argument -- '{letter}'")
            _apply_option(letter, argv[index + 1], request)
            return index + 2
        if letter not in OPTIONS_WITHOUT_VALUE:
            raise SendmailUsageError(f"invalid option -- '{letter}'")
        _apply_flag(letter, request)
        position += 1
    return index + 1


def _apply_flag(letter: str, request: SendmailRequest) -> None:
    if letter == "t":
        request.extract_recipients = True
    elif letter == "i":
        request.ignore_dots = True
    elif letter == "v":
        request.verbose += 1
    elif letter == "I":
        request.mode = "i"
    # G U c m n x: accepted and ignored, as Postfix does


def _apply_option(letter: str, value: str, request: SendmailRequest) -> None:
    if letter in "fr":
        request.sender = _envelope_sender(value)
    elif letter == "F":
        request.full_name = value
    elif letter == "C":
        request.config_dir = os.path.dirname(value) if os.path.isfile(value) else value
    elif letter == "b":
        request.mode = value
    elif letter == "o":
        _apply_o_option(value, request)
    elif letter == "N":
        request.dsn_notify = _dsn_notify(value, request)
    elif letter == "R":
        request.dsn_ret = _dsn_ret(value, request)
    elif letter == "V":
        request.dsn_envid = value
    elif letter == "B":
        if value not in BODY_TYPES:
            raise SendmailUsageError("-B option needs 8BITMIME or 7BIT")
        request.body_type = value
    elif letter == "X" and value.startswith("V"):
        request.warnings.append("-XV: VERP is not supported by mailferry; the message is sent "
                                "with one envelope sender")
    # A L O e h p, -X LOGFILE: accepted and ignored, as Postfix does


def _apply_o_option(value: str, request: SendmailRequest) -> None:
    # -oi is the one that matters; -o7 -o8 -om -oA... and any other -oXVALUE are ignored.
    if value == "i":
        request.ignore_dots = True


def _apply_queue_option(value: str, request: SendmailRequest) -> None:
    if value == "" or value[0] in "IRS":
        request.flush = value
    # -q30m: a queue run interval, which the daemon's own settings decide


def _envelope_sender(value: str) -> str:
    if len(value) >= 2 and value.startswith("<") and value.endswith(">"):
        return value[1:-1]
    return value


def _dsn_notify(value: str, request: SendmailRequest) -> str | None:
    words = [word.strip().upper() for word in value.split(",") if word.strip()]
    if words == ["NEVER"]:
        return "NEVER"
    if words and all(word in DSN_NOTIFY_WORDS for word in words):
        return ",".join(dict.fromkeys(words))
    request.warnings.append("bad -N option value -- ignored")
    return None


def _dsn_ret(value: str, request: SendmailRequest) -> str | None:
    if value.lower() in ("hdrs", "full"):
        return value.upper()
    request.warnings.append("bad -R option value -- ignored")
    return None


def _addresses(arguments: list[str]) -> list[str]:
    """Recipient arguments are address lists: `'A <a@x>, b@y'` is two recipients."""
    found = []
    for argument in arguments:
        found += [address for _, address in getaddresses([argument]) if address]
    return found


# ---- reading the message

def read_message(stream, ignore_dots: bool) -> bytes:
    """Standard input up to EOF, or up to a line with only "." unless `ignore_dots`."""
    lines = []
    first = True
    for line in stream:
        if first and line.startswith(b"From "):
            first = False
            continue  # an mbox From_ line is not part of the message
        first = False
        if not ignore_dots and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


# ---- entry points

def main(argv: list[str] | None = None) -> int:
    """The `mailferry-sendmail` program (also when installed as sendmail, mailq, newaliases)."""
    invoked_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "sendmail"
    args = list(sys.argv[1:] if argv is None else argv)
    config_dir = default_config_dir()   # -C > MAIL_CONFIG > MAILFERRY_CONFIG_DIR > /etc/mailferry
    return sendmail(args, config_dir, Reporter(invoked_as), invoked_as)


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    """`mailferry [-c DIR] sendmail ...`."""
    return sendmail(argv, config_dir, reporter, "sendmail")


def sendmail(argv: list[str], config_dir: str, reporter: Reporter, invoked_as: str = "sendmail") -> int:
    try:
        request = parse_arguments(argv)
    except SendmailUsageError as exc:
        reporter.fatal(f"{exc}\n{USAGE}")
        return EX_TEMPFAIL
    if invoked_as == "mailq":
        request.mode = "p"
    elif invoked_as == "newaliases":
        request.mode = "i"
    for text in request.warnings:
        reporter.warning(text)
    reporter.verbose += request.verbose
    config_dir = request.config_dir or config_dir
    try:
        return _dispatch(request, config_dir, reporter)
    except Exception as exc:  # noqa: BLE001 - the caller must learn that the message was NOT taken
        reporter.fatal(f"internal error: {exc!r}; the message was NOT accepted")
        return EX_SOFTWARE


def _dispatch(request: SendmailRequest, config_dir: str, reporter: Reporter) -> int:
    if request.flush is not None:
        return _flush(request, config_dir, reporter)
    mode = request.mode
    if mode == "m":
        return Submission(request, config_dir, reporter).submit(sys.stdin.buffer)
    if mode == "p":
        if request.recipients:
            reporter.fatal("display queue mode requires no recipient")
            return EX_TEMPFAIL
        from mailferry.cli.queue_listing import print_queue
        return print_queue(config_dir, reporter, as_json=False, failure_exit=EX_TEMPFAIL)
    if mode in ("h", "H"):
        return EX_OK  # Postfix ignores these: there is no host status database
    if mode == "s":
        return _smtp_on_stdin(config_dir, reporter)
    if mode == "v":
        return Submission(request, config_dir, reporter).verify()
    if mode == "i":
        from mailferry.cli.newaliases import run as newaliases
        return EX_OK if newaliases([], config_dir, reporter) == 0 else EX_TEMPFAIL
    reporter.fatal(_UNSUPPORTED_MODES.get(mode, f"unsupported: -b{mode}"))
    return EX_TEMPFAIL


def _smtp_on_stdin(config_dir: str, reporter: Reporter) -> int:
    from mailferry import control
    from mailferry.cli.queue_listing import QueueUnavailable, existing_queue_directory, load_tool_config
    from mailferry.local.maildrop import ensure_maildrop_directory
    from mailferry.local.smtp_stdin import converse
    try:
        config = load_tool_config(config_dir)
        queue_directory = existing_queue_directory(config)
        ensure_maildrop_directory(queue_directory)
    except (QueueUnavailable, OSError) as exc:
        reporter.fatal(f"{exc}; no mail can be accepted")
        return EX_TEMPFAIL
    stdin, stdout = sys.stdin.buffer.raw, sys.stdout.buffer

    def write(data: bytes) -> None:
        stdout.write(data)
        stdout.flush()

    dropped = converse(lambda: stdin.read(65536) or b"", write, config.get("myhostname"),
                       queue_directory, os.getuid(), config.size("message_size_limit"))
    if dropped:
        control.notify(queue_directory, "pickup")
    return EX_OK


_UNSUPPORTED_MODES = {
    "d": "-bd: start the mail system with `mailferry start`",
    "l": "-bl: start the mail system with `mailferry start` (inet_interfaces = loopback-only "
         "for local connections only)",
}


def _flush(request: SendmailRequest, config_dir: str, reporter: Reporter) -> int:
    if request.recipients:
        reporter.fatal("flush queue mode requires no recipient")
        return EX_TEMPFAIL
    from mailferry.cli.postqueue import flush
    if request.flush == "":
        return flush(config_dir, reporter, None)
    if request.flush.startswith("I"):
        return flush(config_dir, reporter, [request.flush[1:]])
    reporter.fatal(f"-q{request.flush[0]}: per-site flush is not supported by mailferry; "
                   "use sendmail -q")
    return EX_TEMPFAIL


class Submission:
    """One message from standard input into maildrop (sendmail -bm)."""

    def __init__(self, request: SendmailRequest, config_dir: str, reporter: Reporter):
        self.request = request
        self.config_dir = config_dir
        self.reporter = reporter
        self.uid = os.getuid()
        self.account = _account(self.uid)

    def submit(self, stdin) -> int:
        request = self.request
        login = self.account.pw_name if self.account else None
        if request.sender is None and login is None:
            return self._refuse(f"no login name found for user ID {self.uid}; give the sender with -f; "
                                "the message was NOT accepted")
        if not request.recipients and not request.extract_recipients:
            return self._refuse(f"{self._who()}: Recipient addresses must be specified on the "
                                "command line or via the -t option")
        queue_directory = self._queue_directory()
        if queue_directory is None:
            return EX_TEMPFAIL
        try:
            message = read_message(stdin, request.ignore_dots)
        except OSError as exc:
            self.reporter.fatal(f"cannot read the message from standard input: {exc.strerror}; "
                                "the message was NOT accepted")
            return EX_NOINPUT
        if request.extract_recipients and not request.recipients and not _header_recipients(message):
            return self._refuse(f"{self._who()}: No recipient addresses found in message header")
        return self._drop(queue_directory, message, login)

    def verify(self) -> int:
        """-bv: the report goes to the sender through maildrop; nothing goes to the recipients."""
        request = self.request
        sender = request.sender if request.sender is not None else (self.account.pw_name if self.account else None)
        if not sender:
            return self._refuse("-bv: the report is mailed to the sender: give one with -f")
        if not request.recipients:
            return self._refuse(f"{self._who()}: Recipient addresses must be specified on the command line")
        queue_directory = self._queue_directory()
        if queue_directory is None:
            return EX_TEMPFAIL
        from mailferry.cli.queue_listing import load_tool_config
        from mailferry.cli.verify_report import report_message, verify
        config = load_tool_config(self.config_dir)
        report = report_message(config, sender, verify(config, request.recipients, sender))
        self.request = SendmailRequest(sender="", recipients=[sender])
        status = self._drop(queue_directory, report, None)
        if status == EX_OK:
            self.reporter.info(f"Mail Delivery Status Report will be mailed to <{sender}>.")
        return status

    def _queue_directory(self) -> str | None:
        from mailferry.cli.queue_listing import QueueUnavailable, existing_queue_directory, load_tool_config
        from mailferry.local.maildrop import ensure_maildrop_directory
        try:
            queue_directory = existing_queue_directory(load_tool_config(self.config_dir))
            ensure_maildrop_directory(queue_directory)
        except QueueUnavailable as exc:
            self._refuse(f"{exc}; the message was NOT accepted")
            return None
        except OSError as exc:
            self._refuse(f"cannot create the maildrop directory {exc.filename}: {exc.strerror}; "
                         "the message was NOT accepted")
            return None
        return queue_directory

    def _drop(self, queue_directory: str, message: bytes, login: str | None) -> int:
        from mailferry import control
        from mailferry.local.maildrop import MaildropEnvelope, write_maildrop
        request = self.request
        envelope = MaildropEnvelope(
            sender=request.sender if request.sender is not None else login,
            recipients=request.recipients, uid=self.uid, arrival_time=time.time(),
            extract_recipients=request.extract_recipients, full_name=self._full_name(),
            dsn_notify=request.dsn_notify, dsn_ret=request.dsn_ret, dsn_envid=request.dsn_envid,
            body_type=request.body_type)
        try:
            path = write_maildrop(queue_directory, envelope, message)
        except OSError as exc:
            return self._refuse(f"cannot write the message into {exc.filename or queue_directory}: "
                                f"{exc.strerror}; the message was NOT accepted")
        if request.verbose:
            self.reporter.info(f"message dropped as {path}")
        control.notify(queue_directory, "pickup")  # best effort: pickup also scans on a timer
        return EX_OK

    def _full_name(self) -> str | None:
        if self.request.full_name is not None:
            return self.request.full_name
        if os.environ.get("NAME"):
            return os.environ["NAME"]
        if self.account is None:
            return None
        gecos = self.account.pw_gecos.split(",")[0]
        return gecos.replace("&", self.account.pw_name.capitalize()) or None

    def _who(self) -> str:
        login = self.account.pw_name if self.account else "unknown"
        return f"{login}({self.uid})"

    def _refuse(self, reason: str) -> int:
        self.reporter.fatal(reason)
        return EX_TEMPFAIL


def _account(uid: int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _header_recipients(message: bytes) -> list[str]:
    from mailferry.local.recipient_headers import extract_recipients
    return extract_recipients(message)


if __name__ == "__main__":
    raise SystemExit(main())
