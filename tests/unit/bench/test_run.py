"""bench/run's pure parts (bench/_run.py): the target verdicts and ratios, reading a bench's
medians from its JSON into rows, a failed scenario as a failure and never a figure, and the
docs/performance.md section replaced between its markers and nowhere else. Nothing here runs a
bench: bench/ is not a package, so the module is loaded from its file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _load():
    spec = importlib.util.spec_from_file_location("bench_run_pure", BENCH / "_run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


run = _load()


def test_median_odd_and_even_counts():
    assert run.median([3.0, 1.0, 2.0]) == 2.0
    assert run.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        run.median([])


def test_ratio_is_mailferry_over_postfix_and_none_without_both():
    assert run.ratio(100.0, 250.0) == 2.5
    assert run.ratio(None, 1.0) is None
    assert run.ratio(1.0, None) is None
    assert run.ratio(0.0, 1.0) is None


def test_rate_target_met_floor_and_not_met():
    large = run.Target("ratio_at_least", 1.5, floor=1.0)
    assert large.verdict(100, 150) == "met"
    assert large.verdict(100, 120) == "floor met"
    assert large.verdict(100, 99) == "NOT met"
    assert run.Target("ratio_at_least", 2.0).verdict(100, 199) == "NOT met"
    assert large.text() == ">= 1.5x (floor 1x)"


def test_time_and_absolute_targets():
    no_slower = run.Target("ratio_at_most", 1.0)
    assert no_slower.verdict(2.0, 2.0) == "met"
    assert no_slower.verdict(2.0, 2.1) == "NOT met"
    assert no_slower.text() == "<= Postfix's"
    rss = run.Target("at_most", 200)
    assert rss.verdict(900.0, 199.0) == "met"
    assert rss.verdict(None, 201.0) == "NOT met"   # an absolute limit needs no Postfix figure
    assert rss.verdict(900.0, None) == "-"
    assert rss.text("MB") == "<= 200 MB"


def test_relay_medians_become_rows():
    data = {"summary": {"postfix": {"median_deliveries_per_second": 1000.0},
                        "mailferry": {"median_deliveries_per_second": 2500.0}}}
    [row] = run.SCENARIOS[2].extract(data, "fan-out", "-m 2000 -r 50")
    assert (row.postfix, row.mailferry, row.ratio, row.verdict) == (1000.0, 2500.0, 2.5, "met")
    assert "| fan-out: recipient deliveries/s | -m 2000 -r 50 | 1,000 | 2,500 | 2.50x | >= 2x | met |" \
        in run.table([row])


def test_ldap_cold_and_warm_rows_have_their_own_targets():
    data = {"summary": {f"{name} {mode}": {"median_messages_per_second": value}
                        for name, mode, value in [("postfix", "cold", 100.0), ("mailferry", "cold", 110.0),
                                                  ("postfix", "warm", 100.0), ("mailferry", "warm", 140.0)]}}
    cold, warm = run.ldap_rows(data, "ldap", "")
    assert (cold.verdict, warm.verdict) == ("met", "NOT met")


def test_latency_rows_say_not_measured_without_the_key_and_read_p99_with_it():
    rows = run.latency_rows({"summary": {}}, "relay-small", "")
    assert [row.note is not None and row.ratio is None for row in rows] == [True, True]
    assert all(row.verdict != "FAILED" for row in rows)
    assert all(row.note for row in run.latency_rows({"latency": None}, "relay-small", ""))
    data = {"latency": {"what": "...", "p99_ratio_mailferry_to_postfix": {"data_to_250": 0.5},
                        "postfix": {"data_to_250_ms": {"p50": 1.0, "p99": 8.0},
                                    "250_to_delivered_ms": {"p50": 9.0, "p99": 40.0}},
                        "mailferry": {"data_to_250_ms": {"p50": 1.0, "p99": 4.0},
                                      "250_to_delivered_ms": {"p50": 9.0, "p99": 50.0}}}}
    eod, delivered = run.latency_rows(data, "relay-small", "")
    assert (eod.postfix, eod.mailferry, eod.verdict) == (8.0, 4.0, "met")
    assert (delivered.postfix, delivered.mailferry, delivered.verdict) == (40.0, 50.0, "NOT met")


def test_a_failed_run_is_a_reason_never_a_figure():
    data = {"runs": {"postfix": [{"round": 1, "messages_per_second": 5.0}],
                     "mailferry": [{"round": 2, "error": "queue not empty: 3 requests\nmore"}]}}
    reason = run.failure_reason(data, 1, ["ignored"])
    assert reason == "mailferry round 2: queue not empty: 3 requests"
    assert run.failure_reason(None, 2, ["first", "missing: /usr/sbin/slapd", ""]) == \
        "exit 2: missing: /usr/sbin/slapd"
    row = run.Row("intake", "-m 300", "accepted msg/s", target=run.Target("ratio_at_least", 2.0), error=reason)
    line = run.table([row]).splitlines()[-1]
    assert "FAILED: mailferry round 2" in line and "x |" not in line.split("|")[5]
    assert run.failed([row]) and not run.failed([run.Row("a", "", "b", 1.0, 2.0)])


def test_section_replaced_between_the_markers_only():
    text = f"# Performance\n\nintro\n\n{run.BEGIN}\nold table\n{run.END}\n\n## Intake\nkept\n"
    new = run.replace_section(text, "new table\n")
    assert new == f"# Performance\n\nintro\n\n{run.BEGIN}\nnew table\n{run.END}\n\n## Intake\nkept\n"
    assert run.replace_section(new, "new table") == new   # idempotent


def test_section_inserted_after_the_title_without_markers():
    text = "# Performance\n\nintro\n"
    new = run.replace_section(text, "table")
    assert new == f"# Performance\n\n{run.BEGIN}\ntable\n{run.END}\nintro\n".replace(
        f"{run.END}\nintro", f"{run.END}\n\nintro")


def test_a_lone_or_misordered_marker_is_refused():
    with pytest.raises(ValueError):
        run.replace_section(f"# P\n{run.BEGIN}\nx\n", "t")
    with pytest.raises(ValueError):
        run.replace_section(f"# P\n{run.END}\nx\n{run.BEGIN}\n", "t")


def test_only_selects_in_table_order_and_refuses_unknown_names():
    assert [s.name for s in run.select("postmap,relay-small")] == ["relay-small", "postmap"]
    assert len(run.select(None)) == len(run.SCENARIOS)
    with pytest.raises(ValueError, match="nonsense"):
        run.select("relay-small,nonsense")


def test_quick_and_full_commands():
    fan_out = run.select("fan-out")[0]
    assert fan_out.command(3, False) == ["--sessions", "10", "--messages", "2000", "--recipients", "50",
                                         "--rounds", "3"]
    postmap = run.select("postmap")[0]
    assert postmap.command(1, True, "/srv") == ["--entries", "20000", "--lookups", "1000", "--repeat", "1"]
