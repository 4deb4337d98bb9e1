"""Shared fixtures: tiny configs that train in a second or two on CPU."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_overrides(out, method: str = "mscon", **extra) -> list[str]:
    """Overrides that shrink configs/demo.yaml to a 2-epoch, 4-steps-per-epoch run."""
    values = {
        "out": str(out),
        "method.name": method,
        "data.synthetic_size": 96,
        "data.image_size": 16,
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.warmup_epochs": 0.5,
        "train.log_every": 1,
        "train.progress": "false",
        "train.tensorboard": "false",
        "eval.batch_size": 64,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: tiny_config(method="mscon", **overrides) -> Config writing to tmp_path/run."""
    from mscon.config import load_config

    def make(method: str = "mscon", out=None, **extra):
        return load_config("demo", tiny_overrides(out or tmp_path / "run", method, **extra))

    return make


@pytest.fixture
def single_thread():
    """Tiny tensors: one thread avoids OpenMP hand-off stalls on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def view_recipes_seen(monkeypatch):
    """A list that collects the recipe kinds of every ``make_views`` call of the loop."""
    import mscon.train

    seen: list[list[str]] = []
    real = mscon.train.make_views

    def spy(images, augments, generator, **shard):
        seen.append([a.kind for a in augments])
        return real(images, augments, generator, **shard)

    monkeypatch.setattr(mscon.train, "make_views", spy)
    return seen


@pytest.fixture(scope="session")
def gloo_ranks(tmp_path_factory):
    """(inputs, per-rank results) of tests/losses/distributed_worker.py on 2 gloo processes.

    One launch (about 10 s) shared by the distributed tests of the losses and of
    mscon.distributed.
    """
    from pathlib import Path

    from losses.distributed_worker import make_inputs
    from losses.helpers import run_ranks

    tmp = tmp_path_factory.mktemp("gloo")
    data = make_inputs(torch.Generator().manual_seed(1234))
    torch.save(data, tmp / "inputs.pt")
    worker = Path(__file__).parent / "losses" / "distributed_worker.py"
    return data, run_ranks(worker, tmp, 2, timeout=240)
