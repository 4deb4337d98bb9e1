"""Loss speed and memory against the peer libraries, in one run.

Each case runs forward + backward on random normalised embeddings in a fresh
subprocess (so its peak resident memory is its own), repeats, and reports the
median time and the peak memory above the process's baseline. Peers:
pytorch-metric-learning's SupConLoss (one call per similarity for MSCon) and
lightly's NTXentLoss.

    python benchmarks/bench_losses.py [--n 1024 4096] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

from timing import time_step

CASES = ("mscon_C3", "pml_supcon_x3", "supcon", "pml_supcon", "ntxent", "lightly_ntxent")
DIM, CLASSES, SIMILARITIES = 128, 10, 3


def _inputs(n: int, c: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(c, n // 2, 2, DIM, generator=g).requires_grad_()
    labels = torch.randint(0, CLASSES, (n // 2, c), generator=g)
    return z, labels


def build(case: str, n: int) -> Callable[[], None]:
    """A closure running one forward + backward of ``case`` on N = n embeddings."""
    from mscon.losses import MSConLoss, NTXentLoss, SupConLoss

    c = SIMILARITIES if case.endswith("x3") or case.startswith("mscon") else 1
    z, labels = _inputs(n, c)
    if case == "mscon_C3":
        loss_fn = MSConLoss(c, temperature=0.1)
        return lambda: loss_fn(z, labels).backward()
    if case == "supcon":
        loss_fn = SupConLoss(temperature=0.1)
        return lambda: loss_fn(z[0], labels[:, 0]).backward()
    if case == "ntxent":
        loss_fn = NTXentLoss(temperature=0.5)
        return lambda: loss_fn(z[0, :, 0], z[0, :, 1]).backward()
    if case == "lightly_ntxent":
        from lightly.loss import NTXentLoss as LightlyNTXent

        peer = LightlyNTXent(temperature=0.5)
        return lambda: peer(z[0, :, 0], z[0, :, 1]).backward()
    from pytorch_metric_learning.losses import SupConLoss as PMLSupCon

    peer = PMLSupCon(temperature=0.1)
    flat_labels = labels.repeat_interleave(2, dim=0)

    def pml() -> None:
        total = sum(peer(z[i].flatten(0, 1), flat_labels[:, i]) for i in range(c))
        total.backward()

    return pml


def measure(case: str, n: int, repeats: int) -> dict[str, float]:
    """Run in this process: median seconds and peak RSS growth in MB."""
    return time_step(lambda: build(case, n), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    rows = []
    for n in args.n:
        for case in args.cases:
            out = subprocess.run(
                [sys.executable, __file__, "--one", case, str(n), "--repeats", str(args.repeats)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"case": case, "n": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    ours = {"pml_supcon_x3": "mscon_C3", "pml_supcon": "supcon", "lightly_ntxent": "ntxent"}
    by_key = {(r["case"], r["n"]): r for r in rows}
    print(f"forward + backward, d = {DIM}, {CLASSES} classes, median of {args.repeats}")
    print("| case | N | time (ms) | peak memory (MB) | peer time / ours |")
    print("|---|---|---|---|---|")
    for r in rows:
        mine = by_key.get((ours.get(r["case"], ""), r["n"]))
        ratio = f"{r['seconds'] / mine['seconds']:.2f}x" if mine else ""
        print(
            f"| {r['case']} | {r['n']} | {1000 * r['seconds']:.0f} | {r['peak_mb']:.0f} | {ratio} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
