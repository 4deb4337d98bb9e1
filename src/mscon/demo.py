"""``mscon demo``: MSCon and its baselines on the embedded data, evaluated and reported.

Each method trains from the shipped ``demo`` config with only ``method.name`` changed
(equal budget: same encoder, data, views, steps), is evaluated in-domain and
out-of-domain, and the runs are compared in ``OUT/report.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_METHODS = ("mscon", "supcon", "multitask_ce", "simclr")


def run_demo(
    out: Path,
    seed: int = 0,
    methods: Sequence[str] = DEMO_METHODS,
    overrides: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Train, evaluate and report each method; return {method: eval.json}.

    Args:
        out: folder for the run folders (``OUT/METHOD``) and ``OUT/report.md``;
            runs already there are replaced.
        seed: the experiment seed (data split, initialisation, augmentations).
        methods: which methods to run.
        overrides: extra ``KEY=VALUE`` config overrides applied to every run.
    """
    from mscon.config import load_config
    from mscon.evaluate import evaluate_run, format_results
    from mscon.report import write_report
    from mscon.train import train

    configs = [
        load_config(
            "demo",
            [*overrides, f"method.name={m}", f"name={m}", f"seed={seed}", f"out={out / m}"],
        )
        for m in methods
    ]  # validate every config before the first run starts
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        start = time.perf_counter()
        run_dir = train(config, overwrite=True)
        results[config.name] = evaluate_run(run_dir)
        print(f"{config.name}: trained and evaluated in {time.perf_counter() - start:.0f} s")
    report = write_report([out / m for m in methods], out)
    print(format_results(results))
    print(f"report: {report}")
    return results
