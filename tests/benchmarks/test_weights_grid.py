"""The weights study's criteria (benchmarks/weights_grid.py) on hand-made results."""

from __future__ import annotations

import weights_grid

COLUMNS = ["fine", "noisy", "coarse"]


def run(weights: dict[str, float], top1: dict[str, float]) -> dict:
    tasks = {c: {"linear_top1": v} for c, v in top1.items()}
    return {"tasks": tasks, "weights_at": [weights] * len(weights_grid.FRACTIONS)}


def row(lines: list[str], variant: str) -> list[str]:
    (line,) = [x for x in lines if x.startswith(f"| {variant} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_criteria_need_the_noisy_weight_5_percent_below_and_read_the_trend_from_clean():
    top1 = {"fine": 30.0, "noisy": 90.0, "coarse": 70.0, "ood": 20.0}
    results = {
        "equal_c000": [run({c: 1.0 for c in COLUMNS}, top1)],
        "good_c000": [run({"fine": 1.0, "noisy": 1.2, "coarse": 0.8}, top1)],
        "good_c050": [run({"fine": 1.2, "noisy": 0.7, "coarse": 1.0}, top1)],
        "good_c100": [run({"fine": 1.3, "noisy": 0.6, "coarse": 1.2}, top1)],
        "tied_c000": [run({c: 1.0 for c in COLUMNS}, {**top1, "fine": 28.5})],
        "tied_c050": [run({"fine": 1.2, "noisy": 0.9, "coarse": 0.92}, top1)],
        "tied_c100": [run({"fine": 1.2, "noisy": 0.95, "coarse": 0.85}, top1)],
    }
    lines = weights_grid.criteria(
        results, ["good", "tied"], [0.0, 0.5, 1.0], COLUMNS, "noisy", ["ood"]
    )
    good, tied = row(lines, "good"), row(lines, "tied")
    assert good[1] == "yes: 0.70 (1/1) / 0.50 (1/1)"
    assert good[2] == "1.20 > 0.70 > 0.60 ✓"
    assert good[3] == "fine +0.0 (allowed −1.0: yes)"
    assert tied[1] == "no: 0.98 (0/1) / 1.12 (0/1)"  # 2 % below is not 5 %
    assert tied[2] == "1.00 > 0.90 > 0.95 ✗"
    assert tied[3] == "fine -1.5 (allowed −1.0: no)"  # fine top-1 28.5 against equal's 30


def test_in_domain_allowance_is_two_standard_errors_when_larger():
    equal = [run({}, {"a": 50.0}) for _ in range(3)]
    spread = [run({}, {"a": v}) for v in (44.0, 50.0, 53.0)]  # diffs -6, 0, +3: se 2.6
    column, mean, allowance = weights_grid.in_domain_gap(spread, equal, ["a"])
    assert column == "a" and mean == -1.0 and abs(allowance - 2 * 2.6458) < 1e-3


def test_finished_needs_every_seed(tmp_path):
    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
    (tmp_path / "seed0" / "eval.json").write_text("{}")
    assert weights_grid.finished(tmp_path, [0])
    assert not weights_grid.finished(tmp_path, [0, 1])


def test_corruption_sets_the_mode_only_for_corrupted_runs():
    assert weights_grid.corruption("tone", 0.0, "uniform") == []  # the clean run reads no mode
    assert weights_grid.corruption("tone", 0.5) == ["data.corrupt={tone: 0.5}"]
    assert weights_grid.corruption("tone", 1.0, "uniform") == [
        "data.corrupt={tone: 1.0}",
        "data.corrupt_mode=uniform",
    ]
