"""Crash safety on real processes: a run killed mid-write and with SIGKILL resumes exactly.

Three ``python -m mscon train`` processes share one run folder:

1. dies inside its second checkpoint write (``MSCON_FAULT_INJECT=checkpoint_write:2``,
   ``os._exit`` with half of the temporary file on disk), leaving its lock behind;
2. ``--resume``s from the first checkpoint and stops itself (SIGSTOP) right after
   logging a step between two checkpoints (``metrics_append:3:stop``); the test
   then kills it with SIGKILL;
3. ``--resume``s again and finishes.

The final weights, optimiser and scheduler state equal those of an uninterrupted
run bit for bit, and metrics.jsonl equals it in every field but ``images_per_s``.
The kill points are deterministic (no sleeps, no polling races).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from conftest import tiny_overrides
from mscon import faults, runs
from mscon.config import load_config
from mscon.train import train

# 3 epochs of 4 steps; checkpoints after steps 2, 4, 6, ... (and each epoch's end)
EXTRA = {"train.epochs": 3, "train.checkpoint_every": 2}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def start(run: Path, fault: str, resume: bool) -> subprocess.Popen:
    argv = ["train", "demo", "--no-eval"] + [
        item for o in tiny_overrides(run, "mscon", **EXTRA) for item in ("--set", o)
    ]
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        faults.ENV: fault,
    }
    command = [sys.executable, "-m", "mscon", *argv, *(["--resume"] if resume else [])]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def assert_same_tensors(a, b, where=""):
    """Equal containers of tensors, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, single_thread):
    run = tmp_path / "cut"
    first = start(run, "checkpoint_write:2", resume=False)
    _, err = first.communicate(timeout=300)
    assert first.returncode == faults.CRASH_STATUS, err
    assert (run / "run.lock").exists()  # os._exit: the lock is left behind, stale
    assert runs.load_checkpoint(runs.checkpoint_path(run))["step"] == 2
    assert (run / "checkpoints" / "step_00000004.pt.tmp").stat().st_size > 0

    second = start(run, "metrics_append:3:stop", resume=True)
    _, status = os.waitpid(second.pid, os.WUNTRACED)  # returns once it has stopped itself
    assert os.WIFSTOPPED(status), status
    assert [r["step"] for r in runs.read_metrics(run)] == [1, 2, 3, 4, 5]
    assert runs.load_checkpoint(runs.checkpoint_path(run))["step"] == 4
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    assert second.returncode == -signal.SIGKILL

    third = start(run, "", resume=True)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert [r["step"] for r in runs.read_resumes(run)] == [2, 4]
    assert not (run / "run.lock").exists()
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.pt",
        "step_00000010.pt",
        "step_00000012.pt",
    ]

    config = load_config("demo", tiny_overrides(tmp_path / "full", "mscon", **EXTRA))
    full = train(config)
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(folder / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for part in ("model", "optimizer", "scheduler", "scaler", "rng"):
        assert_same_tensors(a[part], b[part], part)
    assert without_timing(runs.read_metrics(full)) == without_timing(runs.read_metrics(run))
