"""Baselines of the embedded synthetic dataset: the table and the figure of docs/data.md.

* **Raw-pixel linear** (:func:`raw_pixel_baselines`): the project's own evaluation
  protocols from :mod:`mscon.evaluate` on the 3 x S x S pixel values in [0, 1]:
  :func:`~mscon.evaluate.linear_probe` (multinomial logistic regression on
  standardised inputs, L2 chosen on the val split) for the categorical columns and
  :func:`~mscon.evaluate.linear_regression` (ridge, alpha chosen on val) for
  ``angle``. Split: of ``make_synthetic(8000, seed)``, images 0-4799 train,
  4800-5999 val, 6000-7999 test. *Chance* is the share of the most frequent class
  among the test images.
* **Small CNN** (:func:`cnn_baselines`): a check that every attribute survives the
  default augmentation and is learnable at 32 px; trained on one ``simclr`` view per
  image of the first 4,200 of ``make_synthetic(6000, seed)``, tested on the other
  1,800 (unaugmented), for 12 and 30 epochs.

Commands (``--table`` takes about 8 minutes on two CPU cores)::

    python benchmarks/synthetic_baselines.py --table [--out baselines.json]
    python benchmarks/synthetic_baselines.py --grid docs/figures/synthetic_examples.png
    python benchmarks/synthetic_baselines.py --time 20000 [--image-size 64]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mscon.data.augment import MEAN, STD, ViewAugment, make_views, to_float
from mscon.data.synthetic import ATTRIBUTES, make_synthetic, render
from mscon.evaluate import linear_probe, linear_regression

EPOCHS = (12, 30)


def raw_pixel_baselines(
    train: int = 4800, val: int = 1200, test: int = 2000, seed: int = 0, image_size: int = 32
) -> dict[str, dict[str, float]]:
    """Chance level and raw-pixel linear probes per column, with mscon.evaluate's protocols.

    Images ``[0, train)`` train, ``[train, train + val)`` choose the L2 / ridge
    strength, the last ``test`` are tested (all of ``make_synthetic(train + val +
    test, seed)``).

    Returns:
        {column: {"classes", "chance" (% of the most frequent test class),
        "linear" (% top-1), "l2" (the strength chosen on val)}} and for ``angle``
        {"linear_r2", "alpha"}.
    """
    data = make_synthetic(train + val + test, seed=seed, image_size=image_size)
    x = data.images.reshape(len(data), -1).float() / 255
    parts = {
        "train": slice(0, train),
        "val": slice(train, train + val),
        "test": slice(train + val, None),
    }
    xs = {name: x[rows] for name, rows in parts.items()}
    results: dict[str, dict[str, float]] = {}
    for column in data.columns():
        ys = {name: data.labels[column][rows] for name, rows in parts.items()}
        if data.is_continuous(column):
            out = linear_regression(
                xs["train"], ys["train"], xs["test"], ys["test"], xs["val"], ys["val"]
            )
            results[column] = {"linear_r2": out["r2"], "alpha": out["alpha"]}
            continue
        out = linear_probe(
            xs["train"], ys["train"], xs["test"], ys["test"], xs["val"], ys["val"], seed=seed
        )
        counts = torch.bincount(ys["test"], minlength=len(data.classes[column]))
        results[column] = {
            "classes": len(data.classes[column]),
            "chance": float(counts.max()) / test * 100,
            "linear": out["top1"],
            "l2": out["l2"],
        }
    return results


def cnn_baselines(
    train: int = 4200,
    test: int = 1800,
    seed: int = 0,
    image_size: int = 32,
    epochs: int = 12,
    kind: str = "simclr",
) -> dict[str, float]:
    """Test accuracy of a small supervised CNN trained on views of the default recipe.

    Four conv blocks, one linear head per attribute (and a regression head for
    ``angle``), trained jointly with cross-entropy (+ MSE) on one
    ``ViewAugment(kind)`` view per image, evaluated on unaugmented test images.
    About 80 s for 12 epochs on two CPU cores.

    Returns:
        {column: top-1 % (categorical) or R^2 (angle)}.
    """
    torch.manual_seed(seed)
    data = make_synthetic(train + test, seed=seed, image_size=image_size)
    columns = list(ATTRIBUTES)
    labels = data.label_matrix(columns)
    angle = data.labels["angle"]
    angle = (angle - angle[:train].mean()) / angle[:train].std()

    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    trunk = nn.Sequential(
        block(3, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2),
        block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    sizes = [len(data.classes[c]) for c in columns]
    head = nn.Linear(128, sum(sizes) + 1)
    model = nn.Sequential(trunk, head)
    steps = epochs * math.ceil(train / 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    augment = [ViewAugment(image_size, kind)]
    generator = torch.Generator().manual_seed(seed)
    bounds = np.cumsum([0, *sizes])
    model.train()
    for _ in range(epochs):
        order = torch.randperm(train, generator=generator)
        for start in range(0, train, 128):
            index = order[start : start + 128]
            views = make_views(data.images[index], augment, generator)[:, 0]
            out = model(views)
            loss = nn.functional.mse_loss(out[:, -1], angle[index])
            for k in range(len(columns)):
                logits = out[:, bounds[k] : bounds[k + 1]]
                loss = loss + nn.functional.cross_entropy(logits, labels[index, k])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        out = torch.cat(
            [model(to_float(data.images[i : i + 500])) for i in range(train, train + test, 500)]
        )
    results = {}
    for k, column in enumerate(columns):
        predicted = out[:, bounds[k] : bounds[k + 1]].argmax(1)
        results[column] = float((predicted == labels[train:, k]).float().mean()) * 100
    residual = ((out[:, -1] - angle[train:]) ** 2).sum()
    results["angle"] = float(1 - residual / ((angle[train:] - angle[train:].mean()) ** 2).sum())
    return results


def table(linear: dict[str, dict[str, float]], cnn: dict[int, dict[str, float]]) -> str:
    """The markdown table of docs/data.md from the two baselines' results."""
    header = " | ".join(
        f"small CNN, {e} epochs" if i == 0 else f"{e} epochs" for i, e in enumerate(cnn)
    )
    lines = [
        f"| column | classes | chance | raw-pixel linear | {header} |",
        "|---" * (4 + len(cnn)) + "|",
    ]
    for column, r in linear.items():
        if "linear_r2" in r:
            trained = " | ".join(f"R² {cnn[e][column]:.2f}" for e in cnn)
            lines.append(
                f"| `{column}` | continuous | R² 0 | R² {r['linear_r2']:.2f} | {trained} |"
            )
            continue
        trained = " | ".join(f"{cnn[e][column]:.1f} %" if column in cnn[e] else "-" for e in cnn)
        lines.append(
            f"| `{column}` | {r['classes']:.0f} | {r['chance']:.1f} % | "
            f"{r['linear']:.1f} % | {trained} |"
        )
    return "\n".join(lines)


def save_grid(path: str | Path, seed: int = 0, image_size: int = 32, views: int = 9) -> Path:
    """Write the example figure of docs/data.md: labelled images and augmented views.

    Args:
        path: PNG file to write.
        seed: generation seed.
        image_size: side of the rendered images (shown enlarged).
        views: augmented views shown per image in the lower rows (default recipe).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = make_synthetic(96, seed=seed, image_size=image_size)
    rows, cols, aug_rows = 6, 10, 3
    fig, axes = plt.subplots(rows + aug_rows, cols, figsize=(cols * 1.15, (rows + aug_rows) * 1.3))
    for i, ax in enumerate(axes[:rows].flat):
        ax.imshow(data.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        names = [data.classes[c][int(data.labels[c][i])] for c in ATTRIBUTES]
        angle = float(data.labels["angle"][i])
        ax.set_title(f"{names[0]} {names[1]}\n{names[2]} {names[3]} {angle:.0f}°", fontsize=6)
    augment = ViewAugment(image_size, "simclr")
    generator = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for r in range(aug_rows):
        image = data.images[rows * cols + r]
        batch = image.unsqueeze(0).repeat(views, 1, 1, 1)
        out = (augment(batch, generator) * std + mean).clamp(0, 1)
        axes[rows + r, 0].imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[rows + r, 0].set_title("original", fontsize=6)
        for v in range(min(views, cols - 1)):
            axes[rows + r, v + 1].imshow(out[v].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[rows + r, v + 1].set_title(f"view {v + 1}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"mscon synthetic dataset ({image_size} px): shape colour / size pattern angle; "
        "bottom rows: default 'simclr' views",
        fontsize=8,
    )
    fig.tight_layout()
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", metavar="PNG", help="write the example figure to this PNG")
    parser.add_argument(
        "--table", action="store_true", help="print the raw-pixel linear and small-CNN baselines"
    )
    parser.add_argument("--out", metavar="FILE.json", help="also write --table's results as JSON")
    parser.add_argument("--time", type=int, metavar="N", help="time generating N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.out and not args.table:
        parser.error("--out needs --table")
    if not (args.grid or args.table or args.time):
        parser.error("nothing to do: give --table, --grid PNG and/or --time N")
    if args.grid:
        print(f"wrote {save_grid(args.grid, args.seed, args.image_size)}", flush=True)
    if args.time:
        start = time.perf_counter()
        render(args.time, args.seed, args.image_size)
        print(f"{args.time} images at {args.image_size} px: {time.perf_counter() - start:.2f} s")
    if args.table:
        start = time.perf_counter()
        cnn = {}
        for e in EPOCHS:
            cnn[e] = cnn_baselines(seed=args.seed, image_size=args.image_size, epochs=e)
            print(
                f"small CNN, {e} epochs, done at {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
        linear = raw_pixel_baselines(seed=args.seed, image_size=args.image_size)
        print(f"raw-pixel linear, done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(table(linear, cnn))
        print(f"(seed {args.seed}, {args.image_size} px, {time.perf_counter() - start:.0f} s)")
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "seed": args.seed,
                "image_size": args.image_size,
                "raw_pixel_split": {"train": 4800, "val": 1200, "test": 2000},
                "cnn_split": {"train": 4200, "test": 1800},
                "protocol": "mscon.evaluate.linear_probe / linear_regression on raw pixels",
            }
            record = {"meta": meta, "raw_pixel": linear, "cnn": {str(e): r for e, r in cnn.items()}}
            out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
