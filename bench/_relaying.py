"""What bench/relay and bench/ldap share: the two MTAs set up to relay everything to a fresh
smtp-sink each run, one run timed from the start of the load until the sink has every message and
the MTA's queue is empty, the verification that makes a run a figure, and the table. A bench script
puts the repository and bench/ on sys.path before importing this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from _latency import LatencyProbe
from _sides import HOST, MailferrySide, PostfixSide, RunError, Side, mib
from tests.peers import PeerError, make_traversable, peer_tempdir, progress
from tests.peers.logwatch import LogWatcher
from tests.peers.processes import ProcessTree, Reaper
from tests.peers.smtp_sink import SmtpSink
from tests.peers.smtp_source import BackgroundSmtpSource

SMTP_SINK = "/usr/sbin/smtp-sink"
SAMPLE_INTERVAL = 0.25     # memory sampler
POLL_INTERVAL = 0.05       # sink counters and the MTA log
TIMELINE_INTERVAL = 1.0    # one progress point a second goes into the JSON
PER_PROCESS_LIMIT = 8      # store CPU per process for trees this small (mailferry)
STALL_SECONDS = 60         # no delivery progress this long after intake ended: give up

# the load of one run: given the MTA's port, a started-later BackgroundSmtpSource (or any object
# with its start/done/error/wait) that sends the run's messages
Load = Callable[[int], BackgroundSmtpSource]
# after the clock stopped: what is wrong with what the sink received (empty: nothing)
Verify = Callable[[SmtpSink], list[str]]


def dump_parent(root: Path, reaper: Reaper, bench: str) -> Path:
    """Where the sinks' dump files go when a run checks them: tmpfs, in both MTAs' runs alike. On
    disk they would cap the sink (measured with smtp-source alone on this machine: about 2,700
    msg/s into /tmp, 8,000 into /dev/shm). Removed at exit."""
    shm = Path("/dev/shm")
    dumps = Path(tempfile.mkdtemp(prefix=f"mailferry-{bench}-sink-", dir=shm if shm.is_dir() else root))
    reaper.add("sink dumps", lambda: shutil.rmtree(dumps, ignore_errors=True))
    make_traversable(dumps)
    return dumps


def check_recipients(expected: Counter, per_transaction: int, what: str = "the addresses sent"):
    """A run's check of smtp-sink's dump files: one transaction per message sent, each with exactly
    `per_transaction` recipients, and all the recipients together exactly `expected` (a multiset)."""
    transactions = sum(expected.values()) // per_transaction

    def verify(sink: SmtpSink) -> list[str]:
        messages = sink.messages()
        problems = []
        if len(messages) != transactions:
            problems.append(f"{len(messages)} dump files for {transactions} messages")
        other = [m for m in messages if len(m.recipients) != per_transaction]
        if other:
            problems.append(f"{len(other)} transactions with other than {per_transaction} recipient(s), "
                            f"e.g. {other[0].recipients[:5]}")
        received = Counter(r for m in messages for r in m.recipients)
        if received != expected:
            wrong, missing = received - expected, expected - received
            problems.append(f"recipients at the sink differ from {what}: {sum(wrong.values())} "
                            f"unexpected (e.g. {list(wrong)[:3]}), {sum(missing.values())} missing "
                            f"(e.g. {list(missing)[:3]})")
        return problems
    return verify


# --------------------------------------------------------------------------
# the two servers, both relaying to the sink's port (new every run)

class PostfixRelay(PostfixSide):
    # main.cf settings on top of PostfixInstance's private-instance base
    MAIN = {
        "default_transport": "smtp",
        "relayhost": "[127.0.0.1]:9",               # set to the sink's port for every run
        "smtp_tls_security_level": "none",
        "disable_dns_lookups": "yes",               # with the base's smtp_dns_support_level = disabled
        "default_destination_concurrency_limit": "20",  # Postfix's default, stated
    }

    def __init__(self, root: Path, reaper: Reaper):
        super().__init__(root, reaper, self.MAIN)

    def queue(self) -> dict:
        n, line = self.pf.postqueue_count()
        return {"queued": n, "summary": line, "queue_files": self.pf.queue_files(),
                "method": "postqueue -p (last line), queue files counted on disk"}

    def queue_empty(self, q: dict) -> bool:
        return q["summary"] == "Mail queue is empty" and q["queue_files"] == 0


class MailferryRelay(MailferrySide):
    MAIN = {
        "default_transport": "smtp",
        "relayhost": "[127.0.0.1]:9",           # set to the sink's port for every run
        "smtp_tls_security_level": "none",
    }
    SERVICES = [
        "pickup    unix  n  -  n  60  1  pickup",
        "smtp      unix  -  -  n  -   -  smtp",
        "relay     unix  -  -  n  -   -  smtp",
        "error     unix  -  -  n  -   -  error",
        "discard   unix  -  -  n  -   -  discard",
    ]

    def __init__(self, root: Path, binary: str, reaper: Reaper):
        super().__init__(root, binary, reaper, self.MAIN)
        self.services = list(self.SERVICES)

    def queue(self) -> dict:
        n, line = self.queue_summary()
        return {"queued": n, "summary": line, "method": "mailferry mailq (last line)"}

    def queue_empty(self, q: dict) -> bool:
        return q["summary"] == "Mail queue is empty"


class RelaySide(Side, Protocol):
    def queue(self) -> dict: ...
    def queue_empty(self, q: dict) -> bool: ...


# --------------------------------------------------------------------------
# one run

def run_once(side: RelaySide, args: argparse.Namespace, reaper: Reaper, root: Path, label: str,
             load: Load, main: dict[str, str] | None = None, verify: Verify | None = None,
             sink_parent: Path | None = None, probe: LatencyProbe | None = None) -> dict:
    """One timed run of `load` through `side` (reset with `main` on top) to a fresh smtp-sink
    (its directory under `sink_parent`, default `root`). With `verify` or a latency `probe`, the
    sink also dumps every transaction (-d): for `verify` to check after the clock stopped, for
    the probe's arrival times; without, it only counts (-c): a file per message costs the sink
    CPU. The probe's messages, sent while the load runs, count in the run's verification."""
    sink = SmtpSink(peer_tempdir("sink-", sink_parent or root), dump=verify is not None or probe is not None,
                    backlog=1000, extra_args=("-c",))
    reaper.add("smtp-sink", sink.stop)
    tree = None
    try:
        sink.start()
        side.reset({"relayhost": f"[{HOST}]:{sink.port}", **(main or {})})
        progress(f"{label}: {side.name} on {HOST}:{side.port} -> smtp-sink on {HOST}:{sink.port}, "
                 f"{args.messages} messages in {args.sessions} sessions"
                 + (f", latency probes at {probe.rate:g}/s" if probe else "") + " ...")
        tree = ProcessTree(side.start(), SAMPLE_INTERVAL)
        log = LogWatcher(side.log_file)
        before = tree.sample(memory=False).cpu_seconds
        sink_tree = ProcessTree(sink.process.pid)
        sink_before = sink_tree.sample(memory=False).cpu_seconds
        tree.start_sampling()
        run = _measure(side, sink, tree, log, before, args, load(side.port), verify, probe)
        run["sink_cpu_seconds"] = sink_tree.sample(memory=False).cpu_seconds - sink_before
        return run
    except PeerError as exc:
        raise RunError(str(exc)) from None
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"{exc.cmd[0]} timed out after {exc.timeout:.0f} s") from None
    finally:
        if tree is not None:
            tree.stop_sampling()  # a no-op when the run got that far
        if probe is not None:
            probe.stop()
        side.stop()
        sink.stop()
        reaper.remove(sink.stop)


def _measure(side: RelaySide, sink: SmtpSink, tree: ProcessTree, log: LogWatcher, before: float,
             args: argparse.Namespace, source: BackgroundSmtpSource, verify: Verify | None,
             probe: LatencyProbe | None) -> dict:
    n = args.messages          # the load's; `expected` adds the probes that got their 250
    recipients = getattr(args, "recipients", 1)   # smtp-source -r: each message to that many
    start = time.perf_counter()
    source.start()
    if probe is not None:
        probe.start(HOST, side.port).follow(source)
    deadline = start + max(300, n / 20)
    timeline: list[list] = []
    next_point = start
    intake = None           # figures at the load's end
    done_at = None
    last_change, last_state = start, None
    while True:
        time.sleep(POLL_INTERVAL)
        now = time.perf_counter()
        counts = log.poll()
        sunk = sink.counters()["mesg"]
        if intake is None and source.done.is_set():
            intake = {"cpu": tree.sample(memory=False).cpu_seconds - before,
                      "sunk": sunk, "removed": counts["removed"]}
        if now >= next_point:
            timeline.append([round(now - start, 2), sunk, counts["removed"],
                             int(source.done.is_set())])
            next_point += TIMELINE_INTERVAL
        probes_in = probe is None or probe.count is not None
        expected = n + (probe.count if probe is not None and probes_in else 0)
        if source.done.is_set() and probes_in and sunk >= expected and counts["removed"] >= expected:
            done_at = now
            break
        state = (sunk, counts["removed"], counts["deferred"], counts["bounced"])
        if state != last_state:
            last_state, last_change = state, now
        if source.done.is_set() and source.error is not None:
            break
        if source.done.is_set() and now - last_change > STALL_SECONDS:
            break
        if now > deadline:
            break

    cpu = tree.sample(memory=False).cpu_seconds - before
    cpu_by_command = tree.cpu_by_command()
    cpu_by_process = tree.cpu_by_process()
    if len(cpu_by_process) > PER_PROCESS_LIMIT:   # Postfix: by command is enough
        cpu_by_process = None
    memory = tree.stop_sampling()
    result = source.wait()       # re-raises the load's own failure (e.g. its timeout)
    if result.returncode != 0:
        raise RunError(f"{result.args[0] if result.args else 'the load'} exited "
                       f"{result.returncode}: {result.stderr[-400:]}")

    # verification, after the clock stopped: a little settling time for a
    # straggler, then the authoritative counts
    time.sleep(0.5)
    if probe is not None:
        probe.done.wait(130)    # its own limit is 120 s after the load's end
        n_probes = probe.count or 0
    else:
        n_probes = 0
    n_all = n + n_probes
    counts = log.poll()
    sink_counters = sink.counters()
    sunk = sink_counters["mesg"]
    queue = side.queue()
    problems = []
    if done_at is None:
        why = ("no delivery progress for %d s after intake ended" % STALL_SECONDS
               if time.perf_counter() < deadline else "overall time limit reached")
        problems.append(why)
    deliveries = n * recipients + n_probes     # a probe has one recipient
    if sunk != n_all:
        problems.append(f"smtp-sink received {sunk} messages" if recipients == 1 else
                        f"smtp-sink received {sunk} transactions (one a message expected, with all "
                        f"{recipients} recipients)")
    if counts["sent"] != deliveries:
        problems.append(f"log has {counts['sent']} status=sent" +
                        (f" for {deliveries} recipients" if recipients > 1 else ""))
    if not side.queue_empty(queue):
        problems.append(f"queue not empty: {queue['summary']}")
    if verify is not None and sunk == n_all:
        problems += verify(sink)
    latency: dict = {}
    if probe is not None:
        latency, wrong = probe.figures(sink.dump_directory)
        problems += wrong
    if problems:
        evidence = "\n".join(log.problems[:10])
        sent = f"{n} + {n_probes} probes" if probe is not None else f"{n}"
        raise RunError(f"{'; '.join(problems)} (the load sent {sent}; log: "
                       f"{counts['removed']} removed, {counts['deferred']} deferred, "
                       f"{counts['bounced']} bounced, {log.problem_lines} problem lines)"
                       + (f"\n{evidence}" if evidence else ""))

    seconds = done_at - start
    intake_seconds = result.seconds
    delivery_tail = max(seconds - intake_seconds, 1e-9)
    return {
        # every message the MTA moved: the load's and the latency probes (sent during intake)
        "messages": n_all,
        "load_messages": n,
        "probe_messages": n_probes,
        "seconds": seconds,
        "messages_per_second": n_all / seconds,
        "recipients_per_message": recipients,
        "deliveries_per_second": deliveries / seconds,           # recipient deliveries
        "megabytes_per_second": n_all * args.size / seconds / 1e6,   # smtp-source -l bytes, 10^6 a MB
        "intake_seconds": intake_seconds,
        "intake_messages_per_second": n_all / intake_seconds,
        "delivered_at_intake_end": intake["sunk"],
        "removed_at_intake_end": intake["removed"],
        "delivery_lag_seconds": seconds - intake_seconds,
        "cpu_seconds": cpu,
        "cpu_ms_per_message": 1000 * cpu / n_all,
        "cpu_seconds_during_intake": intake["cpu"],
        "cores_busy_during_intake": intake["cpu"] / intake_seconds,
        "cores_busy_after_intake": (cpu - intake["cpu"]) / delivery_tail,
        "cpu_by_command": cpu_by_command,
        "cpu_by_process": cpu_by_process,
        **memory,
        "sink": sink_counters,
        "log": counts,
        "log_problem_lines": log.problem_lines,
        "log_problems": log.problems,
        "queue": queue,
        "timeline": {"columns": ["seconds", "sink_messages", "removed_from_queue",
                                 "smtp_source_done"], "points": timeline},
        "smtp_source_stderr": result.stderr[-2000:],
        **({"latency": latency} if latency else {}),
    }


# --------------------------------------------------------------------------
# report

def summarize(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    rates = [r["messages_per_second"] for r in ok]
    return {
        "runs": len(ok),
        "failed_runs": len(runs) - len(ok),
        "best_messages_per_second": max(rates),
        "median_messages_per_second": statistics.median(rates),
        "median_deliveries_per_second": statistics.median(r["deliveries_per_second"] for r in ok),
        "median_megabytes_per_second": statistics.median(r["megabytes_per_second"] for r in ok),
        "median_intake_messages_per_second":
            statistics.median(r["intake_messages_per_second"] for r in ok),
        "median_delivery_lag_seconds": statistics.median(r["delivery_lag_seconds"] for r in ok),
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in ok),
        "median_cpu_ms_per_message": statistics.median(r["cpu_ms_per_message"] for r in ok),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ok),
        "peak_pss_bytes": max(r["peak_pss_bytes"] for r in ok),
        "peak_processes": max(r["peak_processes"] for r in ok),
    }


def print_table(title: str, results: dict[str, list[dict]], summaries: dict[str, dict | None]) -> None:
    print(f"{title}, {os.cpu_count()} CPUs")
    print()
    width = max(10, *(len(name) for name in results))
    header = (f"{'server':<{width}} {'round':>5} {'msg/s':>7} {'wall s':>7} {'intake s':>8} "
              f"{'sunk@in':>7} {'lag s':>6} {'CPU s':>7} {'CPU ms/msg':>10} {'cores':>5} "
              f"{'peak PSS MiB':>12} {'RSS MiB':>8} {'procs':>5}")
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        for r in runs:
            if "error" in r:
                first = r["error"].splitlines()[0]
                print(f"{name:<{width}} {r['round']:>5} error: {first}")
                continue
            print(f"{name:<{width}} {r['round']:>5} {r['messages_per_second']:>7.0f} "
                  f"{r['seconds']:>7.2f} {r['intake_seconds']:>8.2f} "
                  f"{r['delivered_at_intake_end']:>7} {r['delivery_lag_seconds']:>6.2f} "
                  f"{r['cpu_seconds']:>7.2f} {r['cpu_ms_per_message']:>10.3f} "
                  f"{r['cpu_seconds'] / r['seconds']:>5.2f} "
                  f"{mib(r['peak_pss_bytes']):>12} {mib(r['peak_rss_bytes']):>8} "
                  f"{r['peak_processes']:>5}")
    print()
    print("msg/s and wall s: the load's start until the sink has every message and the queue "
          "is empty;\nintake s: the load's end; sunk@in: messages at the sink by then; "
          "lag s: wall - intake;\ncores: CPU s / wall s of the MTA's process tree.")
    print()
    for name, s in summaries.items():
        if s is None:
            print(f"{name}: no successful run")
            continue
        print(f"{name}: best {s['best_messages_per_second']:.0f} msg/s, median "
              f"{s['median_messages_per_second']:.0f} msg/s (intake alone "
              f"{s['median_intake_messages_per_second']:.0f}, delivery "
              f"{s['median_delivery_lag_seconds']:.2f} s behind), median CPU "
              f"{s['median_cpu_seconds']:.2f} s ({s['median_cpu_ms_per_message']:.3f} ms/msg), "
              f"peak PSS {mib(s['peak_pss_bytes'])} MiB (RSS {mib(s['peak_rss_bytes'])} MiB) "
              f"over {s['peak_processes']} process(es)")


# --------------------------------------------------------------------------

def describe(run: dict) -> str:
    return (f"{run['messages_per_second']:.0f} msg/s ({run['seconds']:.2f} s; intake "
            f"{run['intake_seconds']:.2f} s with {run['delivered_at_intake_end']} "
            f"delivered by then), CPU {run['cpu_seconds']:.2f} s, peak PSS "
            f"{mib(run['peak_pss_bytes'])} MiB, sink {run['sink'].get('mesg')}, "
            f"{run['log']['sent']} status=sent, {run['queue']['summary']}")


