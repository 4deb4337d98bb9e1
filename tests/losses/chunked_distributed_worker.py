"""One rank of the 2-process gloo check in test_chunked.py.

Usage: python chunked_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes SupCon per-anchor losses on this rank's shard with gather_distributed=True,
chunks of 3 anchor rows and a learned temperature, writes TMPDIR/rank{RANK}.pt with the
returned values and the gradients (features and temperature).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(rank: int, world: int, tmp: Path) -> None:
    import torch
    import torch.distributed as dist

    from mscon.losses.functional import supcon_per_anchor, valid_means

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        lo, hi = data["splits"][rank], data["splits"][rank + 1]
        results = {}
        for name, kwargs in (
            ("labels", {"labels": data["labels"][lo:hi]}),
            ("simclr", {}),
            ("mask", {"mask": data["mask"][lo:hi]}),
        ):
            x = data["features"][lo:hi].clone().requires_grad_()
            tau = torch.tensor(data["tau"], dtype=torch.float64, requires_grad=True)
            out = supcon_per_anchor(
                x, temperature=tau, gather_distributed=True, chunk_size=3, **kwargs
            )
            loss = valid_means([out], gather_distributed=True)[0][0]
            grad, grad_tau = torch.autograd.grad(loss, (x, tau))
            results[name] = {"value": loss.detach(), "grad": grad, "grad_tau": grad_tau}
        torch.save(results, tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
