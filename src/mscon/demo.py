"""``mscon demo``: MSCon and its baselines on the embedded data, evaluated and reported.

Each method trains from the shipped ``demo`` config with only ``method.name`` changed
(equal budget: same encoder, data, views, steps), is evaluated in-domain and
out-of-domain, and the runs are compared in ``OUT/report.md``.

One seed ranks methods no better than a coin when they are a point or two apart, so
the report also shows the committed multi-seed numbers of the same configs
(``configs/demo_seeds.json``, written by ``benchmarks/demo_reference.py``). Each
method's entry carries a fingerprint of its resolved config: when the demo config
or a default changes, the fingerprints stop matching, the report says the
reference is stale, and a test fails until the reference is measured again.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_METHODS = ("mscon", "supcon", "multitask_ce", "simclr")
REFERENCE_FILE = "demo_seeds.json"
REFERENCE_COMMAND = "python benchmarks/demo_reference.py --out runs/demo_seeds --seeds 0 1 2 3 4"


def demo_config(method: str, seed: int = 0, overrides: Sequence[str] = (), out: Path | None = None):
    """The demo's config of ``method`` (the shipped ``demo`` config, ``method.name`` set)."""
    from mscon.config import load_config

    keys = [*overrides, f"method.name={method}", f"name={method}", f"seed={seed}"]
    return load_config("demo", keys + ([f"out={out}"] if out is not None else []))


def config_fingerprint(method: str, overrides: Sequence[str] = ()) -> str:
    """A short hash of the demo's resolved config of ``method``; the seed, the folder and
    the display keys (progress bar, TensorBoard) aside."""
    tree = demo_config(method, 0, overrides, Path("runs/demo")).to_dict()
    for key in ("progress", "tensorboard"):
        tree["train"].pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_reference() -> dict[str, Any] | None:
    """The committed multi-seed results of the demo configs, or None if none ships."""
    from mscon.config import CONFIG_DIR

    path = CONFIG_DIR / REFERENCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _paired(values: list[float], base: list[float]) -> str:
    diffs = [v - b for v, b in zip(values, base, strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.1f} ± {se:.1f}"


def reference_section(
    reference: dict[str, Any] | None, methods: Sequence[str], overrides: Sequence[str] = ()
) -> list[str]:
    """Markdown lines: the committed multi-seed table beside the demo's one-seed table."""
    lines = ["## Several seeds (committed reference)", ""]
    if reference is None:
        return [*lines, "No multi-seed reference ships with this version.", ""]
    shown = [m for m in methods if m in reference["methods"]]
    stale = [m for m in shown if reference["methods"][m]["fingerprint"] != config_fingerprint(m)]
    seeds = reference["seeds"]
    lines += [
        f"The table above is one seed. The same configs over seeds {seeds} (linear top-1, "
        "mean ± std; every method trained on the same seeds), measured when this version "
        f"was committed; `{reference['command']}` reproduces it (within seed spread on "
        "another CPU).",
        "",
    ]
    if overrides:
        lines += [f"This demo ran with `--set {' '.join(overrides)}`; the reference did not.", ""]
    if stale:
        lines += [f"Stale: the demo config of {', '.join(stale)} changed since it was made.", ""]
    tasks = list(reference["methods"][shown[0]]["tasks"]) if shown else []
    lines += ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in shown:
        cells = reference["methods"][m]["tasks"]
        lines.append(
            f"| {m} | " + " | ".join(_mean_std(cells[t]["linear_top1"]) for t in tasks) + " |"
        )
    out_tasks = [
        t
        for t in tasks
        if all(reference["methods"][m]["tasks"][t]["domain"] == "out" for m in shown)
    ]
    base = reference["methods"].get("mscon")
    if base and out_tasks and len(shown) > 1:
        lines += ["", "Out-of-domain, each method minus MSCon on the same seed (mean ± s.e.):", ""]
        lines += ["| method | " + " | ".join(out_tasks) + " |", "|---" * (len(out_tasks) + 1) + "|"]
        for m in shown:
            if m != "mscon":
                cells = reference["methods"][m]["tasks"]
                row = [
                    _paired(cells[t]["linear_top1"], base["tasks"][t]["linear_top1"])
                    for t in out_tasks
                ]
                lines.append(f"| {m} | " + " | ".join(row) + " |")
    return [*lines, ""]


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
    from mscon.evaluate import evaluate_run, format_results
    from mscon.report import write_report
    from mscon.train import train

    # validate every config before the first run starts
    configs = [demo_config(m, seed, overrides, out / m) for m in methods]
    results: dict[str, dict[str, Any]] = {}
    for config in configs:
        start = time.perf_counter()
        run_dir = train(config, overwrite=True)
        results[config.name] = evaluate_run(run_dir)
        print(f"{config.name}: trained and evaluated in {time.perf_counter() - start:.0f} s")
    report = write_report([out / m for m in methods], out)
    section = reference_section(load_reference(), methods, overrides)
    with report.open("a") as file:
        file.write("\n" + "\n".join(section))
    print(format_results(results))
    print("\n".join(section))
    print(f"report: {report}")
    return results
