"""Issue 15's criteria for MSCon's default on one suite, from finished grids.

Reads a ``method_grid.py`` study (OUT/LABEL/seedN/eval.json, every variant trained
on the same seeds) and, with ``--weights``, a ``weights_grid.py`` noise sweep, and
prints one row per criterion with its numbers and a verdict:

1. every clean head of the default ends with r <= 0.9 in every seed (r as
   ``head_collapse.py`` measures it, on the last checkpoint);
2. in domain, on every similarity, the default is no worse than the plain sum by
   more than max(1 point, 2 standard errors of the paired difference);
3. out of domain, on every task, the mean paired difference to multi-task CE >= 0;
4. the same against the best single-similarity SupCon (per task, the SupCon
   variant with the highest mean linear top-1 on it);
5. the corrupted similarity's final weight (mean over seeds) at least 5 % below
   the lowest clean weight at every noise rate; the seeds where that holds are
   counted.

Trains nothing. Example (docs/results.md, "The study at 12 epochs"):
    python benchmarks/criteria.py --grid runs/long12_synthetic --seeds 0 1 2 3 4 \\
        --weights runs/weights12_synthetic --noisy color
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from method_grid import paired_difference  # noqa: E402
from weights_grid import BELOW, final_weight, run_label, seed_ratios, weights_at  # noqa: E402

R_MAX = 0.9  # criterion 1: a head at or below this has left chance


def load_results(grid: Path, label: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Each seed's eval.json of ``grid/label``; a missing one is a one-line error."""
    results = []
    for seed in seeds:
        path = grid / label / f"seed{seed}" / "eval.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (train the grid's runs first)")
        results.append(json.loads(path.read_text()))
    return results


def supcon_labels(grid: Path) -> list[str]:
    """The grid's single-similarity SupCon variants: its folders named supcon_*."""
    return sorted(p.name for p in grid.iterdir() if p.is_dir() and p.name.startswith("supcon_"))


def tasks_of(runs: list[dict[str, Any]], domain: str) -> list[str]:
    return [t for t, row in runs[0]["tasks"].items() if row.get("domain") == domain]


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def heads_criterion(r_by_seed: list[dict[str, float]], r_max: float = R_MAX) -> tuple[str, str]:
    """Criterion 1 from each seed's {head: r}: every head's range over seeds."""
    heads = list(r_by_seed[0])
    cells, ok = [], True
    for head in heads:
        values = [seed[head] for seed in r_by_seed]
        above = sum(v > r_max for v in values)
        ok = ok and above == 0
        note = f" ({above} seed{'s' if above != 1 else ''} above {r_max})" if above else ""
        cells.append(f"{head} {min(values):.3f}–{max(values):.3f}{note}")
    return "; ".join(cells), verdict(ok)


def in_domain_criterion(
    default: list[dict[str, Any]], plain: list[dict[str, Any]]
) -> tuple[str, str]:
    """Criterion 2: each in-domain similarity's paired difference and allowance."""
    cells, ok = [], True
    for task in tasks_of(default, "in"):
        mean, se = paired_difference(default, plain, task)
        allowance = max(1.0, 2 * se)
        ok = ok and mean >= -allowance
        cells.append(f"{task} {mean:+.1f} ± {se:.1f} (allowed −{allowance:.1f})")
    return "; ".join(cells), verdict(ok)


def ood_criterion(
    default: list[dict[str, Any]], others: dict[str, list[dict[str, Any]]]
) -> tuple[str, str]:
    """Criteria 3 and 4: per out-of-domain task, the paired difference to the best of
    ``others`` on that task (the one with the highest mean linear top-1)."""
    cells, ok = [], True
    for task in tasks_of(default, "out"):
        best = max(
            others,
            key=lambda k: statistics.mean(r["tasks"][task]["linear_top1"] for r in others[k]),
        )
        mean, se = paired_difference(default, others[best], task)
        ok = ok and mean >= 0
        name = f" against {best}" if len(others) > 1 else ""
        cells.append(f"{task} {mean:+.1f} ± {se:.1f}{name}")
    return "; ".join(cells), verdict(ok)


def weights_criterion(
    final_weights: dict[float, list[dict[str, float]]], noisy: str
) -> tuple[str, str]:
    """Criterion 5 from {rate: each seed's final weights}."""
    cells, ok = [], True
    for rate, seeds in sorted(final_weights.items()):
        runs = [{"weights_at": [weights]} for weights in seeds]  # weights_grid's records
        columns = list(seeds[0])
        lowest = min(final_weight(runs, c) or 0.0 for c in columns if c != noisy)
        ratio = (final_weight(runs, noisy) or 0.0) / lowest
        passing = sum(r <= 1 - BELOW for r in seed_ratios(runs, columns, noisy))
        ok = ok and ratio <= 1 - BELOW
        cells.append(f"{round(rate * 100)} %: {ratio:.2f} ({passing}/{len(seeds)} seeds)")
    return "; ".join(cells), verdict(ok)


def final_weights_of(run_dir: Path) -> dict[str, float]:
    """The weights of the run's last metrics.jsonl record that has them."""
    logged = weights_at(run_dir, (1.0,))
    if not logged:
        raise SystemExit(f"{run_dir}: no weights in metrics.jsonl")
    return logged[0]


def head_r(run_dir: Path, batch: int) -> dict[str, float]:
    """{head: r} of a run's clean heads (a corrupted column is not a clean head)."""
    from head_collapse import measure_run

    from mscon import runs

    config = runs.load_run_config(run_dir)
    corrupted = set(config.data.corrupt or {})
    heads = zip(config.data.similarities, measure_run(run_dir, batch), strict=True)
    return {column: head["r"] for column, head in heads if column not in corrupted}


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| criterion | measured (mean ± s.e. of the paired difference) | met |"]
    lines.append("|---|---|---|")
    lines += [f"| {name} | {numbers} | {ok} |" for name, numbers, ok in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, required=True, help="a method_grid.py --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--default", default="default", help="the variant under test")
    parser.add_argument("--plain", default="equal", help="the plain sum's variant")
    parser.add_argument("--mtce", default="multitask_ce", help="multi-task CE's variant")
    parser.add_argument("--supcon", nargs="*", help="SupCon variants (default: supcon_*)")
    parser.add_argument("--weights", type=Path, help="a weights_grid.py --out")
    parser.add_argument("--weights-variant", help="with --weights (default consistency)")
    parser.add_argument("--noisy", help="the similarity --weights corrupts")
    parser.add_argument("--rates", type=float, nargs="+", help="with --weights (0.25 0.5 1)")
    parser.add_argument("--batch", type=int, default=256, help="images in r's fixed batch")
    parser.add_argument("--r-max", type=float, default=R_MAX)
    args = parser.parse_args()
    if args.weights and not args.noisy:
        parser.error("--weights needs --noisy")
    unread = [k for k in ("noisy", "rates", "weights_variant") if getattr(args, k) is not None]
    if unread and not args.weights:
        parser.error(f"--{unread[0].replace('_', '-')} is read only with --weights")
    rates = args.rates or [0.25, 0.5, 1.0]
    weights_variant = args.weights_variant or "consistency"

    def load(label: str) -> list[dict[str, Any]]:
        return load_results(args.grid, label, args.seeds)

    default = load(args.default)
    supcons = args.supcon if args.supcon is not None else supcon_labels(args.grid)
    if not supcons:
        raise SystemExit(f"{args.grid}: no supcon_* variant (pass --supcon)")
    r_by_seed = [head_r(args.grid / args.default / f"seed{s}", args.batch) for s in args.seeds]
    rows = [
        (f"every clean head r ≤ {args.r_max}, every seed", *heads_criterion(r_by_seed, args.r_max)),
        ("in domain vs the plain sum", *in_domain_criterion(default, load(args.plain))),
        ("out of domain ≥ multi-task CE", *ood_criterion(default, {args.mtce: load(args.mtce)})),
        (
            "out of domain ≥ the best single-similarity SupCon",
            *ood_criterion(default, {label: load(label) for label in supcons}),
        ),
    ]
    if args.weights:
        weights = {
            rate: [
                final_weights_of(args.weights / run_label(weights_variant, rate) / f"seed{s}")
                for s in args.seeds
            ]
            for rate in rates
        }
        rows.append(
            (
                f"noisy {args.noisy} lowest, ≥ {BELOW:.0%} below the lowest clean weight",
                *weights_criterion(weights, args.noisy),
            )
        )
    print(f"{args.grid}, seeds {args.seeds}")
    print(table(rows))


if __name__ == "__main__":
    main()
