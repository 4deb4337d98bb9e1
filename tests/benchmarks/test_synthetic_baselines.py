"""benchmarks/synthetic_baselines.py (the table and figure of docs/data.md) at tiny sizes."""

from __future__ import annotations

import json
import math

import pytest
import synthetic_baselines as baselines

from mscon.data.synthetic import ATTRIBUTES
from mscon.evaluate import ALPHA_GRID, L2_GRID, linear_probe


def test_raw_pixel_baselines_use_the_evaluate_protocols_on_a_val_split(monkeypatch):
    calls = []

    def probe(train_x, train_y, test_x, test_y, val_x, val_y, **kwargs):
        calls.append((len(train_x), len(val_x), len(test_x), train_x.shape[1]))
        return linear_probe(train_x, train_y, test_x, test_y, val_x, val_y, max_iter=5, **kwargs)

    monkeypatch.setattr(baselines, "linear_probe", probe)  # fewer L-BFGS steps: a fast test
    results = baselines.raw_pixel_baselines(train=80, val=40, test=50, image_size=8)
    assert list(results) == [*ATTRIBUTES, "shape_color", "angle"]
    assert calls == [(80, 40, 50, 3 * 8 * 8)] * 5  # every categorical column, val given
    for column in (*ATTRIBUTES, "shape_color"):
        r = results[column]
        assert r["classes"] == {"size": 3, "pattern": 12, "shape_color": 64}.get(column, 8)
        assert 100 / r["classes"] <= r["chance"] <= 100 and 0 <= r["linear"] <= 100
        assert r["l2"] in L2_GRID  # chosen on val, not the no-val default
    assert math.isfinite(results["angle"]["linear_r2"]) and results["angle"]["alpha"] in ALPHA_GRID


def test_cnn_baselines_runs_and_reports_every_attribute():
    results = baselines.cnn_baselines(train=64, test=32, image_size=8, epochs=1)
    assert list(results) == [*ATTRIBUTES, "angle"]
    assert all(0 <= results[c] <= 100 for c in ATTRIBUTES)
    assert math.isfinite(results["angle"])


LINEAR = {
    "shape": {"classes": 8, "chance": 13.8, "linear": 15.75, "l2": 1.0},
    "shape_color": {"classes": 64, "chance": 2.4, "linear": 15.7, "l2": 1.0},
    "angle": {"linear_r2": -0.141, "alpha": 10.0},
}
CNN = {12: {"shape": 31.1, "angle": 0.28}, 30: {"shape": 59.7, "angle": 0.42}}


def test_table_is_the_markdown_of_docs_data_md():
    assert baselines.table(LINEAR, CNN).splitlines() == [
        "| column | classes | chance | raw-pixel linear | small CNN, 12 epochs | 30 epochs |",
        "|---|---|---|---|---|---|",
        "| `shape` | 8 | 13.8 % | 15.8 % | 31.1 % | 59.7 % |",
        "| `shape_color` | 64 | 2.4 % | 15.7 % | - | - |",
        "| `angle` | continuous | R² 0 | R² -0.14 | R² 0.28 | R² 0.42 |",
    ]


def test_main_prints_the_table_and_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(baselines, "raw_pixel_baselines", lambda **kwargs: LINEAR)
    monkeypatch.setattr(baselines, "cnn_baselines", lambda epochs, **kwargs: CNN[epochs])
    out = tmp_path / "sub" / "baselines.json"
    baselines.main(["--table", "--out", str(out)])
    printed = capsys.readouterr().out
    assert baselines.table(LINEAR, CNN) in printed
    record = json.loads(out.read_text())
    assert record["raw_pixel"] == LINEAR
    assert record["cnn"] == {"12": CNN[12], "30": CNN[30]}
    assert record["meta"]["seed"] == 0 and record["meta"]["raw_pixel_split"]["val"] == 1200


def test_main_grid_and_time(tmp_path, capsys):
    grid = tmp_path / "grid.png"
    baselines.main(["--grid", str(grid), "--time", "20", "--image-size", "8"])
    assert grid.stat().st_size > 0
    assert "20 images at 8 px" in capsys.readouterr().out


def test_main_rejects_out_without_table_and_no_action():
    with pytest.raises(SystemExit):
        baselines.main(["--out", "x.json"])
    with pytest.raises(SystemExit):
        baselines.main([])
