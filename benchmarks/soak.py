"""Soak test: 1,000 training steps with random batch sizes and random label dropout.

Drives the training step of :mod:`mscon.train` (model, optimiser, batched views,
the method's loss, ``after_step``) on the embedded data with the small CNN, for
``--steps`` steps whose batch size is drawn from ``--sizes`` and whose labels are
dropped (set to -1, missing) at a random rate in [0, ``--max-dropout``] per step
and per similarity; the run also appends every step to a metrics.jsonl and
writes a checkpoint every ``--checkpoint-every`` steps through :mod:`mscon.runs`,
the file paths a real run exercises.

Resident memory (current RSS, /proc/self/statm) is compared at matching batch
sizes: the reference for a size is its first step after every size has
occurred once (the allocator keeps its high-water mark, so earlier steps are
warm-up), the final value its last step. Passes when every size stays within
``--tolerance`` (5%) and the count of open file descriptors does not grow.
Prints a table, writes JSON, exits 1 on a failure.

    python benchmarks/soak.py [--steps 1000] [--sizes 8 16 24 32] [--image-size 32]
        [--images 2000] [--json benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from mscon import runs
from mscon.config import load_config
from mscon.data import load_experiment_data
from mscon.data.augment import ViewAugment, make_views
from mscon.train import build_model, build_optimizer

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_MB


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(args: argparse.Namespace, run_dir: Path) -> dict:
    """Train ``args.steps`` steps; return per-size RSS (first after warm-up, last) and fds."""
    overrides = [
        f"data.image_size={args.image_size}",
        f"data.synthetic_size={args.images}",
        "model.backbone=cnn_small",
        f"out={run_dir}",
    ]
    config = load_config("demo", overrides)
    run_dir.mkdir(parents=True)
    data = load_experiment_data(config.data, config.seed).select("train")
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns)
    torch.manual_seed(0)
    method = build_model(config, [len(data.classes[c]) for c in columns])
    optimizer = build_optimizer(config, method)
    augments = [ViewAugment(args.image_size, k) for k in method.view_recipes(config.augment)]
    rng = random.Random(args.seed)
    seen: dict[int, dict] = {}
    warm_step, warm_fds = None, 0
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        b = rng.choice(args.sizes)
        index = torch.randperm(len(data))[:b]
        batch_labels = labels[index].clone()
        for c in range(len(columns)):
            drop = torch.rand(b) < rng.uniform(0.0, args.max_dropout)
            batch_labels[drop, c] = -1
        views = make_views(data.images[index], augments, torch.Generator().manual_seed(step))
        loss = method(views, batch_labels, index)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            method.after_step(step, args.steps)
        runs.append_metrics(run_dir, {"step": step, "loss": loss.item(), **method.log_values()})
        if step % args.checkpoint_every == 0:
            state = {"model": method.state_dict(), "optimizer": optimizer.state_dict()}
            runs.save_checkpoint(run_dir, {**state, "step": step}, keep=2)
        row = seen.setdefault(b, {"steps": 0})
        row["steps"] += 1
        if warm_step is None and len(seen) == len(args.sizes):
            warm_step, warm_fds = step, open_files()
        if step % 100 == 0:
            print(f"step {step}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if warm_step is not None:
            memory = rss_mb()
            row.setdefault("first_mb", memory)
            row.setdefault("first_step", step)
            row["last_mb"], row["last_step"] = memory, step
    return {
        "sizes": {str(b): seen[b] for b in sorted(seen)},
        "warm_step": warm_step,
        "open_files": {"after_warm_up": warm_fds, "end": open_files()},
        "seconds": time.perf_counter() - start,
    }


def verdict(result: dict, tolerance: float) -> list[str]:
    """The failures (empty: pass)."""
    failures = []
    for size, row in result["sizes"].items():
        growth = row["last_mb"] / row["first_mb"] - 1
        row["growth"] = growth
        if growth > tolerance:
            failures.append(f"batch {size}: RSS grew {100 * growth:.1f}%")
    files = result["open_files"]
    if files["end"] > files["after_warm_up"]:
        failures.append(f"open files grew from {files['after_warm_up']} to {files['end']}")
    return failures


def table(result: dict) -> str:
    lines = [
        "| batch | steps | RSS after warm-up (MB, step) | RSS at end (MB, step) | growth |",
        "|---|---|---|---|---|",
    ]
    for size, row in result["sizes"].items():
        lines.append(
            f"| {size} | {row['steps']} | {row['first_mb']:.1f} ({row['first_step']}) | "
            f"{row['last_mb']:.1f} ({row['last_step']}) | {100 * row['growth']:+.2f}% |"
        )
    files = result["open_files"]
    lines.append(f"\nopen files: {files['after_warm_up']} after warm-up, {files['end']} at end")
    lines.append(f"{result['steps']} steps in {result['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=2000, help="embedded dataset size")
    parser.add_argument("--max-dropout", type=float, default=0.5)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/soak.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        result = soak(args, Path(folder) / "run")
    result.update(steps=args.steps, args=vars(args), python=sys.version.split()[0])
    result.update(torch=torch.__version__, machine=platform.machine(), cpus=os.cpu_count())
    failures = verdict(result, args.tolerance)
    result["failures"] = failures
    print(table(result))
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
