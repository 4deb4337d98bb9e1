"""Batch size as a knob: MSCon and SupCon from 64 to 4,096 images per batch (issue 13).

The MSCon paper's open question 2: does MSCon gain from more negatives as SupCon
does? Every point trains the shipped ``synthetic`` suite (small CNN; training
similarities shape_color, color, size; out-of-domain task pattern) on the
embedded dataset with ``--size`` images (default 29,300: a train split of
20,510, so the largest batch is at most a fifth of it) for exactly ``--steps``
optimiser steps (``train.max_steps``; default 100) with the learning rate scaled
linearly with the batch, ``0.05 * B / 128``, a linear warm-up of
``--warmup-steps`` (default 10) and cosine decay, then evaluates it (linear probe
and kNN, ``mscon.evaluate``). Finished points (an ``eval.json``) are skipped, so
an interrupted sweep resumes; ``--only-finished`` trains nothing.

Writes OUT/sweep.json (every point's results and wall time), OUT/sweep.md (mean ±
std over seeds per method and batch) and the figure ``--figure`` (default
OUT/batch_size_sweep.png).

    python benchmarks/batch_size_sweep.py --out runs/batch_sweep \\
        [--batches 64 128 256 512 1024 2048 4096] [--methods mscon supcon] [--seeds 0 1] \\
        [--figure docs/figures/batch_size_sweep.png] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from method_grid import mean_std, run_one  # noqa: E402

BATCHES = (64, 128, 256, 512, 1024, 2048, 4096)
METHODS = ("mscon", "supcon")
BASE_LR, BASE_BATCH = 0.05, 128
OUT_OF_DOMAIN = "pattern"


def label(method: str, batch: int) -> str:
    return f"{method}_b{batch:04d}"


def point_overrides(
    method: str, batch: int, steps: int, warmup_steps: int, train_size: int
) -> list[str]:
    """Config overrides of one point: the batch, its scaled lr, the step count, the warm-up."""
    steps_per_epoch = train_size // batch
    return [
        f"method.name={method}",
        f"train.batch_size={batch}",
        f"train.lr={BASE_LR * batch / BASE_BATCH:g}",
        f"train.max_steps={steps}",
        f"train.warmup_epochs={warmup_steps / steps_per_epoch!r}",
        "train.checkpoint_every=0",
    ]


def train_split_size(base: str, common: list[str]) -> int:
    """Images in the train split of ``base`` with the ``common`` overrides."""
    from mscon.config import load_config
    from mscon.data import load_experiment_data

    config = load_config(base, common)
    return len(load_experiment_data(config.data, config.seed).select("train"))


def run_point(base: str, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one point unless it has finished; its eval.json plus wall time."""
    timing = run_dir / "sweep_seconds.json"
    start = time.perf_counter()
    result = run_one(base, overrides, run_dir)
    if not timing.is_file() and (run_dir / "eval.json").is_file():
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    if timing.is_file():
        result["seconds"] = json.loads(timing.read_text())["seconds"]
    return result


def similarities_mean(result: dict[str, Any]) -> float:
    """Mean linear top-1 over the training similarities' columns, for every method alike
    (SupCon trains on the first only; its other columns are out-of-domain for it)."""
    values = [t["linear_top1"] for name, t in result["tasks"].items() if name != OUT_OF_DOMAIN]
    return statistics.mean(values)


def summarise(points: list[dict[str, Any]]) -> str:
    """Markdown: one row per (method, batch), mean ± std over seeds."""
    lines = [
        "| method | batch | lr | similarities' linear top-1 (mean of the columns) | "
        f"{OUT_OF_DOMAIN} linear top-1 | {OUT_OF_DOMAIN} kNN top-1 | minutes per run | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        runs = [r for r in p["runs"] if r["tasks"]]
        if not runs:
            lines.append(
                f"| {p['method']} | {p['batch']} | {p['lr']:g} | diverged | – | – | – | 0 |"
            )
            continue
        inside = [similarities_mean(r) for r in runs]
        ood = [r["tasks"][OUT_OF_DOMAIN] for r in runs]
        minutes = [r["seconds"] / 60 for r in runs if "seconds" in r]
        cells = [
            mean_std(inside),
            mean_std([t["linear_top1"] for t in ood]),
            mean_std([t["knn_top1"] for t in ood]),
            f"{statistics.mean(minutes):.1f}" if minutes else "–",
        ]
        lines.append(
            f"| {p['method']} | {p['batch']} | {p['lr']:g} | {' | '.join(cells)} | {len(runs)} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path) -> None:
    """Linear top-1 against the batch size (log scale), in-domain and out-of-domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    titles = ("training similarities (mean of the columns)", f"out-of-domain ({OUT_OF_DOMAIN})")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images per batch")
        ax.set_ylabel("linear top-1 (%)")
    for method in dict.fromkeys(p["method"] for p in points):
        rows = [p for p in points if p["method"] == method and any(r["tasks"] for r in p["runs"])]
        xs = [p["batch"] for p in rows]
        for ax, value in zip(
            axes,
            (similarities_mean, lambda r: r["tasks"][OUT_OF_DOMAIN]["linear_top1"]),
            strict=True,
        ):
            per_point = [[value(r) for r in p["runs"] if r["tasks"]] for p in rows]
            means = [statistics.mean(v) for v in per_point]
            errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_point]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=method)
            ax.set_xticks(xs, [str(x) for x in xs])
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default="synthetic", help="base config (file or shipped name)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per point")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=29_300, help="embedded dataset size")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override"
    )
    parser.add_argument("--only-finished", action="store_true", help="train nothing")
    args = parser.parse_args(argv)

    common = [f"data.synthetic_size={args.size}", "train.tensorboard=false", *args.set]
    train_size = train_split_size(args.base, common)
    if max(args.batches) * 5 > train_size:
        raise SystemExit(
            f"--batches: the largest batch ({max(args.batches)}) must be at most a fifth of "
            f"the train split ({train_size} images); raise --size"
        )
    if args.warmup_steps >= args.steps:
        raise SystemExit(f"--warmup-steps ({args.warmup_steps}) must be below --steps")
    points = []
    for method in args.methods:
        for batch in sorted(args.batches):
            points.append(
                {"method": method, "batch": batch, "lr": BASE_LR * batch / BASE_BATCH, "runs": []}
            )
    for seed in args.seeds:  # seeds outermost: a cut-short sweep still covers every point
        for p in points:
            run_dir = args.out / label(p["method"], p["batch"]) / f"seed{seed}"
            if args.only_finished and not (run_dir / "eval.json").is_file():
                continue
            overrides = [
                *common,
                *point_overrides(
                    p["method"], p["batch"], args.steps, args.warmup_steps, train_size
                ),
                f"seed={seed}",
                f"name={label(p['method'], p['batch'])}",
            ]
            result = run_point(args.base, overrides, run_dir)
            p["runs"].append({"seed": seed, **result})
            print(f"{label(p['method'], p['batch'])} seed {seed}: done", flush=True)
    points = [p for p in points if p["runs"]]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"train_size": train_size, "steps": args.steps, "points": points}
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=1))
    table = summarise(points)
    (args.out / "sweep.md").write_text(table + "\n")
    print(table)
    if points:
        plot(points, args.figure or args.out / "batch_size_sweep.png")


if __name__ == "__main__":
    main()
