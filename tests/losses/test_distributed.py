"""gather_distributed under a real 2-process gloo group equals one process on the whole batch.

Each rank returns its share times the world size: the mean over ranks is the
single-process loss, and each rank's gradient divided by the world size (what
DDP's averaging yields) is the single-process gradient of its rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from losses.helpers import run_ranks
from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss

WORKER = Path(__file__).with_name("distributed_worker.py")
WORLD = 2


def make_inputs(gen: torch.Generator) -> dict:
    b, v, d = 8, 2, 4
    f64 = torch.float64
    sparse_weights = torch.rand(b, b, generator=gen, dtype=f64)
    sparse_weights *= torch.rand(b, b, generator=gen) < 0.5
    labels = torch.tensor([0, 1, -1, 0, 5, 1, -1, 2])  # missing labels, singletons 5 and 2
    # the second similarity has labels only on rank 0's rows (and a singleton, 4)
    mscon_labels = torch.stack([labels, torch.tensor([3, 3, -1, 4, -1, -1, -1, -1])], 1)
    # the second task has no label at all
    ce_labels = torch.stack([torch.tensor([0, 2, -1, 1, 1, 0, 2, -1]), torch.full((b,), -1)], 1)
    return {
        "splits": [0, 5, b],  # uneven shards: 5 and 3 images
        "features": torch.randn(b, v, d, generator=gen, dtype=f64),
        "labels": labels,
        "mask": sparse_weights,
        "mscon_features": torch.randn(2, b, 1, d, generator=gen, dtype=f64),
        "mscon_labels": mscon_labels,
        "log_vars": torch.tensor([0.4, -0.3], dtype=f64),
        "logits": [torch.randn(b, k, generator=gen, dtype=f64) for k in (3, 2)],
        "ce_labels": ce_labels,
    }


def single_process(data: dict) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    x = data["features"].clone().requires_grad_()
    for name, kwargs, form in (
        ("supcon_labels", {"labels": data["labels"]}, "out"),
        ("supcon_simclr", {}, "out"),
        ("supcon_mask", {"mask": data["mask"]}, "out"),
        ("supcon_in", {"labels": data["labels"]}, "in"),
    ):
        loss = SupConLoss(0.2, form=form)(x, **kwargs)
        out[name] = {"value": loss.detach(), "grad": torch.autograd.grad(loss, x)[0]}
    z0, z1 = (data["features"][:, i].clone().requires_grad_() for i in (0, 1))
    loss = NTXentLoss(0.3)(z0, z1)
    out["ntxent"] = {
        "value": loss.detach(),
        "grad": torch.stack(torch.autograd.grad(loss, (z0, z1)), 1),
    }
    for mode in ("uncertainty", "temperature"):
        m = MSConLoss(2, temperature=0.2, weighting=mode).double()
        with torch.no_grad():
            m.log_vars.copy_(data["log_vars"])
        feats = data["mscon_features"].clone().requires_grad_()
        loss = m(feats, data["mscon_labels"])
        grad, grad_s = torch.autograd.grad(loss, (feats, m.log_vars))
        out[f"mscon_{mode}"] = {
            "value": loss.detach(),
            "grad": grad,
            "grad_log_vars": grad_s,
            "last_losses": m.last_losses,
            "last_valid": m.last_valid,
        }
    ce = MultiTaskCELoss([3, 2]).double()
    with torch.no_grad():
        ce.log_vars.copy_(data["log_vars"])
    logits = [t.clone().requires_grad_() for t in data["logits"]]
    loss = ce(logits, data["ce_labels"])
    *grads, grad_s = torch.autograd.grad(loss, (*logits, ce.log_vars))
    out["multitask_ce"] = {
        "value": loss.detach(),
        "grad": torch.cat(grads, 1),
        "grad_log_vars": grad_s,
        "last_losses": ce.last_losses,
    }
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_matches_single_process(tmp_path, gen):
    data = make_inputs(gen)
    torch.save(data, tmp_path / "inputs.pt")
    ranks = run_ranks(WORKER, tmp_path, WORLD, timeout=180)
    want = single_process(data)
    splits = data["splits"]
    for name, ref in want.items():
        got = [r[name] for r in ranks]
        mean_value = sum(g["value"] for g in got) / WORLD
        torch.testing.assert_close(mean_value, ref["value"], rtol=1e-10, atol=1e-10, msg=name)
        # gradients of each rank's rows, after DDP's division by the world size
        row_dim = 1 if name.startswith("mscon") else 0
        for r, g in enumerate(got):
            rows = ref["grad"].narrow(row_dim, splits[r], splits[r + 1] - splits[r])
            torch.testing.assert_close(g["grad"] / WORLD, rows, rtol=1e-9, atol=1e-12, msg=name)
        if "grad_log_vars" in ref:
            mean_grad = sum(g["grad_log_vars"] for g in got) / WORLD
            torch.testing.assert_close(mean_grad, ref["grad_log_vars"], rtol=1e-9, atol=1e-12)
            for g in got:
                torch.testing.assert_close(g["last_losses"], ref["last_losses"])
                if "last_valid" in ref:
                    assert torch.equal(g["last_valid"], ref["last_valid"])
