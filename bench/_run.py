"""The pure parts of bench/run: the scenarios (which bench, which load), reading each bench's
medians from its JSON into table rows, the target verdicts, the table, and the section of
docs/performance.md between the markers. Standard library only, and nothing here runs a bench:
bench/run starts on a fresh machine before the venv exists, and tests/unit/bench imports this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

BEGIN = "<!-- bench/run: begin -->"
END = "<!-- bench/run: end -->"

# The latency figures in bench/relay's JSON (relay-small), as the latency helper writes them
# (/work/wt/latency_KEYS): {"latency": {"postfix": {"data_to_250_ms": {"p50", "p99", ...},
# "250_to_delivered_ms": {...}}, "mailferry": {...}, ...}}, the p99 already the median over rounds;
# "latency" absent or null when not measured.
LATENCY_KEY = "latency"
LATENCY_LEGS = (("end of DATA -> 250", "data_to_250_ms"), ("250 -> delivered", "250_to_delivered_ms"))


# --------------------------------------------------------------------------
# targets and verdicts

@dataclass(frozen=True)
class Target:
    """What mailferry's figure must do against Postfix's. `kind`:
    "ratio_at_least": mailferry / Postfix >= value (rates), with an optional lower floor;
    "ratio_at_most":  mailferry / Postfix <= value (times: mailferry no slower);
    "at_most":        mailferry's own figure <= value (an absolute limit, in the row's unit)."""

    kind: str
    value: float
    floor: float | None = None

    def text(self, unit: str = "") -> str:
        if self.kind == "ratio_at_least":
            floor = f" (floor {self.floor:g}x)" if self.floor is not None else ""
            return f">= {self.value:g}x{floor}"
        if self.kind == "ratio_at_most":
            return "<= Postfix's" if self.value == 1 else f"<= {self.value:g}x"
        return f"<= {self.value:g} {unit}".rstrip()

    def verdict(self, postfix: float | None, mailferry: float | None) -> str:
        """"met", "NOT met", "floor met" (between the floor and the target), or "-" when a
        figure is missing."""
        if mailferry is None:
            return "-"
        if self.kind == "at_most":
            return "met" if mailferry <= self.value else "NOT met"
        r = ratio(postfix, mailferry)
        if r is None:
            return "-"
        if self.kind == "ratio_at_most":
            return "met" if r <= self.value else "NOT met"
        if r >= self.value:
            return "met"
        if self.floor is not None and r >= self.floor:
            return "floor met"
        return "NOT met"


def ratio(postfix: float | None, mailferry: float | None) -> float | None:
    """mailferry / Postfix, or None when either is missing or Postfix's is zero."""
    if postfix is None or mailferry is None or postfix == 0:
        return None
    return mailferry / postfix


def median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count); the benches give bench/run their
    medians, this is for the few figures it combines itself."""
    if not values:
        raise ValueError("median of nothing")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# --------------------------------------------------------------------------
# rows

@dataclass
class Row:
    scenario: str
    load: str
    figure: str                      # what is measured, with its unit
    postfix: float | None = None
    mailferry: float | None = None
    target: Target | None = None
    unit: str = ""
    error: str | None = None         # the scenario failed: its reason, never a figure
    note: str | None = None          # e.g. "not measured": no figure, no failure

    @property
    def ratio(self) -> float | None:
        return ratio(self.postfix, self.mailferry)

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "FAILED"
        if self.target is None:
            return "-"
        return self.target.verdict(self.postfix, self.mailferry)


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cells(row: Row) -> list[str]:
    name = f"{row.scenario}: {row.figure}" if row.figure else row.scenario
    if row.error is not None:
        return [name, row.load, "failed", "failed", "-", row.target.text(row.unit) if row.target else "-",
                f"FAILED: {row.error}"]
    if row.note is not None and row.postfix is None and row.mailferry is None:
        return [name, row.load, "-", "-", "-", row.target.text(row.unit) if row.target else "-", row.note]
    r = row.ratio
    return [name, row.load, number(row.postfix), number(row.mailferry),
            f"{r:.2f}x" if r is not None else "-",
            row.target.text(row.unit) if row.target else "-", row.verdict]


HEADER = ["scenario", "load", "Postfix median", "mailferry median", "ratio", "target", "met?"]


def table(rows: list[Row]) -> str:
    """A Markdown table: readable on a terminal and in docs/performance.md."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells(row)) + " |")
    return "\n".join(lines)


def failed(rows: list[Row]) -> bool:
    return any(row.error is not None for row in rows)


# --------------------------------------------------------------------------
# reading the benches' JSON

def _summary(data: dict, name: str, key: str, scale: float = 1.0) -> float | None:
    side = (data.get("summary") or {}).get(name)
    if not side or side.get(key) is None:
        return None
    return side[key] * scale


def relay_rows(figure: str, key: str, target: Target, unit: str = ""):
    def extract(data: dict, scenario: str, load: str) -> list[Row]:
        return [Row(scenario, load, figure, _summary(data, "postfix", key), _summary(data, "mailferry", key),
                    target, unit)]
    return extract


def relay_small_rows(data: dict, scenario: str, load: str) -> list[Row]:
    rows = relay_rows("msg/s", "median_messages_per_second", Target("ratio_at_least", 2.0))(data, scenario, load)
    return rows + latency_rows(data, scenario, load)


def latency_rows(data: dict, scenario: str, load: str, key: str = LATENCY_KEY) -> list[Row]:
    """The latency rows under the small-relay load: each leg's p99 (ms) from bench/relay's JSON;
    without them (an older bench/relay, or no measured run), rows that say so, as no figure and
    no failure."""
    latency = data.get(key) or {}
    rows = []
    for leg, name in LATENCY_LEGS:
        def p99(server: str) -> float | None:
            value = ((latency.get(server) or {}).get(name) or {}).get("p99")
            return float(value) if isinstance(value, (int, float)) else None
        row = Row(scenario, load, f"latency p99 {leg} (ms)", p99("postfix"), p99("mailferry"),
                  Target("ratio_at_most", 1.0), "ms")
        if row.postfix is None and row.mailferry is None:
            row.note = f"not measured (no {key}.*.{name}.p99 in relay.json)"
        rows.append(row)
    return rows


def ldap_rows(data: dict, scenario: str, load: str) -> list[Row]:
    rows = []
    for mode, target in (("cold", 1.0), ("warm", 1.5)):
        key = "median_messages_per_second"
        rows.append(Row(scenario, load, f"{mode} cache, msg/s", _summary(data, f"postfix {mode}", key),
                        _summary(data, f"mailferry {mode}", key), Target("ratio_at_least", target)))
    return rows


def connections_rows(data: dict, scenario: str, load: str) -> list[Row]:
    idle = (data.get("arguments") or {}).get("idle", "?")
    return [
        Row(scenario, load, f"RSS of all processes, {idle} idle sessions (MB)",
            _summary(data, "postfix", "median_idle_rss_bytes", 1e-6),
            _summary(data, "mailferry", "median_idle_rss_bytes", 1e-6), Target("at_most", 200), "MB"),
        Row(scenario, load, "p99 transaction latency, connect -> 221 (ms)",
            _summary(data, "postfix", "median_full_p99_ms"), _summary(data, "mailferry", "median_full_p99_ms"),
            Target("ratio_at_most", 1.0), "ms"),
        Row(scenario, load, "p99 end of DATA -> 250 (ms)",
            _summary(data, "postfix", "median_eod_p99_ms"), _summary(data, "mailferry", "median_eod_p99_ms"),
            Target("ratio_at_most", 1.0), "ms"),
    ]


def postmap_rows(data: dict, scenario: str, load: str, reference: str = "postfix(hash)") -> list[Row]:
    tools = data.get("tools") or {}
    mf, pf = tools.get("mailferry") or {}, tools.get(reference) or {}

    def both(key: str, scale: float = 1.0) -> tuple[float | None, float | None]:
        def one(tool: dict) -> float | None:
            value = (tool.get(key) or {}).get("median")
            return None if value is None else value * scale
        return one(pf), one(mf)

    lookups = data.get("lookups", "?")
    entries = data.get("entries", "?")
    return [
        Row(scenario, load, f"build {entries:,} entries (s)" if isinstance(entries, int) else "build (s)",
            *both("build_s"), Target("ratio_at_most", 1.0), "s"),
        Row(scenario, load, f"{lookups:,} lookups, one -q process (s)" if isinstance(lookups, int)
            else "lookups (s)", *both("batch_lookups_s"), Target("ratio_at_most", 1.0), "s"),
        Row(scenario, load, "one postmap -q KEY (ms)", *both("single_q_ms"), None, "ms"),
    ]


# --------------------------------------------------------------------------
# the scenarios

@dataclass
class Scenario:
    name: str
    bench: str                                   # bench/NAME
    arguments: list[str]                         # the load
    quick: list[str]                             # a smoke run's load
    extract: Callable[[dict, str, str], list[Row]]
    rounds_option: str = "--rounds"
    json_name: str = ""                          # bench/out/NAME.json (default: bench)
    passes_directory: bool = True                # takes --directory

    def __post_init__(self) -> None:
        self.json_name = self.json_name or self.bench

    def command(self, rounds: int, quick: bool, directory: str | None = None) -> list[str]:
        args = [*(self.quick if quick else self.arguments), self.rounds_option, str(rounds)]
        if directory and self.passes_directory:
            args += ["--directory", directory]
        return args

    def load(self, quick: bool) -> str:
        return " ".join(self.quick if quick else self.arguments)


SCENARIOS: list[Scenario] = [
    Scenario("relay-small", "relay", ["--sessions", "20", "--messages", "20000", "--size", "1024"],
             ["--sessions", "5", "--messages", "300", "--size", "1024"], relay_small_rows),
    Scenario("relay-large", "relay", ["--sessions", "10", "--messages", "300", "--size", "1048576"],
             ["--sessions", "5", "--messages", "30", "--size", "1048576"],
             relay_rows("MB/s", "median_megabytes_per_second", Target("ratio_at_least", 1.5, floor=1.0))),
    Scenario("fan-out", "relay", ["--sessions", "10", "--messages", "2000", "--recipients", "50"],
             ["--sessions", "5", "--messages", "100", "--recipients", "50"],
             relay_rows("recipient deliveries/s", "median_deliveries_per_second", Target("ratio_at_least", 2.0))),
    Scenario("intake", "intake", ["--sessions", "20", "--messages", "20000", "--size", "1024"],
             ["--sessions", "5", "--messages", "300", "--size", "1024"],
             relay_rows("accepted msg/s", "median_messages_per_second", Target("ratio_at_least", 2.0))),
    Scenario("submission", "submission", ["--sessions", "20", "--messages", "2000", "--size", "1024"],
             ["--sessions", "5", "--messages", "100", "--size", "1024"],
             relay_rows("sessions/s", "median_messages_per_second", Target("ratio_at_least", 1.5))),
    Scenario("ldap", "ldap", ["--sessions", "20", "--messages", "3000", "--entries", "3000"],
             ["--sessions", "5", "--messages", "150", "--entries", "100"], ldap_rows),
    Scenario("connections", "connections", ["--idle", "5000", "--active", "1000"],
             ["--idle", "200", "--active", "20", "--seconds", "5", "--warmup", "2", "--sources", "2",
              "--generators", "1"], connections_rows),
    Scenario("postmap", "postmap", ["--entries", "1000000", "--lookups", "10000"],
             ["--entries", "20000", "--lookups", "1000"], postmap_rows, rounds_option="--repeat",
             passes_directory=False),
]


def select(only: str | None) -> list[Scenario]:
    """The scenarios named in --only (comma-separated), in the table's order."""
    if not only:
        return list(SCENARIOS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {s.name for s in SCENARIOS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [s for s in SCENARIOS if s.name in names]


def failure_reason(data: dict | None, returncode: int, stderr_tail: list[str]) -> str:
    """Why a scenario failed, in one line: the first failed run's error from the bench's JSON, else
    the last thing it said on stderr."""
    for name, runs in ((data or {}).get("runs") or {}).items():
        for run in runs:
            if isinstance(run, dict) and run.get("error"):
                first = str(run["error"]).splitlines()[0]
                return f"{name} round {run.get('round', '?')}: {first}"[:300]
    last = next((line.strip() for line in reversed(stderr_tail) if line.strip()), "")
    return f"exit {returncode}" + (f": {last[:300]}" if last else "")


# --------------------------------------------------------------------------
# docs/performance.md

def replace_section(text: str, section: str) -> str:
    """`text` with what lies between BEGIN and END replaced by `section` (the markers stay), or,
    without markers, the section with its markers inserted after the first `# ` heading (at the
    top of the file). Everything else is kept byte for byte."""
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    begin, end = text.find(BEGIN), text.find(END)
    if begin >= 0 and end >= 0:
        if end < begin or text.count(BEGIN) != 1 or text.count(END) != 1:
            raise ValueError(f"the markers {BEGIN} and {END} must appear once each, in that order")
        return text[:begin] + block + text[end + len(END):]
    if begin >= 0 or end >= 0:
        raise ValueError(f"only one of the markers {BEGIN} / {END} is in the file")
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith("# "):
            return "".join(lines[:index + 1]) + "\n" + block + "\n" + "".join(lines[index + 1:])
    return block + "\n\n" + text


@dataclass
class Machine:
    cpu: str
    cores: int
    ram: str
    kernel: str
    file_system: str
    postfix: str
    mailferry: str
    extra: dict = field(default_factory=dict)

    def text(self) -> str:
        return (f"{self.cpu}, {self.cores} cores, {self.ram} RAM, Linux {self.kernel}; bench directory on "
                f"{self.file_system}; Postfix {self.postfix}; mailferry at {self.mailferry}")


def section(date: str, machine: Machine, rounds: int, rows: list[Row], loads: list[tuple[str, tuple, tuple]],
            command: str, minutes: float, quick: bool = False) -> str:
    """The docs section: the date, the machine, the table, the load average around each scenario,
    how to read the ratio, how to reproduce."""
    load_text = "; ".join(f"{name} {before[0]:.2f} -> {after[0]:.2f}" for name, before, after in loads)
    return "\n".join([
        f"## All scenarios: `bench/run` ({date})",
        "",
        f"Machine: {machine.text()}. {rounds} round(s) per scenario and MTA, the two alternating "
        f"(A B A B), every round verified (every message delivered, queues empty) before it counts; "
        f"medians." + (" **--quick: smoke-run loads; these figures say nothing about speed.**" if quick else ""),
        "",
        table(rows),
        "",
        "ratio = mailferry's median / Postfix's: higher is better for rates, lower for times, "
        "latencies and memory. A failed scenario shows its reason, never a figure.",
        "",
        f"Load average (1 min) before -> after each scenario: {load_text}.",
        "",
        f"Reproduce (as root, on an otherwise idle machine; about {max(1, round(minutes))} min): `{command}`.",
    ])
