"""The golden content-check cases (cases.txt, with the tables header_checks and body_checks
next to it): loaded once for the unit test and the side-by-side test with real Postfix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
HEADER_CHECKS = HERE / "header_checks"
BODY_CHECKS = HERE / "body_checks"
SETTINGS = {"header_size_limit": "2000", "body_checks_size_limit": "1000"}
RECIPIENT = "rcpt@dest.test"


@dataclass
class Case:
    name: str
    expect: list[tuple[str, str]] = field(default_factory=list)   # (kind, argument)
    lines: list[str] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return f"case-{self.name}@sender.test"

    def expected(self, kind: str) -> list[str]:
        return [argument for what, argument in self.expect if what == kind]

    @property
    def reply(self) -> str:
        return self.expected("reply")[0]

    @property
    def outcome(self) -> str:
        found = [kind for kind, _ in self.expect if kind in ("delivered", "held", "discarded")]
        return found[0] if found else "refused"

    def message(self, sink_port: int = 0) -> bytes:
        top = [f"From: <{self.sender}>", f"To: <{RECIPIENT}>", "Date: Sun, 6 Dec 2026 05:00:00 +0000",
               f"Message-ID: <{self.name}@golden.test>"]
        lines = []
        for line in self.lines:
            if line.startswith("@repeat "):
                _, count, text = line.split(" ", 2)
                lines += [text] * int(count)
            else:
                lines.append(line)
        text = "\r\n".join(top + lines) + "\r\n"
        return text.replace("SINKPORT", str(sink_port)).encode()


def load() -> list[Case]:
    cases: list[Case] = []
    for line in (HERE / "cases.txt").read_text().split("\n"):
        if line.startswith("== "):
            cases.append(Case(line[3:].strip()))
        elif not cases:
            continue
        elif line.startswith("expect: ") and not cases[-1].lines:
            kind, _, argument = line[len("expect: "):].partition(" ")
            cases[-1].expect.append((kind, argument))
        else:
            cases[-1].lines.append(line)
    for case in cases:
        while case.lines and case.lines[-1] == "":
            case.lines.pop()
    return cases


def table_text(path: Path, sink_port: int) -> str:
    return path.read_text().replace("SINKPORT", str(sink_port))


CASES = load()
