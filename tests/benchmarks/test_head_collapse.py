"""benchmarks/head_collapse.py: the yardstick on hand-made embeddings, and a tiny run
that follows mscon.train step for step."""

from __future__ import annotations

import json
import math

import head_collapse
import pytest
import torch

from mscon.losses.functional import supcon_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def test_relative_loss_is_one_for_one_point_and_zero_at_the_floor():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    collapsed = torch.ones(6, 2, 4)  # every view at one point: L = log(N - 1)
    loss = supcon_loss(collapsed, labels, temperature=0.1).item()
    assert loss == pytest.approx(math.log(11))
    assert head_collapse.relative_loss(loss, labels, views=2) == pytest.approx(1.0)
    classes = torch.eye(4)[labels].unsqueeze(1).expand(6, 2, 4)  # one corner per class
    separated = supcon_loss(classes, labels, temperature=0.01).item()
    assert head_collapse.relative_loss(separated, labels, views=2) == pytest.approx(0.0, abs=1e-5)


def test_ideal_head_r_falls_with_the_accuracy_of_its_features():
    values = [head_collapse.ideal_head_r(a)[0] for a in (0.34, 0.6, 0.8, 1.0)]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(1.0, abs=0.01)  # chance: nothing beats one point
    assert values[-1] < 0.01  # perfect features: the floor
    r, eps = head_collapse.ideal_head_r(0.8, classes=2, batch=64, temperature=0.2)
    assert 0 < r < 1 and eps > 0


def test_ideal_cli_takes_the_number_of_classes(monkeypatch, capsys):
    argv = ["head_collapse.py", "--ideal", "0.5", "--classes", "8", "--batch", "64"]
    monkeypatch.setattr("sys.argv", argv)
    head_collapse.main()
    row = capsys.readouterr().out.splitlines()[-1]
    r = head_collapse.ideal_head_r(0.5, classes=8, batch=64)[0]
    assert row.startswith(f"| 50 % | {r:.3f} |")
    assert r != pytest.approx(head_collapse.ideal_head_r(0.5, classes=3, batch=64)[0], abs=1e-3)
    monkeypatch.setattr("sys.argv", ["head_collapse.py", "--runs", "x", "--classes", "8"])
    with pytest.raises(SystemExit):
        head_collapse.main()
    assert "--classes is read only with --ideal" in capsys.readouterr().err


def test_effective_rank_counts_directions():
    assert head_collapse.effective_rank(torch.ones(10, 4)) == pytest.approx(1.0)
    assert head_collapse.effective_rank(torch.eye(4).repeat(3, 1)) == pytest.approx(4.0)


def test_tiny_run_matches_mscon_train_and_measures_every_head(tiny_config, tmp_path):
    from mscon.runs import read_metrics
    from mscon.train import train

    config = tiny_config(**{"train.log_every": 2})
    run = head_collapse.train_and_measure(config, every=2, batch=32)
    assert run["columns"] == ["shape", "color", "size"] and run["total_steps"] == 8
    assert [r["step"] for r in run["records"]] == [0, 2, 4, 6, 8]
    logged = {r["step"]: r["loss"] for r in read_metrics(train(config))}
    for record in run["records"][1:]:  # the same batches, views and updates as mscon.train
        assert record["loss"] == pytest.approx(logged[record["step"]], rel=1e-4)
    for record in run["records"]:
        assert len(record["heads"]) == 3
        for head in record["heads"]:
            assert 0.5 < head["r"] < 1.5 and head["g_head"] > 0 and head["g_enc"] > 0
            assert head["mean"] ** 2 + head["spread"] ** 2 == pytest.approx(1.0, abs=1e-4)
            assert 1.0 <= head["rank"] <= 128 and head["raw_mean"] > 0
    run.update(seed=0)
    table = head_collapse.summarise({"tiny": [run]})
    assert "| tiny | size | " in table and "/1 |" in table
    json.dumps(run)  # what the script writes


def test_measure_run_reads_the_last_checkpoint(tiny_config):
    from mscon.train import train

    config = tiny_config()
    run_dir = train(config)
    table = head_collapse.runs_table([run_dir], batch=32)
    assert table.count(f"| {run_dir} |") == 3 and "| size |" in table
    measured = head_collapse.train_and_measure(config, every=8, batch=32)["records"][-1]
    for head, again in zip(measured["heads"], head_collapse.measure_run(run_dir, 32), strict=True):
        assert again["r"] == pytest.approx(head["r"], rel=1e-4)
