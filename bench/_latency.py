"""bench/relay's latency figures: the probe process (bench/_probe.py) run beside the load, the
probes matched with their arrival at smtp-sink, percentiles, the per-MTA summary and its table.

Two intervals a probe message, in milliseconds:

- data_to_250: from the probe writing the end of its DATA ("\\r\\n.\\r\\n") to its reading the
  MTA's 250 (time.perf_counter_ns in the probe process);
- 250_to_delivered: from that 250 (time.time_ns, CLOCK_REALTIME, in the probe) to the message's
  arrival at the next hop: the mtime of smtp-sink's dump file for that transaction, which
  smtp-sink writes and closes when it has read the final ".", before it replies (on tmpfs, with
  nanosecond timestamps; `mtime_lag_ms` is measured to say how close an mtime is to the write).

The pure parts (percentile, interval, match, summarize_runs) are unit tested in
tests/unit/test_bench_latency.py.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROBE_PREFIX = "probe-"
INTERVALS = ("data_to_250", "250_to_delivered")
HEAD_BYTES = 1024          # a dump file's X- lines come first: enough to find the recipient


# --------------------------------------------------------------------------
# pure code

def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def interval(values_ms: list[float]) -> dict:
    return {"p50": percentile(values_ms, 0.50), "p99": percentile(values_ms, 0.99),
            "max": max(values_ms), "samples": len(values_ms)}


def match(probes: list[dict], arrivals: dict[str, list[int]]) -> tuple[dict[str, list[float]], list[str]]:
    """The probes the probe process got a 250 for (recipient, data_to_250_ns, replied_at_ns)
    against what arrived at the sink (recipient -> the mtimes in ns of its dump files). Returns
    the two intervals' samples in ms, in probe order, and the problems: a probe that did not
    arrive, or arrived more than once, or a probe recipient at the sink that no probe sent."""
    samples: dict[str, list[float]] = {name: [] for name in INTERVALS}
    problems = []
    sent = set()
    for probe in probes:
        recipient = probe["recipient"]
        sent.add(recipient)
        times = arrivals.get(recipient, [])
        if len(times) != 1:
            problems.append(f"probe {recipient} arrived {len(times)} times at the sink")
            continue
        samples["data_to_250"].append(probe["data_to_250_ns"] / 1e6)
        samples["250_to_delivered"].append((times[0] - probe["replied_at_ns"]) / 1e6)
    for recipient in sorted(set(arrivals) - sent):
        problems.append(f"{recipient} arrived at the sink but no probe got a 250 for it")
    return samples, problems


def summarize_runs(runs: list[dict]) -> dict | None:
    """Per MTA: for each interval the median over the measured runs of their p50 and p99, every
    run's figures, and all runs' samples pooled. `runs` are bench runs, those with a "latency"
    entry count."""
    measured = [r for r in runs if r.get("latency")]
    if not measured:
        return None
    summary = {}
    for name in INTERVALS:
        key = f"{name}_ms"
        per_round = [{"round": r.get("round"), **r["latency"][key]} for r in measured]
        pooled = [v for r in measured for v in r["latency"]["samples_ms"][name]]
        summary[key] = {"p50": statistics.median(x["p50"] for x in per_round),
                        "p99": statistics.median(x["p99"] for x in per_round),
                        "samples": len(pooled), "rounds": per_round, "pooled": interval(pooled)}
    return summary


def p99_ratios(latency: dict) -> dict | None:
    pf, mf = latency.get("postfix"), latency.get("mailferry")
    if not pf or not mf:
        return None
    return {name: (mf[f"{name}_ms"]["p99"] / pf[f"{name}_ms"]["p99"]
                   if pf[f"{name}_ms"]["p99"] > 0 else None) for name in INTERVALS}


# --------------------------------------------------------------------------
# the sink's side

def probe_arrivals(dump_directory: Path) -> dict[str, list[int]]:
    """recipient -> mtimes (ns) of the dump files whose transaction went to a probe recipient.
    Reads the head of every dump file (the X-Rcpt-Args lines come before the message)."""
    arrivals: dict[str, list[int]] = {}
    marker = b"X-Rcpt-Args: <" + PROBE_PREFIX.encode()
    with os.scandir(dump_directory) as entries:
        for entry in entries:
            with open(entry.path, "rb") as dump:
                head = dump.read(HEAD_BYTES)
                if marker not in head:
                    continue
                mtime = os.fstat(dump.fileno()).st_mtime_ns
            for line in head.split(b"\n"):
                if line.startswith(marker):
                    recipient = line[len(b"X-Rcpt-Args: <"):].split(b">", 1)[0].decode()
                    arrivals.setdefault(recipient, []).append(mtime)
    return arrivals


def mtime_lag_ms(directory: Path, files: int = 200) -> float:
    """The largest difference between writing a file and its mtime, over `files` files written
    there (the clock the kernel stamps mtimes with may be coarse: this bounds the error)."""
    lags = []
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        for n in range(files):
            path = os.path.join(scratch, str(n))
            with open(path, "wb") as f:
                f.write(b"x" * 1024)
            after = time.time_ns()
            lags.append(after - os.stat(path).st_mtime_ns)
    return max(lags) / 1e6


# --------------------------------------------------------------------------
# the probe process beside one run's load

class LatencyProbe:
    """bench/_probe.py against one MTA port for the length of one run's load: `start(port)` with
    the load, `follow(load)` stops it when the load's `done` is set; `count` is None until its
    result is in, then the number of probes that got a 250 (the sink must receive them too)."""

    def __init__(self, rate: float, size: int, tag: str):
        self.rate, self.size, self.tag = rate, size, tag
        self.process: subprocess.Popen | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def start(self, host: str, port: int) -> "LatencyProbe":
        from tests.peers.processes import IN_FLIGHT
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "_probe.py"), "--host", host, "--port", str(port),
             "--rate", str(self.rate), "--size", str(self.size), "--run", self.tag],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        IN_FLIGHT.add(self.process)
        return self

    def follow(self, load) -> None:
        """Stop the probes as soon as the load's `done` is set; collect the result (a thread)."""
        def wait() -> None:
            load.done.wait()
            self._collect()
        threading.Thread(target=wait, daemon=True).start()

    def _collect(self) -> None:
        from tests.peers.processes import IN_FLIGHT
        try:
            out, err = self.process.communicate("stop\n", timeout=120)
            if self.process.returncode != 0 or not out.strip():
                self.error = f"the latency probe exited {self.process.returncode}: {err[-400:]}"
            else:
                self.result = json.loads(out)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            self.error = "the latency probe did not finish within 120 s of the load's end"
        finally:
            IN_FLIGHT.discard(self.process)
            self.done.set()

    @property
    def count(self) -> int | None:
        if not self.done.is_set():
            return None
        return len(self.result["probes"]) if self.result else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def figures(self, dump_directory: Path) -> tuple[dict, list[str]]:
        """After the run: the run's latency entry and what is wrong (empty: nothing)."""
        if self.error or not self.result:
            return {}, [self.error or "the latency probe gave no result"]
        problems = [f"probe {f['recipient']} failed at {f['stage']}: {f['error']}"
                    for f in self.result["failures"]][:5]
        if self.result["failures"]:
            problems.insert(0, f"{len(self.result['failures'])} of {self.result['started']} probes failed")
        samples, unmatched = match(self.result["probes"], probe_arrivals(dump_directory))
        problems += unmatched[:10]
        if not samples["data_to_250"] and not problems:
            problems.append("no probe was sent (the load ended before the first)")
        if problems:
            return {}, problems
        return {
            "probes": len(self.result["probes"]),
            "probe_seconds": self.result["seconds"],
            "probe_cpu_seconds": self.result["cpu_seconds"],
            **{f"{name}_ms": interval(samples[name]) for name in INTERVALS},
            "samples_ms": samples,
        }, []


# --------------------------------------------------------------------------
# the report

def print_latency(latency: dict, results: dict[str, list[dict]]) -> None:
    probe = latency["probe"]
    print(f"latency: probe messages at {probe['rate_per_second']:g}/s beside the load, each on its own "
          f"connection, {probe['size']} bytes (ms; {probe['mtime_lag_ms']:.3f} ms largest mtime lag)")
    print()
    width = max(10, *(len(name) for name in results))
    header = (f"{'server':<{width}} {'round':>5} {'probes':>6} {'DATA->250 p50':>13} {'p99':>8} {'max':>8} "
              f"{'250->sunk p50':>13} {'p99':>8} {'max':>8}")
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        for r in runs:
            lat = r.get("latency")
            if not lat:
                continue
            a, b = lat["data_to_250_ms"], lat["250_to_delivered_ms"]
            print(f"{name:<{width}} {r['round']:>5} {lat['probes']:>6} {a['p50']:>13.2f} {a['p99']:>8.2f} "
                  f"{a['max']:>8.2f} {b['p50']:>13.2f} {b['p99']:>8.2f} {b['max']:>8.2f}")
    print()
    print("DATA->250: the probe's end of DATA to the MTA's 250; 250->sunk: that 250 to the message's "
          "arrival at smtp-sink\n(the mtime of its dump file). Medians over rounds:")
    for name in results:
        s = latency.get(name)
        if not s:
            print(f"{name}: no latency measured")
            continue
        a, b = s["data_to_250_ms"], s["250_to_delivered_ms"]
        print(f"{name}: DATA->250 p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms; 250->sunk p50 "
              f"{b['p50']:.2f} ms, p99 {b['p99']:.2f} ms ({a['samples']} probes)")
    ratio = latency.get("p99_ratio_mailferry_to_postfix")
    if ratio:
        for name, label in (("data_to_250", "DATA->250"), ("250_to_delivered", "250->sunk")):
            value = ratio[name]
            if value is None:
                continue
            print(f"mailferry/Postfix p99 {label}: {value:.2f}x (target <= 1.0: "
                  f"{'met' if value <= 1.0 else 'NOT met'})")
    print()
