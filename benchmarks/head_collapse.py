"""Track each MSCon head's collapse over training (issue 15); print a table per condition.

Trains ``mscon`` runs with the library's own builders (``build_model``,
``build_optimizer``, the views and the learning-rate schedule of ``mscon.train``,
the same data order and augmentation seeds) in a loop of its own that stops every
``--every`` steps to measure, per head, on a FIXED batch (the val split's first
``--batch`` images, two views drawn with a fixed generator, the model in eval mode):

* ``r``: plain SupCon L_out at the run's temperature on the head's output, placed
  between the batch's floor H = mean log|P(i)| (0) and log(N - 1) (1), the loss of
  a head that maps every view to one point. The yardstick ignores the training
  loss (weighting, instance_mix, remedies), so every variant is measured alike.
* ``mean`` / ``spread``: the norm of the mean L2-normalised embedding and the RMS
  distance of the embeddings from it (mean² + spread² = 1; collapse: mean -> 1);
  ``raw_mean``: the norm of the mean raw (unnormalised) output;
* ``rank``: the effective rank (exp of the entropy of the normalised singular
  values) of the L2-normalised embeddings (1 for a collapsed head);
* ``g_head`` / ``g_enc``: the gradient norm of that head's plain SupCon loss on the
  fixed batch reaching the head's parameters and the encoder's.

Examples:
    # does the 3-class size head collapse, and does a 3-class grouping of color?
    python benchmarks/head_collapse.py --out runs/collapse --seeds 0 \\
        --variant base --variant lowtemp method.temperature=0.05

    # the heads of finished runs (e.g. a method_grid.py study), at their last checkpoint:
    python benchmarks/head_collapse.py --runs runs/study/*/seed*

    # how low r can get for a 3-class similarity its features separate to 50..100 %:
    python benchmarks/head_collapse.py --ideal 0.5 0.6 0.7 0.8 0.9 1.0
    # ... and for an 8-class one:
    python benchmarks/head_collapse.py --ideal 0.4 0.5 0.6 --classes 8

Outputs OUT/LABEL/seedN.json (every measurement) and OUT/collapse.md; ``--runs``
prints one row per run and head.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mscon.config import Config, load_config
from mscon.data import load_experiment_data
from mscon.data.augment import ViewAugment, make_views
from mscon.losses.functional import l2_normalize, supcon_loss
from mscon.methods import Method
from mscon.train import build_model, build_optimizer, lr_scheduler, warmup_cosine

VIEW_SEED = 20260415  # the fixed batch's views: the same for every variant and seed


def fixed_batch(config: Config, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split's first ``size`` images in two fixed views, and their labels.

    Returns:
        views (B, 2, 3, S, S) float, labels (B, C) int64 (clean: ``data.corrupt`` is
        left out) for ``data.similarities``.
    """
    data = load_experiment_data(config.data, config.seed, clean=True).select("val")
    images = data.images[:size]
    labels = data.label_matrix(config.data.similarities)[:size]
    recipes = config.augment.recipes()[:1] * 2
    augments = [
        ViewAugment(config.data.image_size, kind, **config.augment.overrides) for kind in recipes
    ]
    generator = torch.Generator().manual_seed(VIEW_SEED)
    return make_views(images, augments, generator), labels


def head_outputs(method: Method, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features (B*V, D) and raw head outputs (C, B, V, d) of ``views``."""
    batch, num_views = views.shape[:2]
    features = method.encoder(views.flatten(0, 1))
    outputs = method.heads(features)
    return features, outputs.view(outputs.shape[0], batch, num_views, -1)


def relative_loss(loss: float, labels: torch.Tensor, views: int) -> float:
    """r = (L - H) / (log(N - 1) - H), H = mean over anchors with a positive of log|P(i)|."""
    known = labels[labels >= 0]
    counts = torch.bincount(known)[known]
    positives = (views * counts - 1).double()
    floor = positives[positives > 0].log().mean().item()
    chance = math.log(views * len(labels) - 1)
    return (loss - floor) / (chance - floor)


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of ``z`` (n, d): 1 when every row
    points the same way, up to d when the rows fill every direction equally."""
    singular = torch.linalg.svdvals(z.double())
    p = singular / singular.sum().clamp_min(1e-300)
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def ideal_head_r(
    accuracy: float,
    classes: int = 3,
    batch: int = 256,
    temperature: float = 0.1,
    seed: int = 0,
) -> tuple[float, float]:
    """r of an idealised head fed by a classifier of the given top-1 ``accuracy``.

    ``batch`` images of ``classes`` balanced classes; each is predicted right with
    probability ``accuracy``, else as one of the other classes at random; both views
    of an image go to normalize(e_0 + eps v_k), v_k the corner of its predicted class
    on a simplex orthogonal to e_0 (so eps sets how far apart the classes sit). Returns
    (r, eps) at the best eps of a grid: how far below 1 a head can get when the
    features it reads separate the classes only that well. Not a bound (a head may
    place uncertain images between the corners); a model of how the yardstick
    depends on separability.

    Example:
        >>> round(ideal_head_r(1.0)[0], 3) < 0.01 < round(ideal_head_r(0.5)[0], 3)
        True
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch) % classes
    wrong = torch.rand(batch, generator=generator) >= accuracy
    shift = torch.randint(1, classes, (batch,), generator=generator)
    predicted = torch.where(wrong, (labels + shift) % classes, labels)
    corners = torch.zeros(classes, classes + 1, dtype=torch.float64)
    corners[:, 1:] = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    apex = torch.zeros(classes + 1, dtype=torch.float64)
    apex[0] = 1.0
    best = (math.inf, 0.0)
    for eps in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 4.0, 8.0):
        z = l2_normalize(apex + eps * corners[predicted]).unsqueeze(1).expand(-1, 2, -1)
        loss = supcon_loss(z, labels, temperature=temperature).item()
        best = min(best, (relative_loss(loss, labels, 2), eps))
    return best


def measure(
    method: Method, views: torch.Tensor, labels: torch.Tensor, temperature: float
) -> list[dict[str, float]]:
    """Per head: r, loss, mean, spread, raw_mean, rank, g_head, g_enc on the fixed batch."""
    was_training = method.training
    method.eval()
    encoder_params = [p for p in method.encoder.parameters() if p.requires_grad]
    _, outputs = head_outputs(method, views)
    rows = []
    for c, head in enumerate(method.heads.heads):
        g = outputs[c]
        loss = supcon_loss(l2_normalize(g), labels[:, c], temperature=temperature)
        head_params = [p for p in head.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, head_params + encoder_params, retain_graph=True)
        flat = l2_normalize(g.detach().flatten(0, 1))
        mean = flat.mean(0)
        rows.append(
            {
                "r": relative_loss(loss.item(), labels[:, c], g.shape[1]),
                "loss": loss.item(),
                "mean": mean.norm().item(),
                "spread": (flat - mean).pow(2).sum(1).mean().sqrt().item(),
                "raw_mean": g.detach().flatten(0, 1).mean(0).norm().item(),
                "rank": effective_rank(flat),
                "g_head": _norm(grads[: len(head_params)]),
                "g_enc": _norm(grads[len(head_params) :]),
            }
        )
    method.train(was_training)
    return rows


def _norm(grads: tuple[torch.Tensor, ...]) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))


def measure_run(run_dir: Path, batch: int = 256) -> list[dict[str, float]]:
    """:func:`measure` on the heads of an ``mscon`` run folder's last checkpoint."""
    from mscon import runs

    config = runs.load_run_config(run_dir)
    classes = json.loads((run_dir / "classes.json").read_text())
    method = build_model(config, [len(classes[c]) for c in config.data.similarities])
    method.load_state_dict(runs.load_checkpoint(runs.checkpoint_path(run_dir))["model"])
    views, labels = fixed_batch(config, batch)
    return measure(method, views, labels, config.method.temperature)  # type: ignore[attr-defined]


def runs_table(run_dirs: list[Path], batch: int = 256) -> str:
    """Markdown: r, mean norm and effective rank of every head of every run."""
    from mscon import runs

    lines = ["| run | head | r | mean | rank |", "|---|---|---|---|---|"]
    for run_dir in run_dirs:
        columns = runs.load_run_config(run_dir).data.similarities
        for column, head in zip(columns, measure_run(run_dir, batch), strict=True):
            lines.append(
                f"| {run_dir} | {column} | {head['r']:.3f} | {head['mean']:.3f} | "
                f"{head['rank']:.1f} |"
            )
    return "\n".join(lines)


def train_and_measure(config: Config, every: int, batch: int = 256) -> dict[str, Any]:
    """Train ``config`` (method ``mscon``) as ``mscon.train`` does, measuring every ``every``
    steps (and at step 0 and the last step); returns the columns and the records."""
    if config.method.name != "mscon":
        raise SystemExit(f"head_collapse: method.name must be mscon, got {config.method.name}")
    device = config.train.torch_device()
    data = load_experiment_data(config.data, config.seed).select("train")
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns)
    t = config.train
    steps_per_epoch = len(data) // t.batch_size
    total = t.epochs * steps_per_epoch
    torch.manual_seed(config.seed)
    method = build_model(config, [len(data.classes[c]) for c in columns]).to(device)
    optimizer = build_optimizer(config, method)
    warmup = round(t.warmup_epochs * steps_per_epoch)
    frozen = round(method.task_weight_warmup_epochs * steps_per_epoch)
    scheduler = lr_scheduler(
        optimizer,
        lambda s: warmup_cosine(s, warmup, total),
        lambda s: 0.0 if s < frozen else warmup_cosine(s, warmup, total),
    )
    augments = [
        ViewAugment(config.data.image_size, kind, **config.augment.overrides)
        for kind in method.view_recipes(config.augment)
    ]
    val_views, val_labels = fixed_batch(config, batch)
    val_views, val_labels = val_views.to(device), val_labels.to(device)
    temperature = config.method.temperature  # type: ignore[attr-defined]
    records = [{"step": 0, "heads": measure(method, val_views, val_labels, temperature)}]
    method.train()
    order = torch.empty(0, dtype=torch.long)
    for step in range(total):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0:
            generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
            order = torch.randperm(len(data), generator=generator)
        index = order[position * t.batch_size : (position + 1) * t.batch_size]
        generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + step)
        views = make_views(data.images[index].to(device), augments, generator)
        loss = method(views, labels[index].to(device), index.to(device))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            method.after_step(step + 1, total)
        if (step + 1) % every == 0 or step + 1 == total:
            record = {"step": step + 1, "loss": loss.item(), **method.log_values()}
            record["heads"] = measure(method, val_views, val_labels, temperature)
            records.append(record)
    return {"columns": columns, "total_steps": total, "records": records}


def value_at(run: dict[str, Any], share: float, head: int, key: str) -> float:
    """``key`` of head ``head`` at the measurement nearest to ``share`` of training."""
    step = share * run["total_steps"]
    record = min(run["records"], key=lambda r: abs(r["step"] - step))
    return record["heads"][head][key]


def summarise(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: per variant and head, r at 0 / 25 / 50 / 100 % of training, the end's
    mean embedding norm, effective rank and gradient norms (mean over seeds)."""
    lines = [
        "| variant | head | r at 0 / 25 / 50 / 100 % | r ≤ 0.9 at end | mean at end | "
        "rank at end | g_head at 25 / 100 % | g_enc at 25 / 100 % | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        for c, column in enumerate(runs[0]["columns"]):

            def avg(share: float, key: str, runs: list = runs, c: int = c) -> float:
                return statistics.mean(value_at(run, share, c, key) for run in runs)

            learned = sum(value_at(run, 1.0, c, "r") <= 0.9 for run in runs)
            lines.append(
                f"| {label} | {column} | "
                + " / ".join(f"{avg(s, 'r'):.2f}" for s in (0, 0.25, 0.5, 1))
                + f" | {learned}/{len(runs)} | {avg(1, 'mean'):.2f} | {avg(1, 'rank'):.1f} | "
                f"{avg(0.25, 'g_head'):.3f} / {avg(1, 'g_head'):.3f} | "
                f"{avg(0.25, 'g_enc'):.3f} / {avg(1, 'g_enc'):.3f} | {len(runs)} |"
            )
    return "\n".join(lines)


def trajectory(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: r of every head at every measured step (first seed of each variant)."""
    lines = []
    for label, runs in results.items():
        run = runs[0]
        lines.append(f"{label} (seed {run['seed']}), r per head at each step:")
        lines.append("| step | " + " | ".join(run["columns"]) + " |")
        lines.append("|---|" + "---|" * len(run["columns"]))
        for record in run["records"]:
            cells = " | ".join(f"{h['r']:.3f}" for h in record["heads"])
            lines.append(f"| {record['step']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder of the measurements (with --variant)")
    parser.add_argument("--runs", type=Path, nargs="+", help="measure these mscon run folders")
    parser.add_argument("--base", default="synthetic", help="base config (file or shipped name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--every", type=int, default=10, help="steps between measurements")
    parser.add_argument("--batch", type=int, default=256, help="images in the fixed val batch")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("LABEL", "KEY=VALUE"),
        help="a label and its overrides",
    )
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument(
        "--ideal",
        type=float,
        nargs="+",
        metavar="ACCURACY",
        help="print r of an idealised head at these classifier accuracies (0-1)",
    )
    parser.add_argument(
        "--classes", type=int, help="the idealised head's number of classes (with --ideal; 3)"
    )
    args = parser.parse_args()
    if args.classes is not None and not args.ideal:
        parser.error("--classes is read only with --ideal")
    if args.ideal:
        lines = ["| accuracy | r of the idealised head | eps |", "|---|---|---|"]
        for accuracy in args.ideal:
            r, eps = ideal_head_r(accuracy, classes=args.classes or 3, batch=args.batch)
            lines.append(f"| {100 * accuracy:.0f} % | {r:.3f} | {eps:g} |")
        print("\n".join(lines))
        return
    if args.runs:
        print(runs_table(args.runs, args.batch))
        return
    if not (args.variant and args.out):
        parser.error("give --out and at least one --variant, or --runs")
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:  # seeds outermost: a cut-short grid still compares variants
        for label, *overrides in args.variant:
            path = args.out / label / f"seed{seed}.json"
            if path.is_file():
                run = json.loads(path.read_text())
            else:
                start = time.perf_counter()
                items = [*args.overrides, *overrides, f"seed={seed}", "train.progress=false"]
                run = train_and_measure(load_config(args.base, items), args.every, args.batch)
                run.update(seed=seed, overrides=items)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(run))
                print(f"{label} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            results.setdefault(label, []).append(run)
    table = summarise(results)
    command = "python benchmarks/head_collapse.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = f"{table}\n\n{trajectory(results)}\nseeds {args.seeds}; {command}\n"
    (args.out / "collapse.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
