"""f-MICL speed and memory against NT-Xent at the same N, in one run.

Each case runs forward + backward of one loss on random embeddings (B images,
two views, d = 128) in a fresh subprocess (so its peak resident memory is its
own), repeats, and reports the median time and the peak memory above the
process's baseline. Cases: NTXentLoss, FMICLLoss for every divergence (SimCLR
positives), and FMICLLoss("kl") with 10 classes of labels (supervised).

    python benchmarks/bench_fmicl.py [--n 4096] [--repeats 7] [--json OUT.json]

Target (docs/performance.md): at most 1.5x NT-Xent's time for KL, 3x for the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections.abc import Callable

from timing import time_step

DIVERGENCES = ("kl", "js", "pearson", "sq_hellinger", "tsallis", "vlc")
CASES = ("ntxent", *(f"fmicl_{name}" for name in DIVERGENCES), "fmicl_kl_supervised")
DIM, CLASSES = 128, 10


def build(case: str, n: int, chunk_size: int | None) -> Callable[[], None]:
    """A closure running one forward + backward of ``case`` on N = n embeddings."""
    import torch

    from mscon.losses import FMICLLoss, NTXentLoss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(n // 2, 2, DIM, generator=g).requires_grad_()
    if case == "ntxent":
        ntxent = NTXentLoss(temperature=0.5)
        return lambda: ntxent(z[:, 0], z[:, 1]).backward()
    name = case.removeprefix("fmicl_").removesuffix("_supervised")
    loss_fn = FMICLLoss(name, chunk_size=chunk_size)
    labels = torch.randint(0, CLASSES, (n // 2,), generator=g)
    if case.endswith("_supervised"):
        return lambda: loss_fn(z, labels).backward()
    return lambda: loss_fn(z).backward()


def measure(case: str, n: int, repeats: int, chunk_size: int | None) -> dict[str, float]:
    """Run in this process: median seconds and peak RSS growth in MB (imports excluded)."""
    import torch  # noqa: F401  (imported before the baseline)

    import mscon.losses  # noqa: F401

    return time_step(lambda: build(case, n, chunk_size), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--chunk-size", type=int, default=None, help="FMICLLoss chunk_size")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.repeats, args.chunk_size)
        print(json.dumps(result))
        return
    rows = []
    for n in args.n:
        for case in args.cases:
            command = [sys.executable, __file__, "--one", case, str(n)]
            command += ["--repeats", str(args.repeats)]
            if args.chunk_size:
                command += ["--chunk-size", str(args.chunk_size)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append({"case": case, "n": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    by_key = {(r["case"], r["n"]): r for r in rows}
    print(f"forward + backward, N embeddings (B = N/2 images x 2 views), d = {DIM}, ")
    print(f"median of {args.repeats}; chunk_size = {args.chunk_size or 'auto'}")
    print("| case | N | time (ms) | peak memory (MB) | time / NT-Xent | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = by_key.get(("ntxent", r["n"]))
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else ""
        target = "" if r["case"] == "ntxent" else ("1.5x" if r["case"] == "fmicl_kl" else "3x")
        if r["case"].endswith("_supervised"):
            target = ""
        r["ratio_to_ntxent"] = r["seconds"] / base["seconds"] if base else None
        print(
            f"| {r['case']} | {r['n']} | {1000 * r['seconds']:.0f} | {r['peak_mb']:.0f} "
            f"| {ratio} | {target} |"
        )
    if args.json:
        import torch

        meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        meta["machine"] = platform.machine()
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
