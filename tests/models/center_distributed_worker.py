"""One rank of the 2-process gloo check of RunningCenter in test_heads.py.

Usage: python center_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt
(a batch x and the row splits), centres this rank's rows twice and writes the running
mean to TMPDIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(rank: int, world: int, tmp: Path) -> None:
    import torch
    import torch.distributed as dist

    from mscon.models.heads import RunningCenter

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        lo, hi = data["splits"][rank], data["splits"][rank + 1]
        center = RunningCenter(data["x"].shape[1], momentum=0.5)
        outputs = [center(data["x"][lo:hi]) for _ in range(2)]
        torch.save({"center": center.center, "outputs": outputs}, tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
