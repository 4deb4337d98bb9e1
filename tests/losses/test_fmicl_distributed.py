"""FMICLLoss(gather_distributed=True) under a real 2-process gloo group equals one process.

Uneven shards (5 and 3 images), missing labels, supervised and not, float64. Each rank
returns its share times the world size: the mean over ranks is the single-process
loss, and each rank's gradient divided by the world size (DDP's averaging) is the
single-process gradient of its rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from losses.helpers import run_ranks
from mscon.losses import FMICLLoss

WORKER = Path(__file__).with_name("fmicl_distributed_worker.py")
WORLD = 2
NAMES = ("kl", "js", "pearson", "sq_hellinger", "tsallis", "vlc")


def make_cases(gen: torch.Generator) -> dict:
    b, d = 8, 4
    f64 = torch.float64
    labels = torch.tensor([0, 1, -1, 0, 5, 1, -1, 2])  # missing labels on both ranks
    cases = {}
    for i, name in enumerate(NAMES):
        kwargs = {"divergence": name, "alpha": 3.0 + i, "sigma": 0.9, "mu": 1.2}
        for supervised in (False, True):
            cases[f"{name}_{'sup' if supervised else 'unsup'}"] = {
                "features": torch.randn(b, 2, d, generator=gen, dtype=f64),
                "labels": labels if supervised else None,
                "kwargs": kwargs,
            }
    extra = {
        # rank 1 (images 5-7) has no labelled view: anchors of rank 0 only
        "rank1_unlabelled": (torch.tensor([0, 1, 0, 2, 1, -1, -1, -1]), {"divergence": "kl"}),
        "all_missing": (torch.full((b,), -1), {"divergence": "js"}),
        "one_class": (torch.tensor([3, 3, -1, 3, 3, 3, 3, -1]), {"divergence": "pearson"}),
        "three_views_chunked": (labels, {"divergence": "tsallis", "chunk_size": 2}),
        "unsup_chunked": (None, {"divergence": "vlc", "chunk_size": 3, "alpha": 0.5}),
    }
    for name, (y, kwargs) in extra.items():
        v = 3 if "three" in name else 2
        cases[name] = {
            "features": torch.randn(b, v, d, generator=gen, dtype=f64),
            "labels": y,
            "kwargs": kwargs,
        }
    return {"splits": [0, 5, b], "cases": cases}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_matches_single_process(tmp_path, gen):
    data = make_cases(gen)
    torch.save(data, tmp_path / "inputs.pt")
    ranks = run_ranks(WORKER, tmp_path, WORLD, timeout=180)
    splits = data["splits"]
    for name, case in data["cases"].items():
        x = case["features"].clone().requires_grad_()
        loss = FMICLLoss(**case["kwargs"])(x, case["labels"])
        (grad,) = torch.autograd.grad(loss, x)
        got = [r[name] for r in ranks]
        mean_value = sum(g["value"] for g in got) / WORLD
        torch.testing.assert_close(mean_value, loss.detach(), rtol=1e-10, atol=1e-10, msg=name)
        for r, g in enumerate(got):
            rows = grad[splits[r] : splits[r + 1]]
            torch.testing.assert_close(g["grad"] / WORLD, rows, rtol=1e-9, atol=1e-12, msg=name)
    assert float(ranks[0]["all_missing"]["value"]) == 0.0
    assert float(ranks[1]["rank1_unlabelled"]["grad"].abs().max()) == 0.0
