"""Loss speed and memory against the peer libraries, and a training-step table, in one run.

Each case runs in a fresh subprocess (so its peak resident memory is its own):
it imports what it needs, builds its inputs, runs one warm-up step and then
``--repeats`` timed steps, and reports the median time, the peak resident set of
the process (ru_maxrss) and its growth over the post-import baseline.

The cases run in ``--rounds`` interleaved rounds (A, B, C, A, B, C, ...; each round
starts one case later, so no case always runs first): on a shared machine the load
drifts over minutes, and cases compared within one round saw about the same load.
The table gives each case's median over the rounds, and for each pair the median
of the per-round time ratios (with their range). The 1-minute load average is
printed per round.

Loss cases (forward + backward on random embeddings, B = N/2 images x 2 views,
d = 128, 10 classes):

* ``mscon_C3``: MSConLoss with C = 3 similarities; ``pml_supcon_x3``:
  pytorch-metric-learning's SupConLoss called once per similarity (summed);
  ``floor_C3``: the floor of DESIGN.md's performance notes, per similarity one
  (N x N) logits matmul, one in-place exp and the E @ [Z, Z] product, no autograd;
* ``supcon`` / ``pml_supcon``: one similarity;
* ``ntxent`` / ``lightly_ntxent`` / ``pml_ntxent``: NT-Xent of the two views
  (``pml_ntxent`` holds N^3 floats, so it runs only up to N = 512).

Training-step cases (``--train-step``: torchvision ResNet-18 with the standard
stem, 64 px, 256 images x 2 views, C = 3, SGD step): ``backbone``, the bare
encoder's forward and backward (of the mean feature) and optimiser step, and
``mscon_step``, the MSCon method's (encoder, 3 projection heads, MSConLoss).

    python benchmarks/bench_losses.py [--n 4096] [--rounds 5] [--repeats 1] [--json OUT.json]
    python benchmarks/bench_losses.py --n 32768 --cases mscon_C3 --rounds 1
    python benchmarks/bench_losses.py --train-step [--rounds 5] [--threads 1]

``--threads 1`` runs every case's process on one intra-op thread: on a shared,
loaded machine each parallel operation otherwise waits for a descheduled thread
(milliseconds per operation), which dominates small operations.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable

from timing import time_step

LOSS_CASES = (
    "mscon_C3",
    "pml_supcon_x3",
    "floor_C3",
    "supcon",
    "pml_supcon",
    "ntxent",
    "lightly_ntxent",
    "pml_ntxent",
)
STEP_CASES = ("backbone", "mscon_step")
DIM, CLASSES, SIMILARITIES, TEMPERATURE = 128, 10, 3, 0.1
STEP_IMAGES, STEP_VIEWS, STEP_PIXELS = 256, 2, 64
# pytorch-metric-learning's NTXentLoss builds a (positive pairs x negative pairs) mask:
# N^3 elements (17 GB at N = 1,024), so it is only run up to this N
PML_NTXENT_MAX_N = 512
# the reference each case is compared with: (ours, peer)
PAIRS = {
    "pml_supcon_x3": "mscon_C3",
    "floor_C3": "mscon_C3",
    "pml_supcon": "supcon",
    "lightly_ntxent": "ntxent",
    "pml_ntxent": "ntxent",
    "mscon_step": "backbone",
}


def _inputs(n: int, c: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(c, n // 2, 2, DIM, generator=g).requires_grad_()
    labels = torch.randint(0, CLASSES, (n // 2, c), generator=g)
    return z, labels


def _floor(z) -> Callable[[], None]:
    """One logits matmul, one exp pass and one E @ [Z, Z] product per similarity."""
    import torch

    flat = torch.nn.functional.normalize(z.detach().flatten(1, 2), dim=-1)  # (C, N, d)
    both = torch.cat([flat, flat], dim=2)

    def step() -> None:
        for zc, bc in zip(flat, both, strict=True):
            block = torch.addmm(torch.ones(1, 1), zc, zc.T, beta=-10.0, alpha=10.0).exp_()
            block.sum(1)
            block @ bc

    return step


def build_loss(case: str, n: int) -> Callable[[], None]:
    """A closure running one forward + backward of loss ``case`` on N = n embeddings."""
    from mscon.losses import MSConLoss, NTXentLoss, SupConLoss

    c = SIMILARITIES if case.endswith("C3") or case.endswith("x3") else 1
    z, labels = _inputs(n, c)
    if case == "floor_C3":
        return _floor(z)
    if case == "mscon_C3":
        loss_fn = MSConLoss(c, temperature=TEMPERATURE)
        return lambda: loss_fn(z, labels).backward()
    if case == "supcon":
        loss_fn = SupConLoss(temperature=TEMPERATURE)
        return lambda: loss_fn(z[0], labels[:, 0]).backward()
    if case == "ntxent":
        loss_fn = NTXentLoss(temperature=0.5)
        return lambda: loss_fn(z[0, :, 0], z[0, :, 1]).backward()
    if case == "lightly_ntxent":
        from lightly.loss import NTXentLoss as LightlyNTXent

        peer = LightlyNTXent(temperature=0.5)
        return lambda: peer(z[0, :, 0], z[0, :, 1]).backward()
    if case == "pml_ntxent":
        import torch
        from pytorch_metric_learning.losses import NTXentLoss as PMLNTXent

        peer = PMLNTXent(temperature=0.5)
        pair = torch.arange(n // 2).repeat(2)
        return lambda: peer(torch.cat([z[0, :, 0], z[0, :, 1]]), pair).backward()
    from pytorch_metric_learning.losses import SupConLoss as PMLSupCon

    peer = PMLSupCon(temperature=TEMPERATURE)
    flat_labels = labels.repeat_interleave(2, dim=0)

    def pml() -> None:
        total = sum(peer(z[i].flatten(0, 1), flat_labels[:, i]) for i in range(c))
        total.backward()

    return pml


def build_step(case: str) -> Callable[[], None]:
    """A closure running one training step of ``case`` (ResNet-18, 256 images x 2 views)."""
    import torch

    from mscon.methods.mscon import MSCon
    from mscon.models.backbones import build_backbone

    g = torch.Generator().manual_seed(0)
    encoder, dim = build_backbone("resnet18")
    views = torch.randn(STEP_IMAGES, STEP_VIEWS, 3, STEP_PIXELS, STEP_PIXELS, generator=g)
    labels = torch.randint(0, CLASSES, (STEP_IMAGES, SIMILARITIES), generator=g)
    if case == "backbone":
        model = encoder

        def loss() -> torch.Tensor:
            return encoder(views.flatten(0, 1)).mean()
    else:
        model = MSCon(encoder, dim, ["a", "b", "c"], temperature=TEMPERATURE)

        def loss() -> torch.Tensor:
            return model(views, labels)["loss"]

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return step


def measure(case: str, n: int, repeats: int, threads: int | None = None) -> dict[str, float]:
    """Run in this process: median seconds, peak RSS and its growth in MB (imports excluded).

    ``threads``: torch's intra-op threads for this process (None: torch's default).
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    import mscon.losses  # noqa: F401
    import mscon.methods  # noqa: F401

    if case.startswith("lightly"):
        import lightly.loss  # noqa: F401
    if case.startswith("pml"):
        import pytorch_metric_learning.losses  # noqa: F401
    if case in STEP_CASES:
        torch.manual_seed(0)
        result = time_step(lambda: build_step(case), repeats)
        result["images_per_s"] = STEP_IMAGES / result["seconds"]
    else:
        result = time_step(lambda: build_loss(case, n), repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_case(case: str, n: int, repeats: int, threads: int | None = None) -> dict:
    """``case`` in a fresh subprocess (importing the same mscon as this one); its JSON."""
    import mscon

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mscon.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, __file__, "--one", case, str(n), "--repeats", str(repeats)]
    if threads is not None:
        command += ["--threads", str(threads)]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    return {"case": case, "n": n, **json.loads(out.stdout.strip().splitlines()[-1])}


def run_rounds(
    cases: list[str], n: int, repeats: int, rounds: int, run=run_case
) -> tuple[dict[str, list[dict]], list[float]]:
    """Every case once per round, the order rotated by one each round.

    Returns:
        ``(results, loads)``: each case's per-round results (in round order) and the
        1-minute load average at the start of each round.
    """
    results: dict[str, list[dict]] = {case: [] for case in cases}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            results[case].append(run(case, n, repeats))
    return results, loads


def summarize(results: dict[str, list[dict]], n: int) -> list[dict]:
    """One row per case: medians over the rounds, and the per-round ratios to its pair.

    ``time_ratio`` is the median over rounds of (the paired "ours" case's time / this
    case's time) within the same round, with ``time_ratio_range`` (min, max);
    ``growth_ratio`` compares the largest memory growths. Memory is the largest over
    the rounds (it does not depend on the load).
    """
    rows = []
    for case, runs in results.items():
        row = {
            "case": case,
            "n": n,
            "rounds": len(runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_mb": max(r["peak_mb"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
        if "images_per_s" in runs[0]:
            row["images_per_s"] = statistics.median(r["images_per_s"] for r in runs)
        ref = PAIRS.get(case)
        if ref in results:
            ours = results[ref]
            ratios = [o["seconds"] / t["seconds"] for o, t in zip(ours, runs, strict=True)]
            row["ours"] = ref
            row["time_ratio"] = statistics.median(ratios)
            row["time_ratio_range"] = (min(ratios), max(ratios))
            row["growth_ratio"] = max(o["peak_mb"] for o in ours) / max(row["peak_mb"], 1e-9)
        rows.append(row)
    return rows


def table(rows: list[dict], repeats: int) -> str:
    """Markdown table with the ratio of each case to the one it is compared with."""
    rounds = max(r["rounds"] for r in rows)
    lines = [
        f"{rounds} interleaved rounds, each a fresh process per case with 1 warm-up and "
        f"{repeats} timed step(s); time: median over the rounds; ratio: median of the "
        "per-round ratios [range]; memory: the largest peak RSS of the process (growth "
        "over the post-import baseline)",
        "| case | N | time (ms) | peak RSS (MB) | growth (MB) | ours | ours / this: time "
        "| ours / this: growth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        time_ratio = growth_ratio = ""
        if "time_ratio" in r:
            low, high = r["time_ratio_range"]
            time_ratio = f"{r['time_ratio']:.2f}x [{low:.2f}-{high:.2f}]"
            growth_ratio = f"{r['growth_ratio']:.2f}x"
        lines.append(
            f"| {r['case']} | {r['n']} | {1000 * r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['peak_mb']:,.0f} | {r.get('ours', '')} | {time_ratio} | {growth_ratio} |"
        )
    lines.append("ours / this: the 'ours' row's time (memory growth) over this row's; < 1 means")
    lines.append("ours is faster (smaller).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of all cases")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per process")
    parser.add_argument("--cases", nargs="+", default=None, choices=LOSS_CASES + STEP_CASES)
    parser.add_argument("--train-step", action="store_true", help="the training-step cases")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in every case's process (default: torch's own choice)",
    )
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats, args.threads)))
        return
    cases = args.cases or list(STEP_CASES if args.train_step else LOSS_CASES)
    sizes = [STEP_IMAGES] if args.train_step else args.n
    rows, skipped, loads, raw = [], [], [], {}
    for n in sizes:
        todo = [c for c in cases if not (c == "pml_ntxent" and n > PML_NTXENT_MAX_N)]
        if len(todo) < len(cases):
            skipped.append(
                f"pml_ntxent at N = {n}: about 4 N^3 bytes ({4 * n**3 / 2**30:,.0f} GiB)"
            )
        run = functools.partial(run_case, threads=args.threads)
        results, round_loads = run_rounds(todo, n, args.repeats, args.rounds, run=run)
        rows += summarize(results, n)
        loads += round_loads
        raw[str(n)] = results
    loads.append(os.getloadavg()[0])
    threads = "torch's default" if args.threads is None else args.threads
    print(
        f"1-min load average at the start of each round and at the end: "
        f"{', '.join(f'{x:.2f}' for x in loads)} (on {os.cpu_count()} cores); "
        f"{platform.machine()}; intra-op threads: {threads}"
    )
    print(table(rows, args.repeats))
    for note in skipped:
        print(f"not run: {note}")
    for r in rows:
        if "images_per_s" in r:
            print(f"{r['case']}: {r['images_per_s']:.1f} images/s (median over the rounds)")
    if args.json:
        with open(args.json, "w") as handle:
            record = {"load_average": loads, "threads": args.threads, "rows": rows, "rounds": raw}
            json.dump(record, handle, indent=1)


if __name__ == "__main__":
    main()
