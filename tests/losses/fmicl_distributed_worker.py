"""One rank of the 2-process gloo check in test_fmicl_distributed.py.

Usage: python fmicl_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes every case's FMICLLoss on this rank's shard with gather_distributed=True and
writes TMPDIR/rank{RANK}.pt with the returned values and the gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(rank: int, world: int, tmp: Path) -> None:
    import torch
    import torch.distributed as dist

    from mscon import distributed
    from mscon.losses import FMICLLoss

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        lo, hi = data["splits"][rank], data["splits"][rank + 1]
        assert distributed.world_size() == world and distributed.rank() == rank
        results: dict[str, dict[str, torch.Tensor]] = {}
        for name, case in data["cases"].items():
            x = case["features"][lo:hi].clone().requires_grad_()
            labels = None if case["labels"] is None else case["labels"][lo:hi]
            loss_fn = FMICLLoss(**case["kwargs"], gather_distributed=True)
            loss = loss_fn(x, labels)
            (grad,) = torch.autograd.grad(loss, x)
            results[name] = {"value": loss.detach(), "grad": grad}
        torch.save(results, tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
