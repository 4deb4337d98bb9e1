"""The soak benchmark (benchmarks/soak.py): its verdict, and a few real steps of it."""

from __future__ import annotations

import json

import soak


def result(first: float, last: float, files: tuple[int, int]) -> dict:
    row = {"steps": 3, "first_mb": first, "first_step": 4, "last_mb": last, "last_step": 9}
    return {"sizes": {"8": row}, "open_files": {"after_warm_up": files[0], "end": files[1]}}


def test_verdict_flags_memory_growth_and_leaked_files():
    assert soak.verdict(result(100.0, 104.9, (6, 6)), 0.05) == []
    assert soak.verdict(result(100.0, 90.0, (6, 5)), 0.05) == []
    assert soak.verdict(result(100.0, 105.1, (6, 6)), 0.05) == ["batch 8: RSS grew 5.1%"]
    assert soak.verdict(result(100.0, 100.0, (6, 7)), 0.05) == ["open files grew from 6 to 7"]


def test_a_short_soak_runs_every_size_and_writes_json(tmp_path, capsys, single_thread):
    out = tmp_path / "soak.json"
    argv = ["--steps", "12", "--sizes", "4", "8", "--images", "64", "--image-size", "16"]
    status = soak.main([*argv, "--checkpoint-every", "5", "--json", str(out)])
    written = json.loads(out.read_text())
    assert status == (1 if written["failures"] else 0)
    assert set(written["sizes"]) == {"4", "8"} and written["steps"] == 12
    assert sum(row["steps"] for row in written["sizes"].values()) == 12
    assert "| batch | steps |" in capsys.readouterr().out
