"""Do MSCon's learned weights track label noise rather than granularity? (issue 5)

One command trains every (weighting variant x corruption rate x seed) on the
synthetic suite (the shipped ``synthetic`` config: training similarities shape_color
(64 classes), color (8), size (3); out-of-domain task pattern), with a share of
one similarity's train labels replaced by random ones (``data.corrupt``; with
``--corrupt-mode uniform`` drawn from all classes, else from the other ones), then
writes:

* OUT/weights.md: per variant and rate, each similarity's learned weight at
  25 %, 50 % and 100 % of training and its in-domain linear top-1, and the
  out-of-domain linear top-1 (mean ± std over seeds), plus the three criteria of
  the issue for each variant;
* OUT/weights.json: the raw numbers;
* OUT/weights_over_training.png: the weights over training (mean over seeds),
  one panel per variant and rate.

Baselines (``--baselines``) are trained once per seed on clean labels.
Finished runs (an ``eval.json``) are skipped, so an interrupted grid resumes;
``--only-finished`` trains nothing and summarises what has finished.

Example (docs/results.md):
    python benchmarks/weights_grid.py --out runs/weights --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from method_grid import mean_std, paired_difference, run_grid  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "equal": ["method.weighting=equal", "method.instance_mix=0"],
    "uncertainty": ["method.weighting=uncertainty", "method.instance_mix=0"],
    "relative": ["method.weighting=relative", "method.instance_mix=0"],
    "relative_mix": ["method.weighting=relative", "method.instance_mix=0.5"],
    "relative_mix01": ["method.weighting=relative", "method.instance_mix=0.1"],
    "relative_mix02": ["method.weighting=relative", "method.instance_mix=0.2"],
    "equal_mix": ["method.weighting=equal", "method.instance_mix=0.5"],
    "normalized": ["method.weighting=normalized", "method.instance_mix=0"],
    "consistency": ["method.weighting=consistency", "method.instance_mix=0"],
    "excess": ["method.weighting=excess", "method.instance_mix=0"],
    "temperature": ["method.weighting=temperature", "method.instance_mix=0"],
    "uncertainty_slow": [
        "method.weighting=uncertainty",
        "method.log_var_lr=0.005",
        "method.weight_warmup_epochs=1",
        "method.instance_mix=0",
    ],
}
BASELINES: dict[str, list[str]] = {
    "supcon": ["method.name=supcon"],
    "multitask_ce": ["method.name=multitask_ce"],
    "simclr": ["method.name=simclr"],
}
FRACTIONS = (0.25, 0.5, 1.0)
BELOW = 0.05  # criterion (a): the noisy weight at least 5 % below the lowest clean one


def run_label(variant: str, rate: float) -> str:
    return f"{variant}_c{round(rate * 100):03d}"


def corruption(noisy: str, rate: float, mode: str = "other") -> list[str]:
    """The ``--set`` items that corrupt ``rate`` of ``noisy``'s train labels (none at 0)."""
    if rate <= 0:
        return []
    items = [f"data.corrupt={{{noisy}: {rate}}}"]
    return items if mode == "other" else [*items, f"data.corrupt_mode={mode}"]


def finished(label_dir: Path, seeds: list[int]) -> bool:
    """Whether every seed's run in ``label_dir`` has its eval.json."""
    return all((label_dir / f"seed{seed}" / "eval.json").is_file() for seed in seeds)


def weights_at(run_dir: Path, fractions: tuple[float, ...]) -> list[dict[str, float]]:
    """The logged weights at the records nearest to each fraction of training."""
    from mscon.runs import read_metrics

    records = [r for r in read_metrics(run_dir) if "weights" in r]
    if not records:
        return []
    last = records[-1]["step"]
    return [
        min(records, key=lambda r, f=f: abs(r["step"] - f * last))["weights"] for f in fractions
    ]


def collect(out: Path, label: str, seeds: list[int], result: list[dict[str, Any]]) -> dict:
    for seed, run in zip(seeds, result, strict=True):
        run["weights_at"] = weights_at(out / label / f"seed{seed}", FRACTIONS)
    return {"runs": result}


def summary_rows(
    label: str, runs: list[dict[str, Any]], columns: list[str], ood: list[str]
) -> list[str]:
    cells = []
    for column in columns:
        at = [[r["weights_at"][i][column] for r in runs] for i in range(len(FRACTIONS))]
        weights = " / ".join(f"{statistics.mean(w):.2f}" for w in at) if at[0] else "–"
        top1 = mean_std([r["tasks"][column]["linear_top1"] for r in runs])
        cells.append(f"{weights} | {top1}")
    ood_cells = [mean_std([r["tasks"][t]["linear_top1"] for r in runs]) for t in ood]
    return [f"| {label} | " + " | ".join(cells + ood_cells) + f" | {len(runs)} |"]


def final_weight(runs: list[dict[str, Any]], column: str) -> float | None:
    values = [r["weights_at"][-1][column] for r in runs if r["weights_at"]]
    return statistics.mean(values) if values else None


def seed_ratios(runs: list[dict[str, Any]], columns: list[str], noisy: str) -> list[float]:
    """Per seed: the noisy similarity's final weight over the lowest clean one's."""
    ratios = []
    for run in runs:
        if not run["weights_at"]:
            continue
        final = run["weights_at"][-1]
        lowest_clean = min(final[c] for c in columns if c != noisy)
        ratios.append(final[noisy] / lowest_clean if lowest_clean > 0 else float("inf"))
    return ratios


def in_domain_gap(
    variant: list[dict[str, Any]], equal: list[dict[str, Any]], columns: list[str]
) -> tuple[str, float, float]:
    """The clean similarity where ``variant`` trails ``equal`` most, paired by seed:
    (column, mean paired difference, allowance max(1, 2 standard errors))."""
    worst = None
    for column in columns:
        mean, se = paired_difference(variant, equal, column)
        allowance = max(1.0, 2 * se)
        if worst is None or mean + allowance < worst[1] + worst[2]:
            worst = (column, mean, allowance)
    assert worst is not None
    return worst


def criteria(
    results: dict[str, list[dict[str, Any]]],
    variants: list[str],
    rates: list[float],
    columns: list[str],
    noisy: str,
    ood: list[str],
) -> list[str]:
    """The issue's criteria per variant; in-domain and the trend against clean labels.

    (a) at every noise rate > 0 the noisy similarity's final weight (mean over seeds)
    is at least :data:`BELOW` below the lowest clean similarity's; the seeds where
    that holds are counted per rate. (b) with clean labels, on every similarity, no
    worse than ``equal`` (the plain sum) by more than max(1 point, 2 standard errors
    of the paired difference). (c) out-of-domain top-1, mean over the rates.
    """
    lines = [
        f"| variant | (a) noisy weight / lowest clean weight per rate > 0 (mean; ≤ "
        f"{1 - BELOW:.2f} passes; seeds passing) | (a) its weight falls as noise rises "
        "(from 0 %) | (b) clean in-domain vs equal, worst similarity (paired mean, "
        "allowance) | (c) out-of-domain, mean over rates |",
        "|---|---|---|---|---|",
    ]
    clean_rate = min(rates)
    equal = results.get(run_label("equal", clean_rate))

    def mean_top1(runs: list[dict[str, Any]], task: str) -> float:
        return statistics.mean(r["tasks"][task]["linear_top1"] for r in runs)

    for variant in variants:
        clean = results.get(run_label(variant, clean_rate))
        noisy_rates = [r for r in rates if r > 0 and run_label(variant, r) in results]
        lowest, trend = "–", "–"
        if noisy_rates and final_weight(results[run_label(variant, noisy_rates[0])], noisy):
            cells, passes, weights = [], [], []
            for rate in noisy_rates:
                runs = results[run_label(variant, rate)]
                mine = final_weight(runs, noisy)
                others = [final_weight(runs, c) for c in columns if c != noisy]
                ratio = mine / min(o for o in others if o is not None)
                seeds = seed_ratios(runs, columns, noisy)
                good = sum(r <= 1 - BELOW for r in seeds)
                passes.append(ratio <= 1 - BELOW)
                cells.append(f"{ratio:.2f} ({good}/{len(seeds)})")
                weights.append(mine)
            lowest = ("yes: " if all(passes) else "no: ") + " / ".join(cells)
            if clean_rate == 0 and clean:  # the trend starts from clean labels
                weights.insert(0, final_weight(clean, noisy))
            steps = [b < a for a, b in zip(weights, weights[1:], strict=False)]
            trend = " > ".join(f"{w:.2f}" for w in weights) + (
                " (one noisy rate)" if not steps else " ✓" if all(steps) else " ✗"
            )
        gap = "–"
        if clean and equal:
            column, mean, allowance = in_domain_gap(clean, equal, columns)
            verdict = "yes" if mean >= -allowance else "no"
            gap = f"{column} {mean:+.1f} (allowed −{allowance:.1f}: {verdict})"
        runs_all = [
            results[run_label(variant, r)] for r in rates if run_label(variant, r) in results
        ]
        oods = [mean_top1(runs, t) for runs in runs_all for t in ood]
        lines.append(
            f"| {variant} | {lowest} | {trend} | {gap} | {statistics.mean(oods):.1f} |"
            if oods
            else f"| {variant} | {lowest} | {trend} | {gap} | – |"
        )
    return lines


def plot(results: dict[str, list[dict[str, Any]]], out: Path, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mscon.runs import read_metrics

    labels = [x for x in labels if results[x] and results[x][0].get("weights_at")]
    if not labels:
        return
    cols = 4
    rows = (len(labels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(labels) :]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels, strict=False):
        seeds = sorted((out / label).glob("seed*"))
        per_seed = [[r for r in read_metrics(s) if "weights" in r] for s in seeds]
        per_seed = [p for p in per_seed if p]
        length = min(len(p) for p in per_seed)
        epochs = [r["epoch"] for r in per_seed[0][:length]]
        for column in per_seed[0][0]["weights"]:
            mean = [
                statistics.mean(p[i]["weights"][column] for p in per_seed) for i in range(length)
            ]
            ax.plot(epochs, mean, label=column)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("weight on L_c", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "weights_over_training.png", dpi=100)
    plt.close(fig)


def main() -> None:
    from mscon.data.dataset import CORRUPT_MODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default="synthetic", help="base config (file or name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument(
        "--noisy", default="color", help="the similarity whose labels are corrupted"
    )
    parser.add_argument(
        "--corrupt-mode",
        default="other",
        choices=CORRUPT_MODES,
        help="data.corrupt_mode of the corrupted runs: a random other class, or any class",
    )
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument(
        "--only-finished",
        action="store_true",
        help="train nothing: summarise the runs of the grid that finished for every seed",
    )
    args = parser.parse_args()
    from mscon.config import load_config

    config = load_config(args.base, args.overrides)
    columns, ood = list(config.data.similarities), list(config.data.eval_tasks)
    if args.noisy not in columns:
        parser.error(f"--noisy {args.noisy!r} is not one of data.similarities {columns}")
    plan: dict[str, list[str]] = {}
    for rate in args.rates:
        for variant in args.variants:
            corrupt = corruption(args.noisy, rate, args.corrupt_mode)
            plan[run_label(variant, rate)] = [*VARIANTS[variant], *corrupt]
    for name in args.baselines:
        plan[name] = BASELINES[name]
    if args.only_finished:
        plan = {label: o for label, o in plan.items() if finished(args.out / label, args.seeds)}
        if not plan:
            parser.error(f"--only-finished: no run in {args.out} finished for seeds {args.seeds}")
    raw = run_grid(args.base, args.out, plan, args.seeds, args.overrides)
    results = {
        label: collect(args.out, label, args.seeds, runs)["runs"] for label, runs in raw.items()
    }
    (args.out / "weights.json").write_text(json.dumps(results, indent=1))
    results = {k: [r for r in v if r["tasks"]] for k, v in results.items()}
    results = {k: v for k, v in results.items() if v}  # drop variants that diverged

    head = [f"{c}: weight at 25/50/100 % | {c} top-1" for c in columns] + [
        f"{t} top-1 (OOD)" for t in ood
    ]
    lines = [
        f"Noisy similarity: {args.noisy} (data.corrupt_mode {args.corrupt_mode}); "
        f"seeds {args.seeds}; base {args.base}.",
        "",
        "| run | " + " | ".join(head) + " | seeds |",
        "|---|" + "---|" * (2 * len(columns) + len(ood) + 1),
    ]
    for label, runs in results.items():
        if all(r["weights_at"] for r in runs):
            lines += summary_rows(label, runs, columns, ood)
        else:  # baselines without learned weights (supcon, simclr)
            cells = [
                "– | " + mean_std([r["tasks"][c]["linear_top1"] for r in runs])
                if c in runs[0]["tasks"]
                else "– | –"
                for c in columns
            ]
            oods = [mean_std([r["tasks"][t]["linear_top1"] for r in runs]) for t in ood]
            lines.append(f"| {label} | " + " | ".join(cells + oods) + f" | {len(runs)} |")
    lines += ["", *criteria(results, args.variants, args.rates, columns, args.noisy, ood)]
    (args.out / "weights.md").write_text("\n".join(lines) + "\n")
    plot(results, args.out, [x for x in plan if x not in BASELINES])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
