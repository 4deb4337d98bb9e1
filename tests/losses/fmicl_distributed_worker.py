"""One rank of the 2-process gloo check in test_fmicl_distributed.py.

Usage: python fmicl_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes every case's FMICLLoss on this rank's shard with gather_distributed=True and
writes TMPDIR/rank{RANK}.pt with the returned values and the gradients.
"""

from __future__ import annotations

from rank_worker import worker_main


def compute(data: dict, rows: slice) -> dict:
    import torch

    from mscon.losses import FMICLLoss

    results: dict[str, dict[str, torch.Tensor]] = {}
    for name, case in data["cases"].items():
        x = case["features"][rows].clone().requires_grad_()
        labels = None if case["labels"] is None else case["labels"][rows]
        loss = FMICLLoss(**case["kwargs"], gather_distributed=True)(x, labels)
        (grad,) = torch.autograd.grad(loss, x)
        results[name] = {"value": loss.detach(), "grad": grad}
    return results


if __name__ == "__main__":
    worker_main(compute)
