"""Loss speed and memory against the peer libraries, and a training-step table, in one run.

Each case runs in a fresh subprocess (so its peak resident memory is its own):
it imports what it needs, builds its inputs, runs one warm-up step and then
``--repeats`` timed steps, and reports the median time, the peak resident set of
the process (ru_maxrss) and its growth over the post-import baseline.

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

    python benchmarks/bench_losses.py [--n 4096] [--repeats 5] [--json OUT.json]
    python benchmarks/bench_losses.py --n 32768 --cases mscon_C3 --repeats 1
    python benchmarks/bench_losses.py --train-step [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def measure(case: str, n: int, repeats: int) -> dict[str, float]:
    """Run in this process: median seconds, peak RSS and its growth in MB (imports excluded)."""
    import torch

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


def run_case(case: str, n: int, repeats: int) -> dict:
    """``case`` in a fresh subprocess; its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", case, str(n), "--repeats", str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"case": case, "n": n, **json.loads(out.stdout.strip().splitlines()[-1])}


def table(rows: list[dict], repeats: int) -> str:
    """Markdown table with the ratio of each case to the one it is compared with."""
    by_key = {(r["case"], r["n"]): r for r in rows}
    lines = [
        f"median of {repeats}; memory: peak RSS of the process (growth over the post-import "
        "baseline)",
        "| case | N | time (ms) | peak RSS (MB) | growth (MB) | ours | ours / this: time "
        "| ours / this: growth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = PAIRS.get(r["case"])
        other = by_key.get((ref, r["n"])) if ref else None
        time_ratio = growth_ratio = ""
        if other:
            time_ratio = f"{other['seconds'] / r['seconds']:.2f}x"
            growth_ratio = f"{other['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x"
        lines.append(
            f"| {r['case']} | {r['n']} | {1000 * r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['peak_mb']:,.0f} | {ref or ''} | {time_ratio} | {growth_ratio} |"
        )
    lines.append("ours / this: the 'ours' row's time (memory growth) over this row's; < 1 means")
    lines.append("ours is faster (smaller).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=None, choices=LOSS_CASES + STEP_CASES)
    parser.add_argument("--train-step", action="store_true", help="the training-step cases")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    cases = args.cases or list(STEP_CASES if args.train_step else LOSS_CASES)
    sizes = [STEP_IMAGES] if args.train_step else args.n
    load_before = os.getloadavg()[0]
    rows, skipped = [], []
    for n in sizes:
        for case in cases:
            if case == "pml_ntxent" and n > PML_NTXENT_MAX_N:
                skipped.append(
                    f"pml_ntxent at N = {n}: about 4 N^3 bytes ({4 * n**3 / 2**30:,.0f} GiB)"
                )
                continue
            rows.append(run_case(case, n, args.repeats))
    load_after = os.getloadavg()[0]
    print(
        f"1-min load average {load_before:.2f} before, {load_after:.2f} after; {platform.machine()}"
    )
    print(table(rows, args.repeats))
    for note in skipped:
        print(f"not run: {note}")
    for r in rows:
        if "images_per_s" in r:
            print(f"{r['case']}: {r['images_per_s']:.1f} images/s")
    if args.json:
        with open(args.json, "w") as handle:
            load = {"before": load_before, "after": load_after}
            json.dump({"load_average": load, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
