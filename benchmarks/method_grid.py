"""Train and evaluate a grid of (variant x seed) runs; print mean ± std per task.

Each variant is a label and a list of config overrides applied on top of a base
config (the shipped ``demo`` config by default). Finished runs (an ``eval.json`` in
their folder) are skipped, so an interrupted grid continues where it stopped.

Examples:
    # MSCon against its baselines, 3 seeds (docs/results.md):
    python benchmarks/method_grid.py --out runs/methods --seeds 0 1 2 \\
        --variant mscon method.name=mscon --variant supcon method.name=supcon \\
        --variant multitask_ce method.name=multitask_ce --variant simclr method.name=simclr

Outputs OUT/grid.json (every run's eval.json and final weights) and OUT/grid.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def parse_variants(items: list[list[str]]) -> dict[str, list[str]]:
    variants = {}
    for item in items:
        label, *overrides = item
        variants[label] = overrides
    return variants


def run_one(base: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from mscon.config import load_config
    from mscon.errors import NonFiniteLossError
    from mscon.evaluate import evaluate_run
    from mscon.runs import read_metrics
    from mscon.train import train

    if (out / "eval.json").is_file():
        result = json.loads((out / "eval.json").read_text())
    else:
        config = load_config(base, [*overrides, f"out={out}", "train.progress=false"])
        try:
            train(config, overwrite=True)
        except NonFiniteLossError as error:  # a diverged run is a result, not a crash
            print(f"{out}: diverged ({error})", flush=True)
            return {"tasks": {}, "diverged": str(error), "final_weights": None}
        result = evaluate_run(out)
    metrics = read_metrics(out)
    result["final_weights"] = metrics[-1].get("weights") if metrics else None
    return result


def run_grid(
    base: str, out: Path, plan: dict[str, list[str]], seeds: list[int], common: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Run every (label, seed) of ``plan`` into OUT/LABEL/seedN; {label: [result per seed]}."""
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in plan}
    for seed in seeds:  # seeds outermost: a cut-short grid still compares variants
        for label, overrides in plan.items():
            start = time.perf_counter()
            run_dir = out / label / f"seed{seed}"
            overrides = [*common, *overrides, f"seed={seed}", f"name={label}"]
            results[label].append(run_one(base, overrides, run_dir))
            print(f"{label} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return results


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def summarise(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per variant and task (mean ± std over seeds)."""
    lines = [
        "| variant | task | domain | linear top-1 | kNN top-1 | final weight | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        runs = [r for r in runs if r["tasks"]]  # diverged runs have no accuracies
        if not runs:
            lines.append(f"| {label} | – | – | diverged | – | – | 0 |")
            continue
        for task, row in runs[0]["tasks"].items():
            if "linear_top1" not in row:
                continue
            linear = [r["tasks"][task]["linear_top1"] for r in runs]
            knn = [r["tasks"][task]["knn_top1"] for r in runs]
            weights = [
                r["final_weights"][task]
                for r in runs
                if r.get("final_weights") and task in r["final_weights"]
            ]
            weight = f"{statistics.mean(weights):.3f}" if weights else "–"
            lines.append(
                f"| {label} | {task} | {row['domain']} | {mean_std(linear)} | "
                f"{mean_std(knn)} | {weight} | {len(runs)} |"
            )
    return "\n".join(lines)


def paired_difference(
    runs: list[dict[str, Any]], base: list[dict[str, Any]], task: str, key: str = "linear_top1"
) -> tuple[float, float]:
    """Mean and standard error of ``runs - base`` on ``task``'s ``key``, paired by
    position (seed); the standard error is 0 for a single pair."""
    diffs = [
        r["tasks"][task][key] - b["tasks"][task][key] for r, b in zip(runs, base, strict=False)
    ]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), se


def paired(results: dict[str, list[dict[str, Any]]], reference: str) -> str:
    """Markdown: each variant's linear top-1 minus ``reference``'s on the same seed,
    mean ± standard error of the paired differences, per task."""
    if reference not in results:
        raise SystemExit(f"--paired {reference}: no such variant ({', '.join(results)})")
    base = results[reference]
    lines = [
        f"| variant | task | linear top-1 − {reference} | kNN top-1 − {reference} | seeds |",
        "|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        if label == reference:
            continue
        pairs = [(r, b) for r, b in zip(runs, base, strict=False) if r["tasks"] and b["tasks"]]
        if not pairs:
            continue
        for task, row in pairs[0][1]["tasks"].items():
            if "linear_top1" not in row:
                continue
            mine, theirs = [r for r, _ in pairs], [b for _, b in pairs]
            cells = []
            for key in ("linear_top1", "knn_top1"):
                mean, se = paired_difference(mine, theirs, task, key)
                cells.append(f"{mean:+.1f} ± {se:.1f}")
            lines.append(f"| {label} | {task} | {cells[0]} | {cells[1]} | {len(pairs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default="demo", help="base config (YAML file or shipped name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar=("LABEL", "KEY=VALUE"),
        help="a label and its overrides",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="overrides for every run",
    )
    parser.add_argument(
        "--paired",
        metavar="LABEL",
        help="also print each variant's per-seed difference to variant LABEL (mean ± s.e.)",
    )
    args = parser.parse_args()
    variants = parse_variants(args.variant)
    results = run_grid(args.base, args.out, variants, args.seeds, args.overrides)
    (args.out / "grid.json").write_text(json.dumps(results, indent=1))
    table = summarise(results)
    if args.paired:
        table += "\n\n" + paired(results, args.paired)
    command = "python benchmarks/method_grid.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (args.out / "grid.md").write_text(f"{table}\n\nseeds {args.seeds}; {command}\n")
    print(table)


if __name__ == "__main__":
    main()
