"""bench/relay's latency arithmetic (bench/_latency.py): nearest-rank percentiles, probes matched
with what arrived at smtp-sink, smtp-sink dump files read for probe recipients and their mtimes,
and the per-MTA summary over rounds. Pure code and files in a temp dir: no peer, no clock."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _latency import interval, match, p99_ratios, percentile, probe_arrivals, summarize_runs  # noqa: E402

MS = 1_000_000  # ns


def test_percentile_is_nearest_rank():
    values = list(range(100, 0, -1))           # 1..100, unsorted
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.5], 0.99) == 7.5
    # 10 samples: p99 is the largest, p50 the 5th
    assert percentile([float(v) for v in range(1, 11)], 0.99) == 10.0
    assert percentile([float(v) for v in range(1, 11)], 0.50) == 5.0


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_interval_reports_p50_p99_max_and_count():
    assert interval([3.0, 1.0, 2.0]) == {"p50": 2.0, "p99": 3.0, "max": 3.0, "samples": 3}


def probe(n: int, data_ms: float, replied_at_ns: int) -> dict:
    return {"recipient": f"probe-1-{n}@example.net", "data_to_250_ns": int(data_ms * MS),
            "replied_at_ns": replied_at_ns}


def test_match_gives_both_intervals_in_ms():
    probes = [probe(0, 2.5, 1_000 * MS), probe(1, 4.0, 2_000 * MS)]
    arrivals = {"probe-1-0@example.net": [1_010 * MS], "probe-1-1@example.net": [2_000 * MS + 500_000]}
    samples, problems = match(probes, arrivals)
    assert problems == []
    assert samples == {"data_to_250": [2.5, 4.0], "250_to_delivered": [10.0, 0.5]}


def test_match_keeps_a_delivery_before_the_250_was_read():
    # the MTA may hand the message on before the client has read its 250: negative, kept as is
    samples, problems = match([probe(0, 1.0, 1_000 * MS)], {"probe-1-0@example.net": [999 * MS]})
    assert problems == [] and samples["250_to_delivered"] == [-1.0]


def test_match_reports_missing_duplicate_and_unknown_probes():
    probes = [probe(0, 1.0, 0), probe(1, 1.0, 0), probe(2, 1.0, 0)]
    arrivals = {"probe-1-1@example.net": [MS, 2 * MS], "probe-1-2@example.net": [MS],
                "probe-1-9@example.net": [MS]}
    samples, problems = match(probes, arrivals)
    assert samples["data_to_250"] == [1.0]          # only probe 2 counts
    assert problems == ["probe probe-1-0@example.net arrived 0 times at the sink",
                        "probe probe-1-1@example.net arrived 2 times at the sink",
                        "probe-1-9@example.net arrived at the sink but no probe got a 250 for it"]


def dump(directory: Path, name: str, recipients: list[str], mtime_ns: int) -> None:
    """A file as smtp-sink -d writes one (see tests/peers/smtp_sink.py), with a given mtime."""
    rcpt = "".join(f"X-Rcpt-Args: <{r}>\n" for r in recipients)
    path = directory / name
    path.write_text(f"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: mta.example\n"
                    f"X-Mail-Args: <sender@example.com> SIZE=1100\n{rcpt}Received: from mta\n"
                    f"\tby smtp-sink (smtp-sink) with ESMTP id 1;\n\tSun, 6 Dec 2026 10:00:00 +0000\n"
                    f"To: <probe-1-5@example.net>\n\n" + "x" * 1500 + "\n\n")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_probe_arrivals_reads_recipients_and_mtimes(tmp_path):
    dump(tmp_path, "m1", ["rcpt@example.net"], 5 * MS)        # the load's: its To: says probe, not its RCPT
    dump(tmp_path, "m2", ["probe-1-0@example.net"], 7 * MS + 123)
    dump(tmp_path, "m3", ["probe-1-1@example.net"], 8 * MS)
    dump(tmp_path, "m4", ["probe-1-1@example.net"], 9 * MS)
    found = {recipient: sorted(times) for recipient, times in probe_arrivals(tmp_path).items()}
    assert found == {"probe-1-0@example.net": [7 * MS + 123], "probe-1-1@example.net": [8 * MS, 9 * MS]}


def run(round_: int, data: list[float], delivered: list[float]) -> dict:
    return {"round": round_, "latency": {"data_to_250_ms": interval(data), "250_to_delivered_ms": interval(delivered),
                                         "samples_ms": {"data_to_250": data, "250_to_delivered": delivered}}}


def test_summary_is_the_median_of_the_rounds_and_pools_the_samples():
    runs = [run(1, [1.0, 2.0, 30.0], [10.0]), {"round": 2, "error": "sink got 1999"},
            run(3, [3.0, 4.0, 50.0], [20.0]), run(4, [5.0, 6.0, 70.0], [30.0])]
    summary = summarize_runs(runs)
    data = summary["data_to_250_ms"]
    assert (data["p50"], data["p99"], data["samples"]) == (4.0, 50.0, 9)
    assert [r["round"] for r in data["rounds"]] == [1, 3, 4]
    assert data["pooled"] == {"p50": 5.0, "p99": 70.0, "max": 70.0, "samples": 9}
    assert summary["250_to_delivered_ms"]["p50"] == 20.0


def test_summary_of_no_measured_run_is_none():
    assert summarize_runs([{"round": 1, "error": "x"}]) is None


def test_p99_ratio_is_mailferry_over_postfix():
    pf = summarize_runs([run(1, [10.0], [40.0])])
    mf = summarize_runs([run(1, [5.0], [10.0])])
    assert p99_ratios({"postfix": pf, "mailferry": mf}) == {"data_to_250": 0.5, "250_to_delivered": 0.25}
    assert p99_ratios({"mailferry": mf}) is None
