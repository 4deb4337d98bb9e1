"""benchmarks/batch_size_sweep.py at a tiny size: the points it trains, resuming, outputs."""

from __future__ import annotations

import json

import batch_size_sweep
import method_grid
import pytest

TINY = [
    "--size", "120", "--steps", "3", "--warmup-steps", "1", "--seeds", "0",
    "--set", "data.image_size=16", "--set", "train.progress=false",
    "--set", "eval.batch_size=64", "--set", "train.log_every=1",
]  # fmt: skip


def test_tiny_sweep_trains_each_point_for_the_steps_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    figure = tmp_path / "figures" / "sweep.png"
    argv = ["--out", str(out), "--batches", "16", "8", "--methods", "mscon", *TINY]
    batch_size_sweep.main([*argv, "--figure", str(figure)])
    summary = json.loads((out / "sweep.json").read_text())
    assert [(p["method"], p["batch"], p["lr"]) for p in summary["points"]] == [
        ("mscon", 8, 0.05 * 8 / 128),
        ("mscon", 16, 0.05 * 16 / 128),
    ]
    for batch in (8, 16):
        run = out / f"mscon_b{batch:04d}" / "seed0"
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 3  # exactly --steps, whatever the epoch length
        assert records[0]["lr"] == pytest.approx(0.05 * batch / 128)  # warm-up of 1 step
        assert (run / "eval.json").is_file() and (run / "sweep_seconds.json").is_file()
    table = (out / "sweep.md").read_text()
    assert table.count("| mscon |") == 2 and "| 1 |" in table
    assert figure.is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr("mscon.train.train", no_training)
    batch_size_sweep.main(argv)  # every point finished: nothing is trained
    assert json.loads((out / "sweep.json").read_text())["points"] == summary["points"]
    batch_size_sweep.main([*argv[: -len(TINY)], "--methods", "supcon", *TINY, "--only-finished"])
    assert "supcon" not in (out / "sweep.md").read_text()


def test_the_largest_batch_must_be_a_fifth_of_the_train_split(tmp_path):
    with pytest.raises(SystemExit, match="at most a fifth of the train split"):
        batch_size_sweep.main(["--out", str(tmp_path), "--batches", "32", *TINY])


def test_point_overrides_scale_the_lr_and_fix_the_steps():
    overrides = batch_size_sweep.point_overrides("supcon", 512, 100, 10, 20_510)
    assert "train.lr=0.2" in overrides and "train.max_steps=100" in overrides
    (warmup,) = [o for o in overrides if o.startswith("train.warmup_epochs=")]
    assert round(float(warmup.split("=")[1]) * (20_510 // 512)) == 10
    assert method_grid.run_one is batch_size_sweep.run_one
