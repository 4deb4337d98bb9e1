"""SCELoss, the queue helper and cross-rank shuffled BN under a real 2-process gloo group.

Shards are uneven (5 and 3 images). Each rank returns its share of the SCE loss
times the world size: the mean over ranks is the single-process loss, and each
rank's gradient divided by the world size (DDP's averaging) is the
single-process gradient of its rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from losses.helpers import run_ranks
from mscon.losses import SCELoss
from mscon.models import MomentumQueue

WORKER = Path(__file__).with_name("sce_distributed_worker.py")
WORLD = 2
F64 = torch.float64

# name: (coeff, with_queue, with_ids)
CASES = {
    "batch": (0.5, False, False),
    "batch_ids": (0.5, False, True),
    "batch_moco": (1.0, False, False),
    "queue_ids": (0.5, True, True),
    "queue_relational": (0.0, True, False),
}


def make_inputs(gen: torch.Generator) -> dict:
    b, d = 8, 4
    return {
        "splits": [0, 5, b],
        "student": torch.randn(b, d, generator=gen, dtype=F64),
        "teacher": torch.randn(b, d, generator=gen, dtype=F64),
        # image 3 on both ranks (rows 1 and 6): masked across ranks in the batch case
        "index": torch.tensor([0, 3, 1, 2, 4, 5, 3, 6]),
        "queue": torch.randn(6, d, generator=gen, dtype=F64),
        "queue_index": torch.tensor([3, -1, 9, 5, 0, 11]),
        "cases": CASES,
        "queue_size": 10,
        "shuffle_seed": 7,
    }


def single_process(data: dict) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, (coeff, with_queue, with_ids) in CASES.items():
        x = data["student"].clone().requires_grad_()
        kw = {"index": data["index"]} if with_ids else {}
        queue = None
        if with_queue:
            queue = data["queue"]
            if with_ids:
                kw["queue_index"] = data["queue_index"]
        loss = SCELoss(0.1, 0.05, coeff)(x, data["teacher"], queue, **kw)
        out[name] = {"value": loss.detach(), "grad": torch.autograd.grad(loss, x)[0]}
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_matches_single_process(tmp_path):
    data = make_inputs(torch.Generator().manual_seed(1234))
    torch.save(data, tmp_path / "inputs.pt")
    ranks = run_ranks(WORKER, tmp_path, WORLD, timeout=120)
    splits = data["splits"]

    # the loss: mean over ranks and per-rank gradients / world size
    for name, ref in single_process(data).items():
        got = [r[name] for r in ranks]
        mean_value = sum(g["value"] for g in got) / WORLD
        torch.testing.assert_close(mean_value, ref["value"], rtol=1e-9, atol=1e-12, msg=name)
        for r, g in enumerate(got):
            rows = ref["grad"][splits[r] : splits[r + 1]]
            torch.testing.assert_close(g["grad"] / WORLD, rows, rtol=1e-9, atol=1e-12, msg=name)

    # the queue: gathered keys in rank order, identical on every rank (10 slots, 16 keys)
    want = MomentumQueue(data["queue_size"], 4, dtype=F64)
    want.enqueue(data["teacher"], data["index"])
    want.enqueue(2 * data["teacher"], data["index"] + 100)
    for r in ranks:
        for key, value in want.state_dict().items():
            assert torch.equal(r["queue"][key], value), key
    # by hand: the first 8 keys fill slots 0-7, the next 8 wrap: slots 8, 9, then 0-5
    assert ranks[1]["queue"]["queue_index"].tolist() == [
        101,
        102,
        104,
        105,
        103,
        106,
        3,
        6,
        100,
        103,
    ]
    assert int(ranks[1]["queue"]["ptr"]) == 6 and int(ranks[1]["queue"]["filled"]) == 10

    # cross-rank shuffled BN: each rank's rows normalised with a random shard's statistics
    teacher = data["teacher"]
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(data["shuffle_seed"]))
    expect = torch.empty_like(teacher)
    bn = nn.BatchNorm1d(4, affine=False, dtype=F64)
    with torch.no_grad():
        for r in range(WORLD):
            shard = perm[splits[r] : splits[r + 1]]
            expect[shard] = bn(teacher[shard])
    for r, res in enumerate(ranks):
        rows = slice(splits[r], splits[r + 1])
        torch.testing.assert_close(res["shuffled_bn"], expect[rows], rtol=1e-9, atol=1e-12)
        assert torch.equal(res["shuffled_identity"], teacher[rows])  # rows back in order
