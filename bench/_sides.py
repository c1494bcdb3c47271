"""What bench/intake and bench/relay share: the two MTAs as the benches drive them, round after
round, and the parts of the report that are the same. The peers themselves (private Postfix,
mailferry daemon, smtp-sink, smtp-source, /proc sampling) are `tests.peers`, shared with the
integration tests; a bench script puts the repository on sys.path before importing this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from tests.peers import PeerError, free_port, make_traversable, progress, tail_file, wait_for_port
from tests.peers.mailferry import MailferryDaemon, main_cf_text, private_settings
from tests.peers.postfix import PostfixInstance
from tests.peers.processes import Reaper

HOST = "127.0.0.1"
MAIL_OWNER = "nobody"
TARGET_RATIO = 1.5
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


class RunError(Exception):
    """A run that produced no trustworthy figure."""


class Side(Protocol):
    """One MTA as a bench drives it: reset (fresh port and queue, `main` settings on top),
    start (its PID once it greets), stop; what it ran with, for the report."""

    name: str
    port: int
    log_file: Path

    def reset(self, main: dict[str, str] | None = None) -> None: ...
    def start(self) -> int: ...
    def stop(self) -> None: ...
    def log_tail(self) -> str: ...
    def version(self) -> str: ...
    def settings(self) -> dict: ...


class PostfixSide:
    """A private Postfix restarted for every round on a fresh port with a brand-new queue."""

    name = "postfix"

    def __init__(self, root: Path, reaper: Reaper, main: dict[str, str]):
        self.port = 0
        self.pf = PostfixInstance(root, [], dict(main))
        self.pf.write_config()
        self.log_file = self.pf.log_file
        reaper.add("postfix", self.pf.stop)

    def version(self) -> str:
        return self.pf.version()

    def settings(self) -> dict:
        return self.pf.settings()

    def reset(self, main: dict[str, str] | None = None) -> None:
        self.pf.stop()
        # a fresh port each round: no TIME_WAIT left over from the last one
        self.port = free_port(HOST)
        self.pf.services = [f"{HOST}:{self.port} inet n - n - - smtpd"]
        self.pf.main.update(main or {})
        self.pf.write_config()
        self.pf.delete_all()
        left = self.pf.queue_files()
        if left:
            raise RunError(f"postsuper -d ALL left {left} queue files in {self.pf.queue_dir}")
        self.pf.fresh_queue()  # and a new directory, as mailferry gets
        self.pf.log_file.unlink(missing_ok=True)

    def start(self) -> int:
        pid = self.pf.start()
        wait_for_port(HOST, self.port, 30, banner=True, what="postfix smtpd")
        return pid

    def stop(self) -> None:
        self.pf.stop()

    def log_tail(self) -> str:
        return tail_file(self.pf.log_file)


class MailferrySide:
    """The mailferry daemon (tests.peers.mailferry: scrubbed environment, durable SQLite queue,
    DNS off), restarted for every round on a fresh port with its queue directory deleted."""

    name = "mailferry"

    def __init__(self, root: Path, binary: str, reaper: Reaper, main: dict[str, str]):
        self.port = 0
        directory = root / "mailferry"
        directory.mkdir()
        shutil.chown(directory, MAIL_OWNER)  # the daemon opens its log after dropping root
        self.main = private_settings(directory, MAIL_OWNER, myhostname="bench.example.test",
                                     mydestination="", mynetworks="127.0.0.0/8", **main)
        self.services: list[str] = []
        self.mf = MailferryDaemon(directory, main_cf_text(self.main), "", 0, program=[binary], banner=True)
        self.log_file = self.mf.log_path
        reaper.add("mailferry", self.mf.stop)

    def version(self) -> str:
        return self.mf.version(REPO)

    def settings(self) -> dict:
        return self.mf.settings()

    def reset(self, main: dict[str, str] | None = None) -> None:
        self.mf.stop(60)
        self.port = self.mf.port = free_port(HOST)  # a fresh port each round, as for Postfix
        self.main.update(main or {})
        self.mf.write_config(main_cf_text(self.main),
                             "\n".join([f"{HOST}:{self.port} inet n - n - - smtpd", *self.services]) + "\n")
        self.mf.fresh_queue()

    def start(self) -> int:
        return self.mf.start(30).process.pid

    def queue_summary(self) -> tuple[int, str]:
        return self.mf.queue_summary()

    def stop(self) -> None:
        self.mf.stop(60)

    def log_tail(self) -> str:
        return self.mf.log_tail()


def parse_arguments(description: str, messages: int = 20000,
                    more: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every comparing bench has; `more` adds a bench's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=2, help="runs per server (default 2)")
    parser.add_argument("--messages", type=int, default=messages, help=f"messages a run (default {messages})")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source -s (default 20)")
    parser.add_argument("--size", type=int, default=1024, help="smtp-source -l (default 1024)")
    parser.add_argument("--mailferry", default=str(REPO / ".venv" / "bin" / "mailferry"),
                        help="the mailferry command (default <repo>/.venv/bin/mailferry)")
    parser.add_argument("--only", choices=("postfix", "mailferry"), help="run one server only")
    parser.add_argument("--directory", help="where the temp dir (queues, logs) goes "
                                            "(default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    if more is not None:
        more(parser)
    return parser.parse_args()


def missing_tools(args: argparse.Namespace, tools: tuple[str, ...], bench: str) -> bool:
    """Say what is missing (and that root is needed); True if the bench cannot run."""
    missing = [tool for tool in tools if not os.access(tool, os.X_OK)]
    if args.only != "postfix" and not os.access(args.mailferry, os.X_OK):
        missing.append(args.mailferry)
    if missing:
        progress(f"missing: {', '.join(missing)} (Debian package postfix; mailferry: "
                 f"python -m venv .venv && .venv/bin/pip install -e .)")
        return True
    if os.geteuid() != 0:
        progress(f"bench/{bench} must run as root: it starts a private Postfix instance")
        return True
    return False


def note_load() -> tuple[float, float, float]:
    load = os.getloadavg()
    if load[0] > 0.5:
        progress(f"note: load average {load[0]:.2f} before the bench: other work on this "
                 f"machine makes the figures noisier (the ratio less so: the servers alternate)")
    return load


def mib(n: int) -> str:
    return f"{n / 1048576:.1f}"


def ratios(summaries: dict[str, dict | None], target: float = TARGET_RATIO) -> dict | None:
    pf, mf = summaries.get("postfix"), summaries.get("mailferry")
    if not pf or not mf:
        return None
    return {
        "best": mf["best_messages_per_second"] / pf["best_messages_per_second"],
        "median": mf["median_messages_per_second"] / pf["median_messages_per_second"],
        "cpu_per_message": mf["median_cpu_ms_per_message"] / pf["median_cpu_ms_per_message"],
        "target": target,
    }


def print_settings(settings: dict[str, dict | None]) -> None:
    """The settings each server ran with, as it reads them (postconf -n), and mailferry's
    environment: so a table never travels without what produced it."""
    for name, values in settings.items():
        if not values:
            continue
        print(f"{name} ran with (postconf -n):")
        for line in values.get("postconf_n", []):
            print(f"    {line}")
        if "environment" in values:
            variables = " ".join(f"{k}={v}" for k, v in values["environment"].items())
            print(f"    environment: {variables}; removed: {', '.join(values['environment_removed'])}")
    print()


def exit_status(results: dict[str, list[dict]]) -> int:
    return 1 if any("error" in r for runs in results.values() for r in runs) else 0


def bench_root(args: argparse.Namespace, reaper: Reaper, bench: str) -> Path:
    """The temp dir for queues and logs, under --directory; removed at exit unless --keep."""
    root = Path(tempfile.mkdtemp(prefix=f"mailferry-{bench}-", dir=args.directory))
    if args.keep:
        progress(f"keeping {root}")
    else:
        reaper.add("temp dir", lambda: shutil.rmtree(root, ignore_errors=True))
    make_traversable(root)
    return root


def run_rounds(args: argparse.Namespace, sides: Sequence[Side], run_once: Callable[[Side, str], dict],
               describe: Callable[[dict], str]) -> dict[str, list[dict]]:
    """--rounds rounds, the servers alternating; a failed run is kept as its error, never a figure."""
    results: dict[str, list[dict]] = {side.name: [] for side in sides}
    for rnd in range(1, args.rounds + 1):
        for side in sides:
            try:
                run = run_once(side, f"round {rnd}/{args.rounds}")
            except (RunError, PeerError) as exc:
                progress(f"  {side.name}: error: {exc}")
                results[side.name].append({"round": rnd, "error": str(exc), "log_tail": side.log_tail()})
                continue
            run["round"] = rnd
            results[side.name].append(run)
            progress(f"  {describe(run)}")
    return results


def print_verdict(ratio: dict | None, results: dict[str, list[dict]], summaries: dict[str, dict | None],
                  what: str) -> None:
    if ratio:
        verdict = "met" if ratio["median"] >= ratio["target"] else "NOT met"
        print(f"mailferry/Postfix {what} msg/s: best {ratio['best']:.2f}x, median "
              f"{ratio['median']:.2f}x (target >= {ratio['target']}x: {verdict}); "
              f"CPU per message {ratio['cpu_per_message']:.2f}x Postfix's")
    for name in results:
        if summaries.get(name) is None:
            first = next((r["error"] for r in results[name] if "error" in r), "")
            print(f"{name}: not measured: {first.splitlines()[0] if first else 'no run'}")


def write_json(bench: str, args: argparse.Namespace, about: dict, load_before: tuple[float, float, float],
               settings: dict[str, dict], results: dict[str, list[dict]], summaries: dict[str, dict | None],
               ratio: dict | None) -> None:
    """bench/out/BENCH.json: the arguments, `about` (command, setups), versions and machine, the
    settings each server ran with, every run, the summaries and the ratio."""
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    (out / f"{bench}.json").write_text(json.dumps({
        "arguments": dict(vars(args)),
        **about,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "postfix_settings": settings.get("postfix"),
        "mailferry_settings": settings.get("mailferry"),
        "runs": results,
        "summary": summaries,
        "ratio_mailferry_to_postfix": ratio,
    }, indent=2) + "\n")
    progress(f"wrote {out / f'{bench}.json'}")
