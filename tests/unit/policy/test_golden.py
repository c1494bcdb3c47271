"""Golden-file tests of the restriction engine, as Postfix's smtpd_check tests.

Each file in golden/ is a script: configuration, table contents, DNS records
and SMTP steps, each step followed by what the engine answered (lines that
start with `>`) and what it asked the log to say (indented lines). The test
runs the script's input through policy.session.SessionPolicy (what smtpd
drives) and compares the whole transcript with the file.

Input lines:
    main.cf NAME = VALUE        a main.cf line ({tables} is the table directory); it takes effect
                                at the next `client` line, as a reload does for new sessions
    table NAME ... end          a texthash table file, {tables}/NAME
    dns TYPE NAME VALUE...      a DNS record (A, AAAA, MX, TXT, PTR); `dns TEMPFAIL NAME` fails
                                every question about NAME for now
    client ADDRESS [NAME [REVERSE [STATUS [REVERSE_STATUS]]]]
                                a new session (STATUS: ok, unknown, tempfail, forged)
    policy_server ACTION; ...   a policy server on loopback (main.cf's {policy} is its inet:
                                endpoint) answering each request with the next action; `-` closes
                                the connection without an answer. Each request it gets is shown.
    sasl USERNAME [METHOD]      the client logged in; `sasl -` logs it out
    tls                         the session is encrypted
    pipelining                  the client talked ahead where it was not allowed
    connect | helo NAME | ehlo NAME | mail ADDRESS | rcpt ADDRESS | data | eod [FROM...] | rset
                                the SMTP steps (`mail <>` for the null sender;
                                eod's arguments are the header From: addresses)

Output lines: `> OK` or `> CODE STATUS TEXT`; `  log: WHATSUP: TEXT` for each
log line asked for; `  warning: TEXT`; `  actions: ...` after eod.

Set MAILFERRY_UPDATE_GOLDEN=1 to rewrite the files from what the engine says
(then read the diff before committing it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.policy import dns
from mailferry.policy.engine import Engine
from mailferry.policy.facts import SessionFacts
from mailferry.policy.session import SessionPolicy
from mailferry.policy.settings import PolicySettings
from mailferry.smtpd.recipient_maps import RecipientMaps
from mailferry.tables.match_lists import NetworkList

GOLDEN = Path(__file__).parent / "golden"
BASE_MAIN_CF = """\
myhostname = mx.example.com
mydomain = example.com
myorigin = $mydomain
mydestination = $myhostname, localhost
mynetworks = 127.0.0.0/8, 192.0.2.0/24
"""
STATUSES = {"ok": "ok", "unknown": "unknown", "tempfail": "tempfail", "forged": "forged"}


class FakeDns:
    def __init__(self):
        self.records: dict[tuple[str, str], list[str]] = {}
        self.failing: set[str] = set()

    def add(self, rdtype: str, name: str, value: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype.upper()), []).append(value)

    async def query(self, name: str, rdtype: str) -> dns.Answer:
        name = name.lower().rstrip(".")
        if name in self.failing:
            return dns.Answer(dns.TEMPFAIL, reason="Host not found, try again")
        values = self.records.get((name, rdtype))
        if values:
            return dns.Answer(dns.FOUND, tuple(values))
        return dns.Answer(dns.NOT_FOUND, reason="Host not found")


def is_output(line: str) -> bool:
    return line.startswith(">") or line.startswith("  ")


class Script:
    def __init__(self, tmp_path: Path):
        self.tables = tmp_path / "tables"
        self.tables.mkdir()
        self.main_cf = [BASE_MAIN_CF.replace("\n", "\n").rstrip("\n")]
        self.dns = FakeDns()
        self.policy: SessionPolicy | None = None
        self.engine: Engine | None = None
        self.config_changed = True
        self.out: list[str] = []
        self.tmp_path = tmp_path
        self.policy_actions: list[str] = []
        self.policy_endpoint = ""

    def build(self) -> Engine:
        if self.config_changed or self.engine is None:
            text = "\n".join(self.main_cf).replace("{tables}", str(self.tables))
            text = text.replace("{policy}", self.policy_endpoint) + "\n"
            config = Config(str(self.tmp_path), parse_main_cf(text, str(self.tmp_path / "main.cf")))
            self.config = config
            self.engine = Engine(PolicySettings.from_config(config), self.dns, RecipientMaps.from_config(config))
            self.config_changed = False
        return self.engine

    async def run(self, lines: list[str]) -> None:
        index = 0
        while index < len(lines):
            line = lines[index]
            index += 1
            if is_output(line):
                continue
            self.out.append(line)
            words = line.split()
            if not words or line.startswith("#"):
                continue
            command, arguments = words[0].lower(), words[1:]
            if command == "table":
                body = []
                while lines[index].strip() != "end":
                    body.append(lines[index])
                    index += 1
                index += 1
                self.out += body + ["end"]
                (self.tables / arguments[0]).write_text("\n".join(body) + "\n")
                self.config_changed = True
            elif command == "main.cf":
                self.main_cf.append(line.split(None, 1)[1])
                self.config_changed = True
            elif command == "dns":
                if arguments[0].upper() == "TEMPFAIL":
                    self.dns.failing.add(arguments[1].lower())
                else:
                    self.dns.add(arguments[0], arguments[1], " ".join(arguments[2:]))
            elif command == "policy_server":
                await self.start_policy_server(line.split(None, 1)[1])
            elif command == "client":
                self.new_client(arguments)
            else:
                await self.step(command, arguments)

    async def start_policy_server(self, actions: str) -> None:
        self.policy_actions = [action.strip() for action in actions.split(";")]
        if self.policy_endpoint:
            return
        server = await asyncio.start_server(self.answer_policy, "127.0.0.1", 0)
        self.policy_endpoint = f"inet:127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self.config_changed = True

    async def answer_policy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        shown = ("request", "protocol_state", "protocol_name", "client_address", "client_name",
                 "reverse_client_name", "helo_name", "sender", "recipient", "recipient_count", "sasl_username",
                 "policy_context")
        try:
            while True:
                request = {}
                while (line := (await reader.readline()).decode().rstrip("\n")):
                    name, _, value = line.partition("=")
                    request[name] = value
                if not request:
                    return
                self.out.append("  policy request: " + " ".join(f"{name}={request.get(name, '?')}"
                                                                  for name in shown))
                action = self.policy_actions.pop(0) if self.policy_actions else "DUNNO"
                if action == "-":
                    return
                writer.write(f"action={action}\n\n".encode())
                await writer.drain()
        finally:
            writer.close()

    def new_client(self, arguments: list[str]) -> None:
        engine = self.build()
        address = arguments[0]
        name = arguments[1] if len(arguments) > 1 else "unknown"
        reverse = arguments[2] if len(arguments) > 2 else name
        status = arguments[3] if len(arguments) > 3 else ("ok" if name != "unknown" else "unknown")
        reverse_status = arguments[4] if len(arguments) > 4 else ("ok" if reverse != "unknown" else status)
        facts = SessionFacts(address, client_port=12345, client_name=name, reverse_client_name=reverse,
                             client_name_status=STATUSES[status], reverse_name_status=STATUSES[reverse_status],
                             server_address="192.0.2.25", server_port=25,
                             in_mynetworks=NetworkList(self.config.get("mynetworks")).matches(address))
        self.policy = SessionPolicy(engine, facts)

    async def step(self, command: str, arguments: list[str]) -> None:
        policy = self.policy
        facts = policy.facts
        if command == "sasl":
            facts.sasl_username = "" if arguments[0] == "-" else arguments[0]
            facts.sasl_method = arguments[1] if len(arguments) > 1 else "PLAIN"
            return
        if command == "tls":
            facts.tls_protocol, facts.tls_cipher, facts.tls_cipher_bits = "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256
            return
        if command == "pipelining":
            facts.improper_pipelining = True
            return
        if command == "rset":
            policy.end_transaction()
            return
        argument = " ".join(arguments)
        if command == "connect":
            refusal = await policy.connect()
        elif command in ("helo", "ehlo"):
            refusal = await policy.helo(argument, command == "ehlo")
        elif command == "mail":
            refusal = await policy.mail("" if argument == "<>" else argument)
        elif command == "rcpt":
            refusal = await policy.rcpt(argument)
            if refusal is None:
                policy.recipient_accepted(argument)
        elif command == "data":
            refusal = await policy.data()
        elif command == "eod":
            headers = "".join(f"From: {address}\r\n" for address in arguments)
            refusal = await policy.end_of_data(f"{headers}Subject: test\r\n\r\nbody\r\n".encode())
        else:
            raise AssertionError(f"unknown golden command {command!r}")
        self.out.append("> OK" if refusal is None else f"> {refusal.reply}")
        notes, warnings = policy.session.take_notes()
        self.out += [f"  log: {note.whatsup}: {note.text}" for note in notes]
        self.out += [f"  warning: {text}" for text in warnings]
        if command == "eod":
            self.out.append(f"  actions: {describe(policy.session.actions)}")


def describe(actions) -> str:
    parts = []
    if actions.hold:
        parts.append(f"hold=({actions.hold})")
    if actions.discard:
        parts.append("discard")
    if actions.redirect:
        parts.append(f"redirect={actions.redirect}")
    if actions.filter:
        parts.append(f"filter={actions.filter}")
    parts += [f"prepend=({header})" for header in actions.prepend]
    parts += [f"bcc={address}" for address in actions.bcc]
    return " ".join(parts) or "none"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.txt")), ids=lambda path: path.stem)
def test_golden(path: Path, tmp_path: Path):
    expected = path.read_text()
    script = Script(tmp_path)
    asyncio.run(script.run(expected.splitlines()))
    actual = "\n".join(script.out).replace(str(script.tables), "{tables}")
    if script.policy_endpoint:
        actual = actual.replace(script.policy_endpoint, "{policy}")
    actual += "\n"
    if os.environ.get("MAILFERRY_UPDATE_GOLDEN") == "1":
        path.write_text(actual)
        expected = actual
    assert actual == expected
