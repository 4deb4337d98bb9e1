"""gather_distributed under a real 2-process gloo group equals one process on the whole batch.

Shards are uneven (5 and 3 images), labels are missing on both ranks, some anchors
have no positive, one similarity has labels only in rank 0's shard and one has
none; float64. Each rank returns its share times the world size, so:

* embeddings: the mean of the returned values over ranks is the single-process
  loss, and each rank's gradient divided by the world size (DDP's averaging) is
  the single-process gradient of its rows;
* DDP: a linear encoder and the loss in one DistributedDataParallel module (every
  loss, every weighting mode it accepts): each parameter's averaged gradient,
  the learned log_vars included, and the parameters after one SGD step equal
  those of one process.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from losses.distributed_worker import DDP_CASES, ddp_step, embedding_cases
from mscon.losses import MSConFMICLLoss
from mscon.losses.weighting import WEIGHTING_MODES

WORLD = 2
TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture
def ranks(gloo_ranks) -> tuple[dict, list[dict]]:
    """(inputs, what each of the 2 gloo ranks computed): one launch for the session."""
    return gloo_ranks


def test_every_loss_and_weighting_mode_is_covered():
    names = set(DDP_CASES)
    for mode in WEIGHTING_MODES:
        assert {f"mscon_{mode}", f"multitask_ce_{mode}"} <= names
    assert {f"mscon_fmicl_{mode}" for mode in MSConFMICLLoss.WEIGHTINGS} <= names
    kinds = {kind for kind, _ in DDP_CASES.values()}
    assert kinds == {"supcon", "ntxent", "fmicl", "sce", "mscon", "mscon_fmicl", "multitask_ce"}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_embedding_gradients_match_single_process(ranks):
    data, got_ranks = ranks
    splits = data["splits"]
    want = embedding_cases(data, slice(None))
    for name, ref in want.items():
        got = [r["embedding"][name] for r in got_ranks]
        mean_value = sum(g["value"] for g in got) / WORLD
        torch.testing.assert_close(mean_value, ref["value"], rtol=1e-10, atol=1e-10, msg=name)
        for r, g in enumerate(got):
            rows = ref["grad"][splits[r] : splits[r + 1]]
            torch.testing.assert_close(g["grad"] / WORLD, rows, **TOL, msg=name)
        if "grad_log_vars" in ref:
            mean_grad = sum(g["grad_log_vars"] for g in got) / WORLD
            torch.testing.assert_close(mean_grad, ref["grad_log_vars"], **TOL, msg=name)
        for g in got:
            if "last_losses" in ref:
                torch.testing.assert_close(g["last_losses"], ref["last_losses"], msg=name)
            if "last_valid" in ref:
                assert torch.equal(g["last_valid"], ref["last_valid"]), name


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("name", sorted(DDP_CASES))
def test_ddp_gradients_and_optimiser_step_match_single_process(ranks, name):
    data, got_ranks = ranks
    want = ddp_step(name, data, slice(None))
    got = [r["ddp"][name] for r in got_ranks]
    mean_value = sum(g["value"] for g in got) / WORLD
    torch.testing.assert_close(mean_value, want["value"], rtol=1e-10, atol=1e-10)
    assert set(want["grads"]) == set(got[0]["grads"])
    for g in got:
        for key in ("grads", "after"):
            for param, value in want[key].items():
                torch.testing.assert_close(g[key][param], value, **TOL, msg=f"{key} {param}")
        if "last_losses" in want:
            torch.testing.assert_close(g["last_losses"], want["last_losses"], **TOL)
    # the step moved the parameters (the comparison is not between two unchanged copies)
    assert float(want["grads"]["linear.weight"].abs().max()) > 0
    if "loss.weighting.log_vars" in want["grads"] and not name.endswith("temperature"):
        assert float(want["grads"]["loss.weighting.log_vars"][:2].abs().min()) > 0
