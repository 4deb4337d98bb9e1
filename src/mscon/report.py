"""``mscon report``: a per-task table and figures for one or more run folders.

Figures (``OUT/figures``): learned similarity weights over training, the
``consistency`` weighting's estimated share of random labels (``label_noise``), loss
curves, a 2-D map (PCA) of each run's test embeddings coloured by each task,
and a bar chart comparing the runs' linear top-1 per task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mscon import runs  # noqa: E402
from mscon.errors import RunError  # noqa: E402

NOISE_CAPTION = (
    "Zero until the feature bank is full. A high value says the encoder's "
    "neighbourhoods do not agree with that similarity's labels: random labels, or a "
    "similarity the encoder has not learned (docs/results.md, "
    '"When to trust the learned weights").'
)


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in run_dirs]


def plot_per_column(
    runs: dict[str, list[dict[str, Any]]], key: str, ylabel: str, path: Path
) -> bool:
    """``metrics.jsonl``'s per-similarity values under ``key`` over training, one panel
    per run that logs them; False (no figure) when none does."""
    runs = {name: m for name, m in runs.items() if any(key in r for r in m)}
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.2), squeeze=False)
    for ax, (name, metrics) in zip(axes[0], runs.items(), strict=True):
        records = [r for r in metrics if key in r]
        steps = [r["step"] for r in records]
        for column in records[0][key]:
            ax.plot(steps, [r[key][column] for r in records], label=column)
        ax.set(title=name, xlabel="step", ylabel=ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_weights(runs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Learned similarity weights over training, one panel per run that has them."""
    return plot_per_column(runs, "weights", "weight on L_c", path)


def plot_label_noise(runs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """The estimated share of random labels per similarity over training (the
    ``consistency`` weighting's ``label_noise``), one panel per run that logs it."""
    return plot_per_column(runs, "label_noise", "estimated share of random labels", path)


def plot_losses(runs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Total loss (and per-similarity losses where logged) over training."""
    runs = {name: m for name, m in runs.items() if m}
    if not runs:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.2), squeeze=False)
    for ax, (name, metrics) in zip(axes[0], runs.items(), strict=True):
        steps = [r["step"] for r in metrics]
        ax.plot(steps, [r["loss"] for r in metrics], label="total", color="black")
        for column in metrics[-1].get("loss_per_similarity", {}):
            ax.plot(steps, [r["loss_per_similarity"][column] for r in metrics], label=column)
        ax.set(title=name, xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_comparison(evals: dict[str, dict[str, Any]], path: Path) -> bool:
    """Grouped bars: linear top-1 per task (x) and run (colour); out-of-domain tasks marked."""
    evals = {name: e for name, e in evals.items() if e}
    if not evals:
        return False
    tasks = list(
        dict.fromkeys(
            t for e in evals.values() for t, r in e["tasks"].items() if "linear_top1" in r
        )
    )
    if not tasks:
        return False
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(evals) / 3)), 3.5))
    for i, (name, e) in enumerate(evals.items()):
        values = [e["tasks"].get(t, {}).get("linear_top1", 0.0) for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], values, width, label=name)
    domains = {
        t: next(e["tasks"][t]["domain"] for e in evals.values() if t in e["tasks"]) for t in tasks
    }
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))])
    ax.set_xticklabels([f"{t}\n({'out' if domains[t] == 'out' else 'in'})" for t in tasks])
    ax.set(ylabel="linear top-1 (%)", title="linear evaluation per task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_embedding(run_dir: Path, path: Path, max_points: int = 2000) -> bool:
    """PCA of the test split's encoder features, one panel per task, coloured by class."""
    from mscon.data import load_experiment_data
    from mscon.data.augment import to_float
    from mscon.evaluate import extract_features

    config = runs.load_run_config(run_dir)
    data = load_experiment_data(config.data, config.seed, clean=True)
    split = "test" if (data.split == "test").any() else "train"
    part = data.select(split)
    keep = torch.randperm(len(part), generator=torch.Generator().manual_seed(0))[:max_points]
    features = extract_features(runs.encoder_from_checkpoint(run_dir), part.images[keep], to_float)
    centred = features - features.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    tasks = [
        t
        for t in dict.fromkeys([*config.data.similarities, *config.data.eval_tasks])
        if not data.is_continuous(t)
    ]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        labels = part.labels[task][keep].numpy()
        ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20", s=4, linewidths=0)
        ax.set(title=f"{task} ({len(data.classes[task])} classes)", xticks=[], yticks=[])
    fig.suptitle(f"{run_dir.name}: test embeddings (PCA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table(evals: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = [
        "| run | task | domain | classes | linear top-1 | kNN top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in evals.items():
        if not e:
            lines.append(f"| {name} | (not evaluated: run `mscon eval`) | | | | |")
            continue
        for task, r in e["tasks"].items():
            if "linear_top1" in r:
                lines.append(
                    f"| {name} | {task} | {r['domain']} | {r['num_classes']} | "
                    f"{r['linear_top1']:.1f} | {r['knn_top1']:.1f} |"
                )
            else:
                lines.append(
                    f"| {name} | {task} | {r['domain']} | continuous | "
                    f"R² {r['linear_r2']:.3f}, MAE {r['linear_mae']:.3g} | – |"
                )
    return lines


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for the runs; return the report's path.

    Args:
        run_dirs: run folders written by ``mscon train``.
        out: output folder; default: the run folder itself for one run, else the
            runs' common parent folder.
    """
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not runs.config_file(d).is_file():
            raise RunError(f"{d}: not a run folder (no config.yaml)")
    if out is None:
        out = dirs[0] if len(dirs) == 1 else Path(os.path.commonpath([d.resolve() for d in dirs]))
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = _run_names(dirs)
    metrics = {n: runs.read_metrics(d) for n, d in zip(names, dirs, strict=True)}
    evals = {n: runs.read_eval(d) for n, d in zip(names, dirs, strict=True)}

    lines = [
        "# mscon report",
        "",
        "Runs: " + ", ".join(f"`{d}`" for d in dirs),
        "",
        "## Linear and kNN evaluation",
        "",
        "Top-1 in percent on the test split; `in` = the method trained on that "
        "column's labels, `out` = never trained on it (out-of-domain).",
        "",
        *_table(evals),
        "",
    ]
    for title, file, ok in (
        (
            "Linear top-1 per task",
            "comparison.png",
            plot_comparison(evals, figures / "comparison.png"),
        ),
        (
            "Learned similarity weights over training",
            "weights.png",
            plot_weights(metrics, figures / "weights.png"),
        ),
        (
            "Estimated share of random labels (consistency weighting)",
            "label_noise.png",
            plot_label_noise(metrics, figures / "label_noise.png"),
        ),
        ("Training loss", "loss.png", plot_losses(metrics, figures / "loss.png")),
    ):
        if ok:
            lines += [f"## {title}", "", f"![{title}](figures/{file})", ""]
        if ok and file == "label_noise.png":
            lines += [NOISE_CAPTION, ""]
    lines += ["## Test embeddings (PCA of encoder features)", ""]
    for name, d in zip(names, dirs, strict=True):
        if runs.has_checkpoint(d):
            file = f"embedding_{name.replace('/', '_')}.png"
            plot_embedding(d, figures / file)
            lines += [f"![{name}](figures/{file})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
