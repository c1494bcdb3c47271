"""master.cf: the table of services, read the way Postfix's master(8) reads it.

Syntax facts come from master(5), pipe(8) and from running Postfix 3.7's
`postconf -M` / `postconf -P` on test files:

- A logical line starts in column 1; lines starting with whitespace continue
  it, even across blank and comment lines. `#` starts a comment only as the
  first non-blank character of a line.
- Eight whitespace-separated fields, then the command's arguments. `{ ... }`
  groups text that contains whitespace; whitespace just inside the braces is
  dropped.
- Daemon options (`-o`, `-v`, `-D`) come before the command's own arguments:
  option parsing stops at the first word that is not an option, so a `-o`
  written after it is not an override.
- `-o name=value` must have no whitespace; `-o { name = value }` may.
- When two entries have the same name and type, only the last one is used.

Entries whose eight fixed fields are invalid (Postfix stops with a fatal
error) are reported and left out of `MasterCf.services`. `$name` references
in `-o` values are kept verbatim; expansion happens with main.cf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailferry.diagnostics import ERROR, Diagnostic, error, warning
from mailferry.syntax import LogicalLine, logical_lines

SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")

IMPLEMENTED = "implemented"
BUILTIN = "builtin"
UNSUPPORTED = "unsupported"

# Built in so that listeners do not depend on /etc/services being present.
WELL_KNOWN_PORTS = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "smtps": 465,  # the pre-RFC 8314 name for submissions
    "lmtp": 24,
}

# Defaults that "-" stands for (master(5), Postfix >= 3.0).
DEFAULT_PRIVATE = True
DEFAULT_UNPRIV = True
DEFAULT_CHROOT = False

IMPLEMENTED_COMMANDS = frozenset({"smtpd", "pickup", "smtp", "lmtp", "pipe", "error", "discard", "local",
                                  "virtual"})

# Postfix daemons whose work happens inside mailferry's single process.
BUILTIN_COMMANDS = frozenset({
    "cleanup", "qmgr", "oqmgr", "nqmgr", "tlsmgr", "trivial-rewrite", "bounce",
    "verify", "flush", "proxymap", "showq", "anvil", "scache", "postlogd",
})

# Postfix daemons mailferry does not provide, with what to do instead.
UNSUPPORTED_COMMANDS = {
    "postscreen": "let smtpd listen on this address directly: change the command to smtpd",
    "tlsproxy": "it only serves postscreen and smtp connection reuse; comment out this entry",
    "dnsblog": "it only serves postscreen; comment out this entry",
    "spawn": "run the policy server as its own daemon and point "
             "check_policy_service at its socket",
    "qmqpd": "mailferry does not accept QMQP; comment out this entry",
}

POSTFIX_DAEMONS = IMPLEMENTED_COMMANDS | BUILTIN_COMMANDS | UNSUPPORTED_COMMANDS.keys()

PIPE_FLAG_LETTERS = "BDFORXhqu.>"
PIPE_ATTRIBUTES = ("flags", "user", "size", "eol", "directory", "chroot", "null_sender")

# Generic options that every Postfix daemon accepts but that master(8) or
# developers set; mailferry has no use for them.
IGNORED_DAEMON_OPTIONS = "cdilmnsStuVz"

# postconf -M puts each field at the next of these columns, or one space
# after the previous field when that one is too wide.
POSTCONF_COLUMNS = (0, 11, 17, 25, 33, 41, 49, 57)


@dataclass(frozen=True, slots=True)
class PipeSpec:
    """The command attributes of a pipe(8) service."""

    user: str
    group: str | None
    argv: list[str]
    flags: str = ""
    size: int | None = None  # bytes; None: no limit
    eol: str = "\n"  # escapes already decoded
    directory: str | None = None
    chroot: str | None = None
    null_sender: str = "MAILER-DAEMON"


@dataclass(frozen=True, slots=True)
class Service:
    """One master.cf entry.

    `private`, `unpriv` and `chroot` are None where the file says "-"; the
    `is_*` properties give the value Postfix uses. `options` are the daemon
    options as written (e.g. ["-v", "-o", "syslog_name=x"]), `overrides` the
    `-o` settings among them, and `args` the command's own arguments after
    the options (pipe's `flags=... argv=...`).
    """

    name: str
    type: str
    private: bool | None
    unpriv: bool | None
    chroot: bool | None
    wakeup: int | None  # None: "-", no wake up
    wakeup_after_first_use: bool  # the trailing "?"
    maxproc: int | None  # None: "-", $default_process_limit
    command: str
    options: list[str]
    args: list[str]
    overrides: dict[str, str]
    line: int
    support: str  # IMPLEMENTED, BUILTIN or UNSUPPORTED
    pipe: PipeSpec | None = None  # None unless a pipe service with valid attributes

    @property
    def key(self) -> str:
        """The name/type pair that identifies a service, as postconf -F spells it."""
        return f"{self.name}/{self.type}"

    @property
    def is_private(self) -> bool:
        if self.type == "inet":
            return False  # master(5): Internet services can't be private
        return DEFAULT_PRIVATE if self.private is None else self.private

    @property
    def is_unprivileged(self) -> bool:
        return DEFAULT_UNPRIV if self.unpriv is None else self.unpriv

    @property
    def is_chrooted(self) -> bool:
        return DEFAULT_CHROOT if self.chroot is None else self.chroot

    @property
    def wakeup_seconds(self) -> int:
        return self.wakeup or 0

    def listen_address(self) -> tuple[str | None, int]:
        """(host, port) of an inet service; host None means all inet_interfaces."""
        if self.type != "inet":
            raise ValueError(f"service {self.key} is not an inet service")
        host, port_name = split_inet_name(self.name)
        return host, port_number(port_name)


@dataclass(slots=True)
class MasterCf:
    path: str
    services: list[Service] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def find(self, name: str, type: str) -> Service | None:
        for service in self.services:
            if service.name == name and service.type == type:
                return service
        return None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]


# Postfix daemons that never read their command-line arguments, so that a stray word there
# is ignored; every other daemon stops with "unexpected command-line argument".
_IGNORE_EXTRA_ARGUMENTS = frozenset({"smtp", "lmtp"})


def read_master_cf(path: str) -> MasterCf:
    try:
        # surrogateescape keeps non-UTF-8 bytes intact for pipe argv.
        with open(path, encoding="utf-8", errors="surrogateescape") as stream:
            text = stream.read()
    except OSError as exc:
        return MasterCf(path, diagnostics=[
            error(f"cannot read master.cf: {exc.strerror}; check the path and permissions",
                  file=path)])
    return parse_master_cf(text, path)


def parse_master_cf(text: str, path: str) -> MasterCf:
    return _Parser(path).parse(text)


def split_inet_name(name: str) -> tuple[str | None, str]:
    """Split an inet service name into host (None if absent) and port text."""
    if name.startswith("["):
        close = name.find("]")
        if close < 0 or not name[close + 1:].startswith(":"):
            raise ValueError(f'"{name}" is not "[host]:port"')
        return name[1:close], name[close + 2:]
    if ":" in name:
        host, port = name.rsplit(":", 1)  # "::1:smtp" is valid, per master(5)
        if not host:
            raise ValueError(f'"{name}" has an empty host part')
        return host, port
    return None, name


def port_number(port: str) -> int:
    if port.isascii() and port.isdigit():
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
        return number
    if port in WELL_KNOWN_PORTS:
        return WELL_KNOWN_PORTS[port]
    known = ", ".join(WELL_KNOWN_PORTS)
    raise ValueError(f'unknown port name "{port}" (mailferry knows {known} and does '
                     f"not read /etc/services); write the port number instead")


def format_service(service: Service) -> str:
    """One line in the format of `postconf -M`."""
    command_line = " ".join(
        _quote(word) for word in (service.command, *service.options, *service.args))
    fields = (
        _quote(service.name),
        service.type,
        _format_flag(service.private),
        _format_flag(service.unpriv),
        _format_flag(service.chroot),
        _format_wakeup(service),
        "-" if service.maxproc is None else str(service.maxproc),
        command_line,
    )
    line = ""
    for column, text in zip(POSTCONF_COLUMNS, fields):
        if line:
            line += " " * max(1, column - len(line))
        line += text
    return line


def _quote(word: str) -> str:
    # Like postconf: only words with whitespace need braces to read back.
    if any(char.isspace() for char in word):
        return "{" + word + "}"
    return word


def _format_flag(value: bool | None) -> str:
    if value is None:
        return "-"
    return "y" if value else "n"


def _format_wakeup(service: Service) -> str:
    if service.wakeup is None:
        return "-"
    return f"{service.wakeup}{'?' if service.wakeup_after_first_use else ''}"


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    line: int


class _Parser:
    def __init__(self, path: str):
        self.path = path
        self.diagnostics: list[Diagnostic] = []

    def error(self, line: int, message: str, parameter: str | None = None) -> None:
        self.diagnostics.append(error(message, self.path, line, parameter))

    def warning(self, line: int, message: str, parameter: str | None = None) -> None:
        self.diagnostics.append(warning(message, self.path, line, parameter))

    def parse(self, text: str) -> MasterCf:
        services: list[Service] = []
        def orphan(number: int, _text: str) -> None:
            self.error(number, "this line starts with whitespace, so it continues an "
                               "entry, but no entry comes before it; Postfix ignores it. "
                               "Remove the leading whitespace or move it under its entry")

        for logical in logical_lines(text.split("\n"), orphan):
            service = self.parse_entry(logical)
            if service is not None:
                services.append(service)
        services = self.drop_duplicates(services)
        self.check_listen_conflicts(services)
        return MasterCf(self.path, services, self.diagnostics)

    # ---- lines and words

    def split_words(self, entry: LogicalLine) -> list[_Word]:
        text = entry.text
        words: list[_Word] = []
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            if position >= len(text):
                return words
            line = entry.line_at(position)
            if text[position] == "{":
                position = self.read_braced_word(text, position, line, words)
            else:
                end = self.word_end(text, position, line)
                words.append(_Word(text[position:end], line))
                position = end

    def read_braced_word(self, text: str, start: int, line: int, words: list[_Word]) -> int:
        close = _matching_brace(text, start)
        if close is None:
            self.warning(line, f'missing "}}" after "{text[start:].strip()}"; '
                               "the rest of the entry is taken as one word. Add the \"}\"")
            words.append(_Word(text[start + 1:].strip(), line))
            return len(text)
        words.append(_Word(text[start + 1:close].strip(), line))
        end = self.word_end(text, close + 1, line)
        if end > close + 1:
            self.error(line, f'"{text[close + 1:end]}" directly after "}}" is ignored, as '
                             f'Postfix does; put a space after "}}" or inside the braces')
        return end

    def word_end(self, text: str, position: int, line: int) -> int:
        """End of a plain word; braces inside it group whitespace too ("c{d e}f")."""
        depth = 0
        while position < len(text):
            char = text[position]
            if char.isspace() and depth == 0:
                return position
            if char == "{":
                depth += 1
            elif char == "}" and depth > 0:
                depth -= 1
            position += 1
        if depth > 0:
            self.warning(line, 'missing "}" in a word; it extends to the end of the entry. '
                               'Add the "}"')
        return position

    # ---- one entry

    def parse_entry(self, entry: LogicalLine) -> Service | None:
        words = self.split_words(entry)
        line = entry.line
        if len(words) < 8:
            self.error(line, f"bad field count: {len(words)} fields, but an entry needs 8 "
                             "(service type private unpriv chroot wakeup maxproc command); "
                             'write "-" for a default value')
            return None
        name, type_, command = words[0].text, words[1].text, words[7].text
        key = f"{name}/{type_}"
        try:
            fixed = _parse_fixed_fields([word.text for word in words[:7]])
        except ValueError as exc:
            # Postfix stops with a fatal error here; the entry cannot be used.
            self.error(line, f"service {key}: {exc}", key)
            return None
        if type_ == "inet" and fixed.private is True:
            self.warning(line, f"service {key}: Internet services cannot be private; "
                               'Postfix ignores the "y" in the private field. Write "n"', key)
        support = self.classify(name, type_, command, line, key)
        if command in POSTFIX_DAEMONS:
            options, overrides, rest = self.parse_daemon_options(words[8:], key)
        else:
            options, overrides, rest = [], {}, words[8:]
        pipe = None
        if command == "pipe":
            pipe = self.parse_pipe(rest, line, key)
        elif support != UNSUPPORTED:
            self.check_no_arguments(rest, command, key)
        service = Service(
            name=name, type=type_, private=fixed.private, unpriv=fixed.unpriv,
            chroot=fixed.chroot, wakeup=fixed.wakeup,
            wakeup_after_first_use=fixed.wakeup_after_first_use, maxproc=fixed.maxproc,
            command=command, options=options, args=[word.text for word in rest],
            overrides=overrides, line=line, support=support, pipe=pipe)
        self.check_privileges_and_wakeup(service)
        return service

    def classify(self, name: str, type_: str, command: str, line: int, key: str) -> str:
        if command == "smtpd" and type_ != "inet":
            self.warning(line, f"service {key}: mailferry's smtpd listens only on inet "
                               f"services, not {type_}; this entry is not used. Give smtpd "
                               "an inet entry, or comment this one out", key)
            return UNSUPPORTED
        if command == "error" and name == "retry":
            return BUILTIN  # qmgr's internal retry service
        if command in IMPLEMENTED_COMMANDS:
            return IMPLEMENTED
        if command in BUILTIN_COMMANDS:
            return BUILTIN
        if command in UNSUPPORTED_COMMANDS:
            self.warning(line, f"service {key}: mailferry does not provide the Postfix "
                               f"{command} daemon, so this entry is not used; "
                               f"{UNSUPPORTED_COMMANDS[command]}", key)
            return UNSUPPORTED
        self.error(line, f'service {key}: unknown command "{command}": not a Postfix daemon. '
                         "To run other software, use a pipe service (see pipe(8)) or run it "
                         "outside mailferry", key)
        return UNSUPPORTED

    # ---- daemon options

    def parse_daemon_options(self, words: list[_Word], key: str):
        """Split off leading daemon options; the rest are the command's arguments."""
        options: list[str] = []
        overrides: dict[str, str] = {}
        index = 0
        while index < len(words) and _is_option(words[index].text):
            word = words[index]
            index += 1
            if word.text == "--":
                options.append(word.text)
                break
            letters, has_o, attached = word.text[1:].partition("o")
            self.check_option_letters(letters, word, key)
            if not has_o:
                options.append(word.text)
                continue
            if letters:
                options.append("-" + letters)
            if attached:
                value = _strip_braces(attached)
            elif index < len(words):
                value = words[index].text
                index += 1
            else:
                self.error(word.line, f'service {key}: "-o" at the end of the entry needs '
                                      "name=value after it", key)
                break
            if "=" not in value and index < len(words) and words[index].text.startswith("="):
                index = self.report_spaced_override(value, words, index, word, key)
                continue
            self.add_override(value, word, key, options, overrides)
        return options, overrides, words[index:]

    def check_option_letters(self, letters: str, word: _Word, key: str) -> None:
        for letter in letters:
            if letter in "vD":
                continue
            if letter in IGNORED_DAEMON_OPTIONS:
                self.warning(word.line, f'service {key}: mailferry ignores the daemon option '
                                        f'"-{letter}"; remove it', key)
            else:
                self.error(word.line, f'service {key}: unknown daemon option "-{letter}"; '
                                      "the options are -o name=value, -v and -D", key)

    def report_spaced_override(self, name: str, words: list[_Word], index: int, word: _Word,
                               key: str) -> int:
        """"-o name = value": Postfix stops reading options at the "=", so the
        daemon fails. Report it and skip the words so later -o still count."""
        skip = 2 if words[index].text == "=" and index + 1 < len(words) else 1
        shown = " ".join(w.text for w in words[index:index + skip])
        self.error(word.line, f'service {key}: "-o {name} {shown}" has whitespace around "=", '
                              "which Postfix does not accept; write -o name=value, or "
                              "-o { name = value } for a value with spaces", f"{key}/{name}")
        return index + skip

    def add_override(self, value: str, word: _Word, key: str, options: list[str],
                     overrides: dict[str, str]) -> None:
        name, equals, setting = value.partition("=")
        name, setting = name.strip(), setting.strip()
        if not equals or not name or any(char.isspace() for char in name):
            self.error(word.line, f'service {key}: "-o {value}" is not name=value; '
                                  "write -o name=value", key)
            options.extend(("-o", value))
            return
        if name in overrides:
            self.warning(word.line, f"service {key}: -o {name} is given more than once; "
                                    "the last one is used. Remove the others", f"{key}/{name}")
        overrides[name] = setting
        options.extend(("-o", f"{name}={setting}"))

    def check_no_arguments(self, rest: list[_Word], command: str, key: str) -> None:
        if not rest:
            return
        first = rest[0]
        if first.text.startswith("#"):
            self.error(first.line, f'service {key}: "{first.text}" is not a comment: in '
                                   "master.cf a comment must start its own line. Move it to "
                                   "a line of its own", key)
            return
        if command in _IGNORE_EXTRA_ARGUMENTS:
            # smtp(8)/lmtp(8) never look at their arguments (mailcow's `lmtp flags=O`): not fatal.
            self.warning(first.line, f'service {key}: unexpected argument "{first.text}" for '
                                     f"{command}; Postfix's {command} ignores it, and so does "
                                     "mailferry, with any -o after it. Only -o name=value, -v and "
                                     "-D belong here: remove it", key)
            return
        self.error(first.line, f'service {key}: unexpected argument "{first.text}" for '
                               f"{command}; Postfix's {command} refuses it, and options after "
                               "it (such as -o) are not read. Only -o name=value, -v and -D "
                               "belong here", key)

    # ---- pipe(8)

    def parse_pipe(self, words: list[_Word], line: int, key: str) -> PipeSpec | None:
        attributes: dict[str, str] = {}
        argv: list[str] | None = None
        ok = True
        for index, word in enumerate(words):
            name, equals, value = word.text.partition("=")
            if name == "argv" and equals:
                argv = self.pipe_argv(value, words[index + 1:], word, key)
                ok = ok and argv is not None
                break
            if not equals or name not in PIPE_ATTRIBUTES:
                ok = False
                self.report_pipe_word(word, key)
                continue
            if name in attributes:
                self.warning(word.line, f"service {key}: pipe attribute {name}= is given more "
                                        "than once; the last one is used", key)
            attributes[name] = value
        else:
            self.error(line, f"service {key}: pipe service has no argv=; add "
                             "argv=/path/to/command ... as its last attribute", key)
            return None
        spec = self.build_pipe_spec(attributes, argv or [], line, key)
        return spec if ok else None

    def report_pipe_word(self, word: _Word, key: str) -> None:
        if word.text.startswith("-"):
            self.error(word.line, f'service {key}: "{word.text}" comes after a pipe attribute; '
                                  "daemon options such as -o must come before flags=, user= "
                                  "and argv=", key)
        elif word.text.startswith("#"):
            self.error(word.line, f'service {key}: "{word.text}" is not a comment: in '
                                  "master.cf a comment must start its own line", key)
        else:
            self.error(word.line, f'service {key}: unknown pipe attribute "{word.text}"; '
                                  f"pipe(8) knows {'=, '.join(PIPE_ATTRIBUTES)}= and argv=", key)

    def pipe_argv(self, first: str, following: list[_Word], word: _Word,
                  key: str) -> list[str] | None:
        if not first:
            self.error(word.line, f'service {key}: nothing directly after "argv="; write the '
                                  "command right after it, without a space", key)
            return None
        return [first, *(w.text for w in following)]

    def build_pipe_spec(self, attributes: dict[str, str], argv: list[str], line: int,
                        key: str) -> PipeSpec | None:
        user_text = attributes.get("user", "")
        user, _, group = user_text.partition(":")
        if not user:
            self.error(line, f"service {key}: pipe service has no user=; add user=name "
                             "(the account that runs the command)", key)
            return None
        if user == "root":
            self.error(line, f"service {key}: pipe(8) refuses to run commands as root; "
                             "set user= to an unprivileged account", key)
            return None
        flags = attributes.get("flags", "")
        unknown = sorted({letter for letter in flags if letter not in PIPE_FLAG_LETTERS})
        if unknown:
            self.warning(line, f"service {key}: unknown pipe flag(s) {''.join(unknown)} in "
                               f'flags={flags}; pipe(8) knows "{PIPE_FLAG_LETTERS}". Remove '
                               "the others", key)
        size = attributes.get("size")
        if size is not None and not re.fullmatch(r"[0-9]+", size):
            self.error(line, f'service {key}: size={size} is not a number of bytes', key)
            return None
        return PipeSpec(
            user=user, group=group or None, argv=argv, flags=flags,
            size=int(size) if size is not None else None,
            eol=_decode_escapes(attributes.get("eol", "\\n")),
            directory=attributes.get("directory"), chroot=attributes.get("chroot"),
            null_sender=attributes.get("null_sender", "MAILER-DAEMON"))

    # ---- checks across fields and entries

    def check_privileges_and_wakeup(self, service: Service) -> None:
        if service.command == "pipe" and service.is_unprivileged:
            self.warning(service.line, f"service {service.key}: pipe(8) needs privileges to "
                                       "switch to user=; Postfix will not run it unprivileged. "
                                       'Set the unpriv field (4th) to "n"', service.key)
        if service.command == "pickup" and not service.wakeup_seconds:
            self.warning(service.line, f"service {service.key}: pickup needs a wake up time "
                                       "to find mail left in the maildrop directory; set the "
                                       "wakeup field (6th) to e.g. 60", service.key)

    def drop_duplicates(self, services: list[Service]) -> list[Service]:
        # master(5): "only the last one is remembered".
        last: dict[tuple[str, str], Service] = {}
        for service in services:
            earlier = last.get((service.name, service.type))
            if earlier is not None:
                # Postfix accepts it (the last one wins), so it is no reason to refuse to start.
                self.warning(service.line, f"service {service.key} is defined twice, at lines "
                                           f"{earlier.line} and {service.line}; only the last "
                                           "one is used, as in Postfix. Remove or rename one of them",
                             service.key)
            last[(service.name, service.type)] = service
        return [service for service in services
                if last[(service.name, service.type)] is service]

    def check_listen_conflicts(self, services: list[Service]) -> None:
        seen: dict[tuple[str | None, int], Service] = {}
        for service in services:
            if service.type != "inet":
                continue
            address = service.listen_address()
            earlier = seen.get(address)
            if earlier is not None:
                self.error(service.line, f"services {earlier.key} (line {earlier.line}) and "
                                         f"{service.key} (line {service.line}) both listen on "
                                         f"port {address[1]}; only one can. Remove one or "
                                         "change its port", service.key)
            seen[address] = service


@dataclass(frozen=True, slots=True)
class _FixedFields:
    private: bool | None
    unpriv: bool | None
    chroot: bool | None
    wakeup: int | None
    wakeup_after_first_use: bool
    maxproc: int | None


def _parse_fixed_fields(fields: list[str]) -> _FixedFields:
    """Fields 1-7 of an entry; raises ValueError with what to write instead."""
    name, type_, private, unpriv, chroot, wakeup, maxproc = fields
    if type_ not in SERVICE_TYPES:
        raise ValueError(f'invalid type field "{type_}"; use one of {", ".join(SERVICE_TYPES)}')
    fixed = _FixedFields(
        _parse_flag(private, "private"), _parse_flag(unpriv, "unpriv"),
        _parse_flag(chroot, "chroot"), *_parse_wakeup(wakeup), _parse_maxproc(maxproc))
    if type_ == "inet":
        _, port = split_inet_name(name)
        port_number(port)
    return fixed


def _parse_flag(text: str, label: str) -> bool | None:
    if text == "-":
        return None
    if text not in ("y", "n"):
        raise ValueError(f'invalid {label} field "{text}"; use "y", "n" or "-" for the default')
    return text == "y"


def _parse_wakeup(text: str) -> tuple[int | None, bool]:
    if text == "-":
        return None, False
    match = re.fullmatch(r"([0-9]+)(\??)", text)
    if match is None:
        raise ValueError(f'invalid wakeup field "{text}"; use a number of seconds, '
                         'optionally followed by "?", or "-"')
    return int(match[1]), bool(match[2])


def _parse_maxproc(text: str) -> int | None:
    if text == "-":
        return None
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f'invalid maxproc field "{text}"; use a number (0 for no limit) '
                         'or "-" for $default_process_limit')
    return int(text)


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-"


def _matching_brace(text: str, start: int) -> int | None:
    depth = 0
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    return None


def _strip_braces(text: str) -> str:
    if text.startswith("{") and _matching_brace(text, 0) == len(text) - 1:
        return text[1:-1].strip()
    return text


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
            "v": "\v", "\\": "\\"}


def _decode_escapes(text: str) -> str:
    """pipe(8) eol=: \\a \\b \\f \\n \\r \\t \\v \\\\ and up to three octal digits."""
    def replace(match: re.Match[str]) -> str:
        escape = match[1]
        if escape[0] in "01234567":
            return chr(int(escape, 8))
        return _ESCAPES.get(escape, "\\" + escape)

    return re.sub(r"\\([0-7]{1,3}|.)", replace, text)
