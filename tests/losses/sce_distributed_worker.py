"""One rank of the 2-process gloo check in test_sce_distributed.py.

Usage: python sce_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes SCELoss on this rank's shard with gather_distributed=True, fills a
MomentumQueue from gather_keys, runs shuffled_forward_distributed, and writes
TMPDIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(rank: int, world: int, tmp: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from mscon import distributed
    from mscon.losses import SCELoss
    from mscon.models import MomentumQueue, gather_keys, shuffled_forward_distributed

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        lo, hi = data["splits"][rank], data["splits"][rank + 1]
        assert distributed.world_size() == world and distributed.rank() == rank
        student, teacher, index = (data[k][lo:hi] for k in ("student", "teacher", "index"))
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
        torch.save(results, tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
