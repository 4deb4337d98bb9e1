"""Issue 15's criteria (benchmarks/criteria.py) on hand-made results."""

from __future__ import annotations

import json

import criteria
import pytest


def run(top1: dict[str, float], domains: dict[str, str]) -> dict:
    return {"tasks": {t: {"linear_top1": v, "domain": domains[t]} for t, v in top1.items()}}


DOMAINS = {"fine": "in", "coarse": "in", "ood": "out"}


def runs(*rows: tuple[float, float, float]) -> list[dict]:
    return [run(dict(zip(("fine", "coarse", "ood"), row, strict=True)), DOMAINS) for row in rows]


def test_heads_criterion_needs_every_head_in_every_seed_at_or_below_the_line():
    numbers, ok = criteria.heads_criterion([{"a": 0.5, "b": 0.9}, {"a": 0.6, "b": 0.85}])
    assert ok == "yes" and numbers == "a 0.500–0.600; b 0.850–0.900"
    numbers, ok = criteria.heads_criterion([{"a": 0.5, "b": 0.95}, {"a": 0.6, "b": 0.91}])
    assert ok == "no" and numbers.endswith("b 0.910–0.950 (2 seeds above 0.9)")


def test_in_domain_allows_one_point_or_two_standard_errors():
    plain = runs((30, 80, 20), (30, 80, 20), (30, 80, 20))
    level = runs((29.5, 80, 0), (29, 80, 0), (29.5, 80, 0))  # -0.7: inside one point
    assert criteria.in_domain_criterion(level, plain)[1] == "yes"
    behind = runs((28.5, 80, 0), (28.5, 80, 0), (28.5, 80, 0))  # -1.5, s.e. 0
    numbers, ok = criteria.in_domain_criterion(behind, plain)
    assert ok == "no" and numbers.startswith("fine -1.5 ± 0.0 (allowed −1.0)")
    noisy = runs((24, 80, 0), (30, 80, 0), (33, 80, 0))  # -1.0 ± 2.6: allowance 5.3
    assert criteria.in_domain_criterion(noisy, plain)[1] == "yes"


def test_ood_criterion_compares_with_the_best_on_each_task_and_needs_a_mean_of_zero():
    mine = runs((0, 0, 21), (0, 0, 19), (0, 0, 20))
    weak, strong = (
        runs((0, 0, 15), (0, 0, 15), (0, 0, 15)),
        runs((0, 0, 20), (0, 0, 21), (0, 0, 19)),
    )
    numbers, ok = criteria.ood_criterion(mine, {"weak": weak, "strong": strong})
    assert numbers == "ood +0.0 ± 1.0 against strong" and ok == "yes"  # a tie counts
    numbers, ok = criteria.ood_criterion(mine, {"strong": runs((0, 0, 21), (0, 0, 21), (0, 0, 21))})
    assert numbers == "ood -1.0 ± 0.6" and ok == "no"


def test_weights_criterion_needs_5_percent_below_the_lowest_clean_at_every_rate():
    good = {0.5: [{"noisy": 0.5, "a": 1.0, "b": 0.9}], 1.0: [{"noisy": 0.1, "a": 1.2, "b": 1.1}]}
    numbers, ok = criteria.weights_criterion(good, "noisy")
    assert ok == "yes" and numbers == "50 %: 0.56 (1/1 seeds); 100 %: 0.09 (1/1 seeds)"
    close = {0.25: [{"noisy": 0.88, "a": 1.0, "b": 0.9}, {"noisy": 0.8, "a": 1.0, "b": 0.9}]}
    numbers, ok = criteria.weights_criterion(close, "noisy")  # mean 0.84 / 0.90: 0.93
    assert ok == "yes" and numbers == "25 %: 0.93 (1/2 seeds)"
    tied = {0.25: [{"noisy": 0.88, "a": 1.0, "b": 0.9}]}  # 2 % below is not 5 %
    assert criteria.weights_criterion(tied, "noisy")[1] == "no"


def test_load_results_names_the_missing_run(tmp_path):
    (tmp_path / "default" / "seed0").mkdir(parents=True)
    (tmp_path / "default" / "seed0" / "eval.json").write_text(json.dumps(runs((1, 2, 3))[0]))
    assert criteria.load_results(tmp_path, "default", [0])[0]["tasks"]["ood"]["linear_top1"] == 3
    with pytest.raises(SystemExit, match=r"default/seed1/eval.json: missing"):
        criteria.load_results(tmp_path, "default", [0, 1])


def test_supcon_labels_are_the_grids_supcon_folders(tmp_path):
    for name in ("default", "supcon_b", "supcon_a", "simclr"):
        (tmp_path / name).mkdir()
    (tmp_path / "supcon_notes.md").write_text("")
    assert criteria.supcon_labels(tmp_path) == ["supcon_a", "supcon_b"]


def test_noise_options_without_weights_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["criteria.py", "--grid", str(tmp_path), "--noisy", "color"])
    with pytest.raises(SystemExit):
        criteria.main()
    assert "--noisy is read only with --weights" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["criteria.py", "--grid", str(tmp_path), "--weights", "w"])
    with pytest.raises(SystemExit):
        criteria.main()
    assert "--weights needs --noisy" in capsys.readouterr().err
