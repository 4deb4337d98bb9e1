"""One rank of the 2-process gloo check in test_chunked.py.

Usage: python chunked_distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes SupCon per-anchor losses on this rank's shard with gather_distributed=True,
chunks of 3 anchor rows and a learned temperature, writes TMPDIR/rank{RANK}.pt with the
returned values and the gradients (features and temperature).
"""

from __future__ import annotations

from rank_worker import worker_main


def compute(data: dict, rows: slice) -> dict:
    import torch

    from mscon.losses.functional import supcon_per_anchor, valid_means

    results = {}
    for name, kwargs in (
        ("labels", {"labels": data["labels"][rows]}),
        ("simclr", {}),
        ("mask", {"mask": data["mask"][rows]}),
    ):
        x = data["features"][rows].clone().requires_grad_()
        tau = torch.tensor(data["tau"], dtype=torch.float64, requires_grad=True)
        out = supcon_per_anchor(x, temperature=tau, gather_distributed=True, chunk_size=3, **kwargs)
        loss = valid_means([out], gather_distributed=True)[0][0]
        grad, grad_tau = torch.autograd.grad(loss, (x, tau))
        results[name] = {"value": loss.detach(), "grad": grad, "grad_tau": grad_tau}
    return results


if __name__ == "__main__":
    worker_main(compute)
