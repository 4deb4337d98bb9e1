"""The loss benchmark (benchmarks/bench_losses.py): interleaved rounds, per-round ratios,
and one real end-to-end run at a tiny N."""

from __future__ import annotations

import json

import bench_losses
import pytest


def fake(seconds: float, peak: float = 10.0) -> dict:
    return {"seconds": seconds, "peak_mb": peak, "peak_rss_mb": 700.0 + peak}


def test_rounds_interleave_the_cases_and_rotate_the_order():
    calls = []

    def run(case, n, repeats):
        calls.append(case)
        return fake(1.0)

    results, loads = bench_losses.run_rounds(["a", "b", "c"], 64, 1, 4, run=run)
    assert calls == list("abcbcacababc")
    assert len(loads) == 4 and all(len(r) == 4 for r in results.values())


def test_ratios_are_medians_of_per_round_ratios():
    """A load spike in one round slows both cases of that round; the per-round ratio
    is unaffected, the ratio of medians would not be."""
    results = {
        "mscon_C3": [fake(1.0, 100), fake(1.1, 120), fake(5.0, 110)],
        "floor_C3": [fake(0.5, 50), fake(2.0, 60), fake(2.5, 40)],
    }
    rows = {r["case"]: r for r in bench_losses.summarize(results, 4096)}
    floor = rows["floor_C3"]
    assert floor["ours"] == "mscon_C3" and floor["rounds"] == 3
    assert floor["time_ratio"] == pytest.approx(2.0)  # ratios 2.0, 0.55, 2.0
    assert floor["time_ratio_range"] == pytest.approx((0.55, 2.0))
    assert floor["seconds"] == 2.0 and floor["peak_mb"] == 60
    assert floor["growth_ratio"] == pytest.approx(120 / 60)
    assert "ours" not in rows["mscon_C3"]
    text = bench_losses.table(list(rows.values()), 1)
    assert "| floor_C3 | 4096 | 2,000 | 760 | 60 | mscon_C3 | 2.00x [0.55-2.00] | 2.00x |" in text


def test_a_tiny_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_losses.main(
        ["--n", "64", "--rounds", "1", "--threads", "1", "--cases", "mscon_C3", "floor_C3"]
        + ["--json", str(out)]
    )
    written = json.loads(out.read_text())
    assert len(written["load_average"]) == 2  # the round's start and the end
    assert [r["case"] for r in written["rows"]] == ["mscon_C3", "floor_C3"]
    assert written["rows"][0]["seconds"] > 0 and written["rows"][1]["time_ratio"] > 0
    assert written["threads"] == 1
    printed = capsys.readouterr().out
    assert "| floor_C3 | 64 |" in printed and "intra-op threads: 1" in printed
