"""Every user error, end to end through the command line: exit 2, one line naming what to fix.

Anything that is not a :class:`mscon.errors.UserError` is a bug: it keeps its
traceback (exit status 1). Driven in-process; the real-process checks are in
tests/test_crash_resume.py.
"""

import os

import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from mscon import faults, runs
from mscon.cli import main
from mscon.config import load_config


def sets(overrides):
    return [item for o in overrides for item in ("--set", o)]


def train_argv(run, *extra, **values):
    return ["train", "demo", "--no-eval", *sets(tiny_overrides(run, "mscon", **values)), *extra]


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mscon: error: "), lines
    return lines[0]


def write_manifest(folder, n=12, tone=lambda i: "light" if i % 2 else "dark"):
    (folder / "img").mkdir(parents=True)
    rows = ["path,split,kind,tone"]
    for i in range(n):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'train' if i < 8 else 'test'},{'ab'[i % 2]},{tone(i)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


MANIFEST = {"data.similarities": "[kind,tone]", "data.eval_tasks": "[]", "train.batch_size": 4}


def missing_images(folder):
    for i in (1, 2, 3, 4):
        (folder / "img" / f"{i}.png").unlink()


def undecodable_image(folder):
    (folder / "img" / "5.png").write_bytes(b"not an image")


@pytest.mark.parametrize(
    ("spoil", "values", "named"),
    [
        (None, {"data.similarities": "[colour]"}, "data.similarities: no column 'colour'; avail"),
        (missing_images, {}, "4 image(s) missing or undecodable, first: img/1.png (missing), "),
        (undecodable_image, {}, "1 image(s) missing or undecodable, first: img/5.png (undec"),
        (None, {"data.similarities": "[kind]", "data.eval_tasks": "[tone]"}, None),
        (None, {"train.batch_size": 9}, "train.batch_size: 9 is larger than the train split (8"),
    ],
    ids=["unknown-column", "missing-images", "undecodable-image", "control", "batch-too-large"],
)
def test_data_errors_exit_2_naming_file_and_column(tmp_path, capsys, spoil, values, named):
    data = write_manifest(tmp_path / "data")
    if spoil:
        spoil(data)
    run = tmp_path / "run"
    argv = train_argv(run, **{**MANIFEST, "data.path": data, **values})
    if named is None:  # the same manifest trains: the errors above come from the spoiling
        assert main(argv) == 0
        return
    assert main(argv) == 2
    assert named in one_line_error(capsys)
    assert not run.exists()


def test_missing_data_folder_empty_split_and_one_class(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(run, **{"data.path": tmp_path / "nope"})) == 2
    assert f"{tmp_path / 'nope' / 'labels.csv'}: no such file" in one_line_error(capsys)
    split = "{train: 0.8, val: 0.2, test: 0.0}"
    assert main(train_argv(run, **{"data.split": split})) == 2
    assert "split 'test' is empty" in one_line_error(capsys)
    data = write_manifest(tmp_path / "data", tone=lambda i: "dark")
    assert main(train_argv(run, **{**MANIFEST, "data.path": data})) == 2
    assert "data.similarities: column 'tone' has 1 class ('dark')" in one_line_error(capsys)
    assert not run.exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lrr=0.1", "train.lrr: unknown key in section 'train' (did you mean 'lr'?)"),
        ("train.lr=abc", "train.lr: Input should be a valid number"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("train.keep_epoch_checkpoints=true", "replaced by train.keep_checkpoints"),
        ("augment.overrides.flip_prob=2", "augment.overrides.flip_prob: expected a probability"),
        ("augment.overrides.flip=0.5", "augment.overrides: unknown key 'flip'"),
        ("model.weights=no/such.pt", "model.weights: file not found: no/such.pt"),
        ("method.queue_size=4096", "method.queue_size: not read by method 'mscon'"),
        ("method.weighting=nope", "method.weighting: unknown name 'nope'"),
        ("model.backbone=resnet19", "did you mean 'resnet18'"),
    ],
)
def test_config_errors_exit_2_before_data_or_run_folder(
    override, named, tmp_path, capsys, monkeypatch
):
    import mscon.data

    def no_data(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(mscon.data, "load_dataset", no_data)
    run = tmp_path / "run"
    assert main(["train", "demo", "--set", f"out={run}", "--set", override]) == 2
    assert named in one_line_error(capsys)
    assert not run.exists()


class Booby:
    """Unpickling this runs ``open(marker, "w")``: the file appears if code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def saved_run(tmp_path):
    """A run folder with its config.yaml (as training writes it) and no checkpoint yet."""
    run = tmp_path / "run"
    runs.save_run_config(load_config("demo", tiny_overrides(run, "mscon")), run)
    return run


def test_booby_trapped_checkpoint_is_refused_and_runs_no_code(saved_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    last = saved_run / "checkpoints" / "last.pt"
    last.parent.mkdir()
    torch.save({"model": {}, "step": 1, "payload": Booby(marker)}, last)
    assert main(["eval", str(saved_run)]) == 2
    assert f"{last}: refused: the checkpoint holds pickled objects" in one_line_error(capsys)
    assert main(train_argv(saved_run, "--resume")) == 2
    assert f"{last}: refused" in one_line_error(capsys)
    assert not marker.exists()


def test_truncated_checkpoint_and_broken_config_exit_2(saved_run, capsys):
    last = runs.save_checkpoint(saved_run, {"model": {"w": torch.ones(4000)}, "step": 1})
    last.write_bytes(last.read_bytes()[:3000])  # a new inode: the step file stays whole
    assert main(["eval", str(saved_run)]) == 2
    assert f"{last}: not a readable checkpoint (truncated or corrupt" in one_line_error(capsys)
    runs.config_file(saved_run).write_text("name: [unclosed\n")
    assert main(["eval", str(saved_run)]) == 2
    assert f"{saved_run / 'config.yaml'}: not valid YAML" in one_line_error(capsys)
    runs.config_file(saved_run).write_bytes(b"\xff\xfe\x00garbage")
    assert main(["eval", str(saved_run)]) == 2
    assert "config.yaml: not a text file" in one_line_error(capsys)


def test_resume_with_nothing_to_resume_and_a_live_run_in_the_folder(saved_run, capsys):
    assert main(train_argv(saved_run, "--resume")) == 2
    assert f"{saved_run}: no checkpoint to resume from" in one_line_error(capsys)
    (saved_run / "run.lock").write_text(f"{os.getppid()} {os.uname().nodename}\n")  # alive
    assert main(train_argv(saved_run)) == 2
    assert f"in use by another mscon run (pid {os.getppid()})" in one_line_error(capsys)


def test_a_full_disk_exits_2_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    faults.reset()
    monkeypatch.setenv(faults.ENV, "checkpoint_write:2:enospc")
    try:
        assert main(train_argv(run, **{"train.checkpoint_every": 2})) == 2
    finally:
        faults.reset()
    assert "step_00000004.pt: disk full (no space left on device)" in one_line_error(capsys)
    assert runs.load_checkpoint(runs.checkpoint_path(run))["step"] == 2
    assert not (run / "run.lock").exists()


def test_a_bug_is_not_a_user_error(monkeypatch, saved_run):
    """A ValueError from inside mscon is a bug: it propagates (exit 1 with a traceback)."""
    import mscon.evaluate

    def broken(*args, **kwargs):
        raise ValueError("internal inconsistency")

    monkeypatch.setattr(mscon.evaluate, "evaluate_run", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["eval", str(saved_run)])


def test_a_path_that_cannot_be_written_exits_2_naming_it(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["data", "synth", "--out", str(blocker / "x"), "--size", "20"]) == 2
    assert f"{blocker / 'x'}/images: Not a directory" in one_line_error(capsys)
    assert main(train_argv(blocker / "run")) == 2
    assert f"{blocker / 'run'}: Not a directory" in one_line_error(capsys)
