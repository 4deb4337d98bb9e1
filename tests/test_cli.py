"""The command line, driven in-process (no subprocess: `import torch` costs seconds)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from mscon.cli import main


def sets(overrides):
    return [item for o in overrides for item in ("--set", o)]


def test_train_eval_report_embed(tmp_path, capsys):
    run = tmp_path / "run"
    extra = {"data.eval_tasks": "[pattern,shape_color,angle]"}
    assert main(["train", "demo", *sets(tiny_overrides(run, "mscon", **extra))]) == 0
    result = json.loads((run / "eval.json").read_text())
    tasks = result["tasks"]
    assert {t: r["domain"] for t, r in tasks.items()} == {
        "shape": "in",
        "color": "in",
        "size": "in",
        "pattern": "out",
        "shape_color": "out",
        "angle": "out",
    }
    for task in ("shape", "color", "size", "pattern", "shape_color"):
        row = tasks[task]
        assert 0.0 <= row["linear_top1"] <= 100.0 and 0.0 <= row["knn_top1"] <= 100.0
        assert row["num_classes"] >= 2
    assert {"linear_r2", "linear_mae"} <= set(tasks["angle"])
    assert "| run | task |" in capsys.readouterr().out

    assert main(["eval", str(run)]) == 0
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "pattern" in report and "figures/weights.png" in report
    assert (run / "figures" / "weights.png").is_file()
    assert "figures/label_noise.png" in report  # MSCon's default weighting logs it
    assert (run / "figures" / "label_noise.png").is_file()
    assert (run / "figures" / "embedding_run.png").is_file()

    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--size", "20", "--image-size", "16"]) == 0
    out = tmp_path / "features.npy"
    assert main(["embed", str(run), "--data", str(data), "--out", str(out)]) == 0
    features = np.load(out)
    assert features.shape[0] == 20 and features.ndim == 2
    import mscon

    direct = mscon.embed(run, torch.zeros(3, 3, 24, 24, dtype=torch.uint8))
    assert direct.shape == (3, features.shape[1])
    encoder = mscon.load_encoder(run)
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def test_supcon_domains_and_multi_run_report(tmp_path):
    runs = []
    for method in ("supcon", "simclr"):
        run = tmp_path / method
        args = tiny_overrides(run, method, **{"train.epochs": 1})
        assert main(["train", "demo", *sets(args)]) == 0
        runs.append(run)
    supcon = json.loads((runs[0] / "eval.json").read_text())["tasks"]
    assert [t for t, r in supcon.items() if r["domain"] == "in"] == ["shape"]
    simclr = json.loads((runs[1] / "eval.json").read_text())["tasks"]
    assert all(r["domain"] == "out" for r in simclr.values())
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "figures" / "comparison.png").is_file()
    assert not (tmp_path / "cmp" / "figures" / "label_noise.png").exists()  # none logs it
    assert "label_noise" not in (tmp_path / "cmp" / "report.md").read_text()


def write_foreign_manifest(folder, n=40, size=12):
    """A manifest as another program would write it: path, split, label columns only."""
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,split,kind,tone"]
    for i in range(n):
        kind = i % 2
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + 150 * kind
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "img" / f"{i}.png")
        split = "train" if i < 28 else "test"
        tone = "" if i == 3 else ("light" if kind else "dark")
        rows.append(f"img/{i}.png,{split},{'square' if kind else 'round'},{tone}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def test_foreign_manifest_trains_and_evaluates(tmp_path):
    data = tmp_path / "data"
    write_foreign_manifest(data)
    run = tmp_path / "run"
    args = tiny_overrides(
        run,
        "mscon",
        **{
            "data.path": str(data),
            "data.similarities": "[kind]",
            "data.eval_tasks": "[tone]",
            "train.batch_size": 8,
        },
    )
    assert main(["train", "demo", *sets(args)]) == 0
    tasks = json.loads((run / "eval.json").read_text())["tasks"]
    assert tasks["kind"]["domain"] == "in" and tasks["tone"]["domain"] == "out"
    assert tasks["kind"]["num_classes"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "demo", "--set", "train.bogus=1"], "train.bogus"),
        (["train", "no-such-config.yaml"], "no-such-config.yaml"),
        (["eval", "no/such/run"], "no/such/run"),
        (["report", "no/such/run"], "no/such/run"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_unknown_column_exits_2(tmp_path, capsys):
    args = tiny_overrides(tmp_path / "r", "mscon", **{"data.eval_tasks": "[colour]"})
    assert main(["train", "demo", *sets(args)]) == 2
    err = capsys.readouterr().err
    assert "colour" in err and "pattern" in err  # names the column and lists available ones


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    assert main(["eval", str(run)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_non_finite_loss_exits_3(tmp_path, monkeypatch, capsys):
    from mscon.methods.mscon import MSCon

    def broken(self, views, labels, index=None):
        return {"loss": self.encode_views(views).sum() * float("nan")}

    monkeypatch.setattr(MSCon, "forward", broken)
    assert main(["train", "demo", *sets(tiny_overrides(tmp_path / "r", "mscon"))]) == 3
    assert "non-finite loss" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as error:
        main(["train"])
    assert error.value.code == 2
