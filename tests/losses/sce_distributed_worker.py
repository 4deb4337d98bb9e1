"""One rank of the 2-process gloo check in test_sce_distributed.py.

Usage: python sce_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes SCELoss on this rank's shard with gather_distributed=True, fills a
MomentumQueue from gather_keys, runs shuffled_forward_distributed, and writes
TMPDIR/rank{RANK}.pt.
"""

from __future__ import annotations

from rank_worker import worker_main


def compute(data: dict, rows: slice) -> dict:
    import torch
    from torch import nn

    from mscon.losses import SCELoss
    from mscon.models import MomentumQueue, gather_keys, shuffled_forward_distributed

    student, teacher, index = (data[k][rows] for k in ("student", "teacher", "index"))
    results: dict[str, object] = {}
    for name, (coeff, with_queue, with_ids) in data["cases"].items():
        x = student.clone().requires_grad_()
        kw = {"index": index} if with_ids else {}
        queue = None
        if with_queue:
            queue = data["queue"]
            if with_ids:
                kw["queue_index"] = data["queue_index"]
        loss = SCELoss(0.1, 0.05, coeff, gather_distributed=True)(x, teacher, queue, **kw)
        (grad,) = torch.autograd.grad(loss, x)
        results[name] = {"value": loss.detach(), "grad": grad}

    queue = MomentumQueue(data["queue_size"], teacher.shape[1], dtype=teacher.dtype)
    queue.enqueue(*gather_keys(teacher, index))
    queue.enqueue(*gather_keys(2 * teacher, index + 100))
    results["queue"] = queue.state_dict()

    bn = nn.BatchNorm1d(teacher.shape[1], affine=False).double()
    gen = torch.Generator().manual_seed(data["shuffle_seed"])
    with torch.no_grad():
        results["shuffled_bn"] = shuffled_forward_distributed(bn, teacher, gen)
        results["shuffled_identity"] = shuffled_forward_distributed(nn.Identity(), teacher, gen)
    return results


if __name__ == "__main__":
    worker_main(compute)
