"""The common part of the scripts that ``losses.helpers.run_ranks`` starts, one per rank.

A worker script calls :func:`worker_main` with a function of ``(data, rows)``: the
inputs the test saved as TMPDIR/inputs.pt and this rank's slice of their rows
(``data["splits"]`` holds the shard boundaries). What it returns is saved as
TMPDIR/rank{R}.pt for the test to compare with one process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def worker_main(compute: Callable[[dict[str, Any], slice], Any]) -> None:
    """Run as ``python WORKER RANK WORLD_SIZE TMPDIR``: join the gloo group, compute, save."""
    import torch
    import torch.distributed as dist

    rank, world, tmp = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        rows = slice(data["splits"][rank], data["splits"][rank + 1])
        torch.save(compute(data, rows), tmp / f"rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()
    # The result is saved and the group gone; skip the interpreter's teardown, where
    # gloo's background threads sometimes abort the process ("terminate called without
    # an active exception", seen in fresh-clone CI runs) after all the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
