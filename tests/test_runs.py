"""The run-folder layer: atomic files, weights_only checkpoints, metrics, eval.json."""

import pickle

import pytest
import torch

from mscon import runs
from mscon.errors import RunError


def test_checkpoint_round_trip_leaves_no_temporary_file(tmp_path):
    path = runs.save_checkpoint(tmp_path, {"model": {"w": torch.arange(3.0)}, "step": 7})
    assert path == runs.checkpoint_path(tmp_path) and runs.has_checkpoint(tmp_path)
    assert runs.load_checkpoint(path)["step"] == 7
    assert not list(path.parent.glob("*.tmp"))
    runs.save_checkpoint(tmp_path, {"model": {}, "step": 8}, "epoch_0001")
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path, "epoch_0001"))["step"] == 8


class _Booby:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_an_object_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    torch.save({"model": {}, "payload": _Booby(marker)}, path, pickle_protocol=2)
    assert not marker.exists()
    with pytest.raises(RunError, match=f"{path}: not a readable mscon checkpoint"):
        runs.load_checkpoint(path)
    assert not marker.exists()


def test_a_truncated_or_foreign_checkpoint_is_a_run_error(tmp_path):
    path = runs.save_checkpoint(tmp_path, {"model": {"w": torch.ones(1000)}, "step": 1})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RunError, match="truncated"):
        runs.load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(RunError, match="no 'model' entry"):
        runs.load_checkpoint(path)
    with pytest.raises(RunError, match="no such checkpoint"):
        runs.checkpoint_path(tmp_path, "epoch_9999")
    assert pickle.HIGHEST_PROTOCOL >= 2


def test_metrics_append_read_truncate(tmp_path):
    for step in (1, 2, 3):
        runs.append_metrics(tmp_path, {"step": step, "loss": 1.0 / step})
    runs.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2]
    assert runs.read_metrics(tmp_path / "nothing") == []


def test_config_and_eval_files(tmp_path, tiny_config):
    config = tiny_config("supcon")
    with pytest.raises(RunError, match="not a run folder"):
        runs.load_run_config(tmp_path)
    runs.save_run_config(config, tmp_path)
    assert runs.load_run_config(tmp_path) == config
    assert runs.read_eval(tmp_path) is None
    runs.write_eval(tmp_path, {"tasks": {}})
    assert runs.read_eval(tmp_path) == {"tasks": {}}
    runs.clear_run(tmp_path)
    assert runs.read_eval(tmp_path) is None and runs.config_file(tmp_path).is_file()
