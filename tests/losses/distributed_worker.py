"""One rank of the 2-process gloo check in test_distributed.py.

Usage: python distributed_worker.py RANK WORLD_SIZE TMPDIR. Reads TMPDIR/inputs.pt,
computes every loss on this rank's shard with gather_distributed=True, writes
TMPDIR/rank{RANK}.pt with the returned values and the gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(rank: int, world: int, tmp: Path) -> None:
    import torch
    import torch.distributed as dist

    from mscon import distributed
    from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        data = torch.load(tmp / "inputs.pt")
        lo, hi = data["splits"][rank], data["splits"][rank + 1]
        results: dict[str, dict[str, torch.Tensor]] = {}
        assert distributed.world_size() == world and distributed.rank() == rank

        def leaf(t: torch.Tensor) -> torch.Tensor:
            return t[lo:hi].clone().requires_grad_()

        x = leaf(data["features"])
        for name, kwargs in (
            ("supcon_labels", {"labels": data["labels"][lo:hi]}),
            ("supcon_simclr", {}),
            ("supcon_mask", {"mask": data["mask"][lo:hi]}),
            ("supcon_in", {"labels": data["labels"][lo:hi]}),
        ):
            form = "in" if name == "supcon_in" else "out"
            loss = SupConLoss(0.2, form=form, gather_distributed=True)(x, **kwargs)
            (grad,) = torch.autograd.grad(loss, x)
            results[name] = {"value": loss.detach(), "grad": grad}

        z0, z1 = leaf(data["features"][:, 0]), leaf(data["features"][:, 1])
        loss = NTXentLoss(0.3, gather_distributed=True)(z0, z1)
        g0, g1 = torch.autograd.grad(loss, (z0, z1))
        results["ntxent"] = {"value": loss.detach(), "grad": torch.stack([g0, g1], 1)}

        for mode in ("uncertainty", "temperature"):
            m = MSConLoss(2, temperature=0.2, weighting=mode, gather_distributed=True).double()
            with torch.no_grad():
                m.log_vars.copy_(data["log_vars"])
            feats = data["mscon_features"][:, lo:hi].clone().requires_grad_()
            loss = m(feats, data["mscon_labels"][lo:hi])
            grad, grad_s = torch.autograd.grad(loss, (feats, m.log_vars))
            results[f"mscon_{mode}"] = {
                "value": loss.detach(),
                "grad": grad,
                "grad_log_vars": grad_s,
                "last_losses": m.last_losses,
                "last_valid": m.last_valid,
            }

        ce = MultiTaskCELoss([3, 2], gather_distributed=True).double()
        with torch.no_grad():
            ce.log_vars.copy_(data["log_vars"])
        logits = [leaf(t) for t in data["logits"]]
        loss = ce(logits, data["ce_labels"][lo:hi])
        *grads, grad_s = torch.autograd.grad(loss, (*logits, ce.log_vars))
        results["multitask_ce"] = {
            "value": loss.detach(),
            "grad": torch.cat(grads, 1),
            "grad_log_vars": grad_s,
            "last_losses": ce.last_losses,
        }
        torch.save(results, tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
