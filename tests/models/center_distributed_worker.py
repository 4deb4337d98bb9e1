"""One rank of the 2-process gloo check of RunningCenter in test_heads.py.

Usage: python center_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt
(a batch x and the row splits), centres this rank's rows twice and writes the running
mean to TMPDIR/rank{RANK}.pt.
"""

from __future__ import annotations

from rank_worker import worker_main


def compute(data: dict, rows: slice) -> dict:
    from mscon.models.heads import RunningCenter

    center = RunningCenter(data["x"].shape[1], momentum=0.5)
    outputs = [center(data["x"][rows]) for _ in range(2)]
    return {"center": center.center, "outputs": outputs}


if __name__ == "__main__":
    worker_main(compute)
