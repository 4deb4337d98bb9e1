"""A manifest written by another program trains and evaluates through the embedded data's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _foreign_manifest(root: Path, n: int = 48) -> Path:
    """Only path, split and label columns, tiny PNGs: what any other tool could write."""
    (root / "pics").mkdir(parents=True)
    lines = ["path,split,hue,shade,brightness"]
    names = list(COLOURS)
    for i in range(n):
        hue = names[i % 3]
        shade = "dark" if i % 2 else "light"
        factor = 0.6 if shade == "dark" else 1.0
        colour = tuple(int(c * factor) for c in COLOURS[hue])
        Image.new("RGB", (10, 10), colour).save(root / "pics" / f"{i}.png")
        split = "test" if i % 4 == 3 else "train"
        lines.append(f"pics/{i}.png,{split},{hue},{shade},{factor * 0.9 + i / 1000:.3f}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_foreign_manifest_trains_and_evaluates(tmp_path, tiny_config):
    train_module = pytest.importorskip("mscon.train")
    evaluate_module = pytest.importorskip("mscon.evaluate")
    if not hasattr(evaluate_module, "evaluate_run"):
        pytest.skip("mscon.evaluate.evaluate_run not available yet")
    folder = _foreign_manifest(tmp_path / "foreign")
    config = tiny_config(
        "mscon",
        **{
            "data.path": str(folder),
            "data.similarities": "[hue]",
            "data.eval_tasks": "[shade]",
            "data.image_size": 8,
        },
    )
    run_dir = Path(train_module.train(config))
    classes = json.loads((run_dir / "classes.json").read_text())
    assert classes["hue"] == ["blue", "green", "red"] and classes["shade"] == ["dark", "light"]
    results = evaluate_module.evaluate_run(run_dir)
    tasks = results["tasks"] if "tasks" in results else results
    assert tasks["hue"]["domain"] == "in" and tasks["shade"]["domain"] == "out"
