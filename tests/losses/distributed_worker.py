"""One rank of the 2-process gloo check in test_distributed.py, and the cases it runs.

Usage: python distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt and
writes TMPDIR/rank{RANK}.pt with, for this rank's shard (gather_distributed=True):

* ``embedding``: each loss's returned value and its gradient with respect to the
  rank's own embeddings (rows), for the losses and weighting modes of
  :func:`embedding_cases`;
* ``ddp``: for every case of :data:`DDP_CASES`, a linear encoder and the loss in one
  module wrapped in DistributedDataParallel: the returned value, every parameter's
  gradient after DDP's averaging (log_vars included), the parameters after one SGD
  step with momentum, and the loss's ``last_losses``;
* ``helpers``: what :mod:`mscon.distributed`'s rank helpers return (:func:`rank_helpers`);
* ``methods``: two optimiser steps of every training method (:func:`method_steps`).

test_distributed.py imports :func:`ddp_step` and :func:`embedding_cases` to compute
the same things in one process on the whole batch (no process group: the losses'
``gather_distributed`` is then a no-op).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rank_worker import worker_main

IN_DIM, DIM, SIMS = 6, 4, 3
NUM_CLASSES = [3, 2, 2]
FIXED = [0.7, 1.3, 0.5]


def _weighting_modes() -> list[str]:
    from mscon.losses.weighting import WEIGHTING_MODES

    return list(WEIGHTING_MODES)


def _ddp_cases() -> dict[str, tuple[str, dict]]:
    """name -> (loss kind, options): every loss, every weighting mode it accepts."""
    from mscon.losses import MSConFMICLLoss

    cases: dict[str, tuple[str, dict]] = {
        "supcon_labels": ("supcon", {"labels": True}),
        "supcon_in": ("supcon", {"labels": True, "form": "in"}),
        "supcon_mask": ("supcon", {"mask": True}),
        "supcon_simclr": ("supcon", {}),
        "ntxent": ("ntxent", {}),
        "fmicl": ("fmicl", {}),
        "fmicl_supervised": ("fmicl", {"labels": True}),
        "sce_batch_ids": ("sce", {"coeff": 0.5, "ids": True}),
        "sce_queue": ("sce", {"coeff": 0.5, "queue": True, "ids": True}),
        "moco_queue": ("sce", {"coeff": 1.0, "queue": True}),
        "mscon_relative_mix": ("mscon", {"weighting": "relative", "instance_mix": 0.3}),
    }
    for mode in _weighting_modes():
        cases[f"mscon_{mode}"] = ("mscon", {"weighting": mode})
        cases[f"multitask_ce_{mode}"] = ("multitask_ce", {"weighting": mode})
    for mode in MSConFMICLLoss.WEIGHTINGS:
        cases[f"mscon_fmicl_{mode}"] = ("mscon_fmicl", {"weighting": mode})
    return cases


DDP_CASES = _ddp_cases()


def make_inputs(gen: torch.Generator) -> dict:
    """A batch of 8 images in 2 uneven shards (5 and 3) with every awkward label pattern.

    Similarity 0: missing labels on both ranks and singletons (anchors without a
    positive); similarity 1: labels only in rank 0's shard; similarity 2: no label.
    """
    b, v = 8, 2
    f64 = torch.float64
    sparse = torch.rand(b, b, generator=gen, dtype=f64) * (torch.rand(b, b, generator=gen) < 0.5)
    first = torch.tensor([0, 1, -1, 0, 5, 1, -1, 2])
    second = torch.tensor([3, 3, -1, 4, -1, -1, -1, -1])
    ce_first = torch.tensor([0, 2, -1, 1, 1, 0, 2, -1])
    ce_second = torch.tensor([1, 0, -1, 1, 0, -1, -1, -1])
    return {
        "splits": [0, 5, b],
        # embedding-level checks (as before): features and logits given directly
        "features": torch.randn(b, v, DIM, generator=gen, dtype=f64),
        "labels": first,
        "mask": sparse,
        "mscon_features": torch.randn(2, b, 1, DIM, generator=gen, dtype=f64),
        "mscon_labels": torch.stack([first, second], 1),
        "log_vars2": torch.tensor([0.4, -0.3], dtype=f64),
        "logits": [torch.randn(b, k, generator=gen, dtype=f64) for k in (3, 2)],
        "ce_labels": torch.stack([ce_first, torch.full((b,), -1)], 1),
        # DDP checks: inputs of a linear encoder, labels (B, 3), SCE's teacher and queue
        "x": torch.randn(b, v, IN_DIM, generator=gen, dtype=f64),
        "sims": torch.stack([first, second, torch.full((b,), -1)], 1),
        "ce_sims": torch.stack([ce_first, ce_second, torch.full((b,), -1)], 1),
        "log_vars": torch.tensor([0.4, -0.3, 0.2], dtype=f64),
        "teacher": torch.randn(b, DIM, generator=gen, dtype=f64),
        "index": torch.tensor([0, 3, 1, 2, 4, 5, 9, 6]),
        "queue": torch.randn(6, DIM, generator=gen, dtype=f64),
        "queue_index": torch.tensor([3, -1, 9, 5, 0, 11]),
        "views": torch.randn(b, v, 3, 8, 8, generator=gen, dtype=f64),  # method checks
    }


def _loss(kind: str, options: dict) -> nn.Module:
    from mscon.losses import (
        FMICLLoss,
        MSConFMICLLoss,
        MSConLoss,
        MultiTaskCELoss,
        NTXentLoss,
        SCELoss,
        SupConLoss,
    )

    mode = options.get("weighting")
    weights = FIXED if mode == "fixed" else None
    if kind == "supcon":
        return SupConLoss(0.2, form=options.get("form", "out"), gather_distributed=True)
    if kind == "ntxent":
        return NTXentLoss(0.3, gather_distributed=True)
    if kind == "fmicl":
        return FMICLLoss("js", alpha=2.0, sigma=0.9, gather_distributed=True)
    if kind == "sce":
        return SCELoss(0.1, 0.05, options["coeff"], gather_distributed=True)
    if kind == "mscon":
        return MSConLoss(
            SIMS,
            temperature=0.2,
            weighting=mode,
            weights=weights,
            instance_mix=options.get("instance_mix", 0.0),
            gather_distributed=True,
        )
    if kind == "mscon_fmicl":
        return MSConFMICLLoss(
            SIMS, mode, weights, divergence="pearson", alpha=2.0, gather_distributed=True
        )
    if kind == "multitask_ce":
        return MultiTaskCELoss(
            NUM_CLASSES, weighting=mode, weights=weights, gather_distributed=True
        )
    raise ValueError(kind)


class Toy(nn.Module):
    """A linear encoder of (B, V, IN_DIM) inputs and one loss: what DDP trains in a case."""

    def __init__(self, kind: str, options: dict, log_vars: Tensor) -> None:
        super().__init__()
        self.kind, self.options = kind, options
        width = {"mscon": SIMS * DIM, "mscon_fmicl": SIMS * DIM, "multitask_ce": sum(NUM_CLASSES)}
        self.linear = nn.Linear(IN_DIM, width.get(kind, DIM))
        self.loss = _loss(kind, options)
        if hasattr(self.loss, "log_vars"):
            with torch.no_grad():
                self.loss.log_vars.copy_(log_vars)

    def forward(self, batch: dict) -> Tensor:
        y = self.linear(batch["x"])  # (B, V, width)
        kind, o = self.kind, self.options
        if kind == "supcon":
            kwargs = {}
            if o.get("labels"):
                kwargs["labels"] = batch["sims"][:, 0]
            if o.get("mask"):
                kwargs["mask"] = batch["mask"]
            return self.loss(y, **kwargs)
        if kind == "ntxent":
            return self.loss(y[:, 0], y[:, 1])
        if kind == "fmicl":
            return self.loss(y, batch["sims"][:, 0] if o.get("labels") else None)
        if kind == "sce":
            queue = batch["queue"] if o.get("queue") else None
            kwargs = {"index": batch["index"]} if o.get("ids") else {}
            if queue is not None and o.get("ids"):
                kwargs["queue_index"] = batch["queue_index"]
            return self.loss(y[:, 0], batch["teacher"], queue, **kwargs)
        if kind in ("mscon", "mscon_fmicl"):
            heads = y.view(*y.shape[:2], SIMS, DIM).permute(2, 0, 1, 3)  # (C, B, V, d)
            return self.loss(heads, batch["sims"])
        logits = y.flatten(0, 1).split(NUM_CLASSES, dim=1)
        return self.loss(list(logits), batch["ce_sims"].repeat_interleave(y.shape[1], dim=0))


def shard(data: dict, rows: slice) -> dict:
    """This rank's rows of every per-image tensor of ``data`` (mask: rows, all columns)."""
    keys = ("x", "sims", "ce_sims", "teacher", "index", "mask")
    out = {k: data[k][rows] for k in keys}
    out.update(queue=data["queue"], queue_index=data["queue_index"])
    return out


def ddp_step(name: str, data: dict, rows: slice) -> dict:
    """Loss, parameter gradients and one SGD step of case ``name`` on ``data[rows]``.

    Inside a process group the module is wrapped in DistributedDataParallel (its
    gradients are the mean over ranks); without one it runs as a single process.
    """
    import torch.distributed as dist

    kind, options = DDP_CASES[name]
    torch.manual_seed(0)
    toy = Toy(kind, options, data["log_vars"]).double()
    model = nn.parallel.DistributedDataParallel(toy) if dist.is_initialized() else toy
    params = [p for p in toy.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    loss = model(shard(data, rows))
    loss.backward()
    named = [(n, p) for n, p in toy.named_parameters() if p.requires_grad]
    grads = {n: p.grad.detach().clone() for n, p in named}
    optimizer.step()
    out = {
        "value": loss.detach(),
        "grads": grads,
        "after": {n: p.detach().clone() for n, p in named},
    }
    if hasattr(toy.loss, "last_losses"):
        out["last_losses"] = toy.loss.last_losses.clone()
    return out


def embedding_cases(data: dict, rows: slice) -> dict[str, dict[str, Tensor]]:
    """Each loss's value and gradient with respect to the embeddings of ``rows``."""
    from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss

    results: dict[str, dict[str, Tensor]] = {}

    def leaf(t: Tensor) -> Tensor:
        return t[rows].clone().requires_grad_()

    x = leaf(data["features"])
    labels = data["labels"][rows]
    for name, kwargs, form in (
        ("supcon_labels", {"labels": labels}, "out"),
        ("supcon_simclr", {}, "out"),
        ("supcon_mask", {"mask": data["mask"][rows]}, "out"),
        ("supcon_in", {"labels": labels}, "in"),
    ):
        loss = SupConLoss(0.2, form=form, gather_distributed=True)(x, **kwargs)
        results[name] = {"value": loss.detach(), "grad": torch.autograd.grad(loss, x)[0]}

    z0, z1 = leaf(data["features"][:, 0]), leaf(data["features"][:, 1])
    loss = NTXentLoss(0.3, gather_distributed=True)(z0, z1)
    grads = torch.autograd.grad(loss, (z0, z1))
    results["ntxent"] = {"value": loss.detach(), "grad": torch.stack(grads, 1)}

    for mode in _weighting_modes():
        weights = FIXED[:2] if mode == "fixed" else None
        m = MSConLoss(2, 0.2, mode, weights, gather_distributed=True).double()
        with torch.no_grad():
            m.log_vars.copy_(data["log_vars2"])
        feats = data["mscon_features"][:, rows].clone().requires_grad_()
        loss = m(feats, data["mscon_labels"][rows])
        wrt = (feats, m.log_vars) if m.log_vars.requires_grad else (feats,)
        grad, *grad_s = torch.autograd.grad(loss, wrt)
        results[f"mscon_{mode}"] = {
            "value": loss.detach(),
            "grad": grad.transpose(0, 1),  # rows first
            "last_losses": m.last_losses,
            "last_valid": m.last_valid,
            **({"grad_log_vars": grad_s[0]} if grad_s else {}),
        }

        ce = MultiTaskCELoss([3, 2], mode, weights, gather_distributed=True).double()
        with torch.no_grad():
            ce.log_vars.copy_(data["log_vars2"])
        logits = [leaf(t) for t in data["logits"]]
        loss = ce(logits, data["ce_labels"][rows])
        wrt = (*logits, ce.log_vars) if ce.log_vars.requires_grad else tuple(logits)
        grads = torch.autograd.grad(loss, wrt)
        results[f"multitask_ce_{mode}"] = {
            "value": loss.detach(),
            "grad": torch.cat(grads[:2], 1),
            "last_losses": ce.last_losses,
            **({"grad_log_vars": grads[2]} if len(grads) > 2 else {}),
        }
    return results


METHOD_CASES = {  # name -> overrides of the demo config
    "simclr": {"method.name": "simclr"},
    "supcon": {"method.name": "supcon"},
    "mscon": {"method.name": "mscon"},
    "mscon_instance": {"method.name": "mscon", "method.instance_similarity": True},
    "mscon_consistency": {  # the bank takes every rank's rows: the same weights everywhere
        "method.name": "mscon",
        "method.weighting": "consistency",
        "method.consistency_bank": 6,
        "method.consistency_neighbours": 4,
        "method.consistency_every": 1,
    },
    "mscon_fmicl": {"method.name": "mscon", "method.base_loss": "fmicl"},
    "multitask_ce": {"method.name": "multitask_ce"},
    "fmicl": {"method.name": "fmicl"},
    "moco": {"method.name": "moco", "method.queue_size": 16, "method.bn_splits": 2},
    "sce": {"method.name": "sce", "method.queue_size": 16, "method.symmetric": True},
}


def method_steps(name: str, data: dict, rows: slice) -> dict:
    """Two optimiser steps of a training method (cnn_small_gn, float64) on ``data[rows]``.

    The method is built from the demo config as ``mscon train`` builds it and, inside a
    process group, wrapped by :func:`mscon.distributed.wrap_model`; ``after_step``
    runs between the steps (SCE/MoCo: the teacher moves, the queue takes the keys of
    every rank, which the second step contrasts with).
    """
    from mscon import distributed
    from mscon.config import load_config
    from mscon.train import build_model

    sets = {"model.backbone": "cnn_small_gn", "data.image_size": 8, "train.batch_size": 8}
    sets.update(METHOD_CASES[name])
    config = load_config("demo", [f"{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    method = build_model(config, NUM_CLASSES).double()
    model = distributed.wrap_model(method, torch.device("cpu"))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    out: dict = {"values": []}
    for step in (1, 2):
        views = data["views"][rows] * step  # a different batch at step 2
        loss = model(views, data["ce_sims"][rows], data["index"][rows])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            method.after_step(step, 10)
        out["values"].append(loss.detach())
    out["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return out


def rank_helpers() -> dict:
    """What mscon.distributed's rank helpers return on this rank (tests/test_distributed.py)."""
    from mscon import distributed
    from mscon.errors import RunError

    rows = distributed.shard_rows(7)
    calls: list[int] = []

    def fail() -> None:
        raise RunError(f"run: refused on rank {distributed.rank()}")

    try:
        distributed.run_on_main(fail)
        error = ""
    except RunError as e:
        error = str(e)
    return {
        "shard": (rows.start, rows.stop),
        "offset": distributed.row_offset(rows.stop - rows.start),
        "mean": float(distributed.mean_over_ranks(torch.tensor(float(distributed.rank())))),
        "on_main": distributed.run_on_main(lambda: calls.append(1) or distributed.rank()),
        "calls": len(calls),
        "error": error,
        "main": distributed.is_main_process(),
    }


def compute(data: dict, rows: slice) -> dict:
    from mscon import distributed

    assert distributed.world_size() == len(data["splits"]) - 1
    return {
        "embedding": embedding_cases(data, rows),
        "ddp": {name: ddp_step(name, data, rows) for name in DDP_CASES},
        "helpers": rank_helpers(),
        "methods": {name: method_steps(name, data, rows) for name in METHOD_CASES},
    }


if __name__ == "__main__":
    worker_main(compute)
