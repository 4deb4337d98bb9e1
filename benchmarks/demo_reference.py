"""The committed multi-seed reference of ``mscon demo`` (src/mscon/configs/demo_seeds.json).

Trains every demo method on each seed from the shipped ``demo`` config, exactly as
``mscon demo --seed S`` does (same configs, so seed 0 reproduces the demo's own
table on one machine), and writes each method's per-seed linear top-1 per task
with a fingerprint of its resolved config (:func:`mscon.demo.config_fingerprint`).
Finished runs in OUT are reused (``method_grid.run_one``), so an interrupted run
resumes. ``mscon demo`` puts the file's table beside its one-seed table.

    python benchmarks/demo_reference.py --out runs/demo_seeds --seeds 0 1 2 3 4 \\
        [--write src/mscon/configs/demo_seeds.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from method_grid import run_grid  # noqa: E402

from mscon.config import CONFIG_DIR  # noqa: E402
from mscon.demo import DEMO_METHODS, REFERENCE_COMMAND, REFERENCE_FILE, config_fingerprint  # noqa: E402


def reference(
    results: dict[str, list[dict[str, Any]]], seeds: list[int], overrides: list[str]
) -> dict[str, Any]:
    """The reference file's content from ``run_grid``'s results ({method: [eval per seed]});
    ``overrides`` (``--set``) enter the fingerprints, so a reference of changed configs
    reads as stale for the shipped demo."""
    methods = {}
    for method, per_seed in results.items():
        tasks = per_seed[0]["tasks"]
        methods[method] = {
            "fingerprint": config_fingerprint(method, overrides),
            "tasks": {
                task: {
                    "domain": row["domain"],
                    "linear_top1": [r["tasks"][task]["linear_top1"] for r in per_seed],
                    "knn_top1": [r["tasks"][task]["knn_top1"] for r in per_seed],
                }
                for task, row in tasks.items()
                if "linear_top1" in row
            },
        }
    return {
        "command": REFERENCE_COMMAND,
        "seeds": seeds,
        "overrides": overrides,
        "methods": methods,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--write", type=Path, default=CONFIG_DIR / REFERENCE_FILE)
    args = parser.parse_args(argv)
    plan = {m: [f"method.name={m}"] for m in args.methods}
    results = run_grid("demo", args.out, plan, args.seeds, [*args.set, "train.progress=false"])
    diverged = [m for m, per_seed in results.items() if any(not r["tasks"] for r in per_seed)]
    if diverged:
        raise SystemExit(f"diverged runs of {', '.join(diverged)}: no reference written")
    args.write.write_text(json.dumps(reference(results, args.seeds, args.set), indent=1) + "\n")
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
