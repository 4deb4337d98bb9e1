"""The run-folder layer: atomic files, weights_only checkpoints, metrics, eval.json, the lock."""

import errno
import os
import pickle
import subprocess
import sys

import pytest
import torch

from mscon import faults, runs
from mscon.errors import ConfigError, RunError


def test_checkpoint_round_trip_leaves_no_temporary_file(tmp_path):
    path = runs.save_checkpoint(tmp_path, {"model": {"w": torch.arange(3.0)}, "step": 7})
    assert path == runs.checkpoint_path(tmp_path) and runs.has_checkpoint(tmp_path)
    state = runs.load_checkpoint(path)
    assert state["step"] == 7 and state["format"] == runs.CHECKPOINT_FORMAT
    assert not list(path.parent.glob("*.tmp"))
    runs.save_checkpoint(tmp_path, {"model": {}, "step": 8}, "best")
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path, "best"))["step"] == 8


def test_keep_checkpoints_keeps_the_newest_with_last_a_link_to_the_newest(tmp_path):
    folder = tmp_path / runs.CHECKPOINT_DIR
    for step in (2, 4, 6, 8):
        runs.save_checkpoint(
            tmp_path, {"model": {"w": torch.full((2,), step)}, "step": step}, keep=2
        )
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.pt",
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    assert os.path.samefile(folder / "last.pt", folder / "step_00000008.pt")
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path, "step_00000006"))["step"] == 6
    assert runs.last_checkpoint_step(tmp_path) == 8
    runs.save_checkpoint(tmp_path, {"model": {}, "step": 9}, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step_00000009.pt"]


@pytest.fixture
def fault(monkeypatch):
    """fault("checkpoint_write:2:enospc") arms the fault-injection variable for the test."""

    def arm(value):
        faults.reset()
        monkeypatch.setenv(faults.ENV, value)

    yield arm
    faults.reset()


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, fault):
    runs.save_checkpoint(tmp_path, {"model": {"w": torch.ones(500)}, "step": 1})
    fault("checkpoint_write:1:enospc")
    with pytest.raises(RunError, match="step_00000002.pt: disk full .*--resume"):
        runs.save_checkpoint(tmp_path, {"model": {"w": torch.zeros(500)}, "step": 2})
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path))["step"] == 1
    assert not list((tmp_path / runs.CHECKPOINT_DIR).glob("*.tmp"))


def test_a_real_full_disk_inside_torch_save_is_recognised(tmp_path, monkeypatch):
    """Writes to /dev/full fail with ENOSPC; torch.save hides the errno unless recorded."""
    runs.save_checkpoint(tmp_path, {"model": {"w": torch.ones(10)}, "step": 1})

    def full(file, mode="r", *args, **kwargs):
        return open("/dev/full", mode) if str(file).endswith(".tmp") else open(file, mode)

    monkeypatch.setattr(runs, "open", full, raising=False)
    with pytest.raises(RunError, match="step_00000002.pt: disk full"):
        runs.save_checkpoint(tmp_path, {"model": {"w": torch.ones(100_000)}, "step": 2})
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path))["step"] == 1


def test_a_full_disk_while_appending_metrics_is_a_run_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(RunError, match="metrics.jsonl: disk full"):
        runs.append_metrics(tmp_path, {"step": 1})


def test_fault_variable_is_checked(fault):
    fault("checkpoint_write:0")
    with pytest.raises(ConfigError, match=faults.ENV):
        faults.inject("checkpoint_write", None)


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path):
    code = (
        "import sys, torch; from mscon import runs\n"
        "for step in (1, 2):\n"
        "    runs.save_checkpoint(sys.argv[1], {'model': {'w': torch.ones(9000)}, 'step': step})"
    )
    env = {**os.environ, faults.ENV: "checkpoint_write:2"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=False)
    assert done.returncode == faults.CRASH_STATUS
    partial = tmp_path / runs.CHECKPOINT_DIR / "step_00000002.pt.tmp"
    assert 0 < partial.stat().st_size < (tmp_path / runs.CHECKPOINT_DIR / "last.pt").stat().st_size
    assert runs.load_checkpoint(runs.checkpoint_path(tmp_path))["step"] == 1


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
    with pytest.raises(RunError, match=f"{path}: refused: .* could run code"):
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


def test_a_cut_off_last_metrics_line_is_dropped_a_broken_one_refused(tmp_path):
    runs.append_metrics(tmp_path, {"step": 1})
    with open(runs.metrics_file(tmp_path), "a") as handle:
        handle.write('{"step": 2, "lo')  # killed mid-append
    assert runs.read_metrics(tmp_path) == [{"step": 1}]
    runs.truncate_metrics(tmp_path, 1)  # what a resume does: the cut-off line goes
    assert runs.metrics_file(tmp_path).read_text() == '{"step": 1}\n'
    with open(runs.metrics_file(tmp_path), "a") as handle:
        handle.write("not json\n")
    runs.append_metrics(tmp_path, {"step": 3})
    with pytest.raises(RunError, match="metrics.jsonl: line 2 is not JSON"):
        runs.read_metrics(tmp_path)
    (tmp_path / "eval.json").write_text("{")
    with pytest.raises(RunError, match="eval.json: not JSON"):
        runs.read_eval(tmp_path)


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    lock = tmp_path / "run.lock"
    with runs.run_lock(tmp_path):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(RunError, match=f"in use by another mscon run \\(pid {sleeper.pid}\\)"):
            runs.check_unlocked(tmp_path)
        with pytest.raises(RunError, match="in use"), runs.run_lock(tmp_path):
            pass
        assert lock.read_text().startswith(str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    with runs.run_lock(tmp_path):  # the holder died: its lock is stale
        assert lock.read_text().split()[0] == str(os.getpid())
    lock.write_text("12345 some-other-host\n")
    with pytest.raises(RunError, match="some-other-host.*delete"):
        runs.check_unlocked(tmp_path)


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


def test_a_run_config_with_the_retired_key_still_loads(tmp_path, tiny_config):
    runs.save_run_config(tiny_config("supcon"), tmp_path)
    text = runs.config_file(tmp_path).read_text()
    runs.config_file(tmp_path).write_text(
        text.replace("train:\n", "train:\n  keep_epoch_checkpoints: false\n")
    )
    assert runs.load_run_config(tmp_path).train.keep_checkpoints == 2


def test_an_older_run_config_with_every_method_key_still_loads(tmp_path, tiny_config):
    # older versions saved keys that the run's options do not read, at their defaults
    config = tiny_config("mscon", **{"method.weighting": "equal"})
    runs.save_run_config(config, tmp_path)
    text = runs.config_file(tmp_path).read_text()
    older = text.replace("method:\n", "method:\n  log_var_lr: null\n  consistency_bank: 4096\n")
    runs.config_file(tmp_path).write_text(older)
    assert runs.load_run_config(tmp_path) == config
    runs.config_file(tmp_path).write_text(text.replace("method:\n", "method:\n  log_var_lr: 0.1\n"))
    with pytest.raises(ConfigError, match="log_var_lr is not read"):  # a value: still refused
        runs.load_run_config(tmp_path)
