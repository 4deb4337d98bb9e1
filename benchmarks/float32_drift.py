"""How far float32 training is from itself: the yardstick for comparing K processes with one.

Two measurements on the demo config with ``model.backbone: cnn_small_gn`` (the numbers
quoted in docs/distributed.md):

* ``--gradient``: one batch's parameter gradients in float32 against the same model in
  float64, per tensor (relative norm): what float32 gets right in a single step.
* ``--threads``: two single-process training runs that differ only in their intra-op
  thread count (1 and 2), per tensor of the final checkpoint: how much a change of
  floating-point order alone moves a run.

    python benchmarks/float32_drift.py --gradient --set method.temperature=0.5
    python benchmarks/float32_drift.py --threads --out runs/float32_drift \\
        --set data.synthetic_size=2000 --set train.epochs=3

Prints the tensors with the largest relative difference (and their norms).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

BASE = ["model.backbone=cnn_small_gn", "train.progress=false", "train.tensorboard=false"]


def relative_differences(a: dict, b: dict) -> list[tuple[float, float, str]]:
    """(||a - b|| / ||b||, ||b||, name) of every floating tensor, largest first."""
    rows = []
    for name, want in b.items():
        if want.is_floating_point():
            got, want = a[name].double(), want.double()
            norm = float(want.norm())
            rows.append((float((got - want).norm()) / max(norm, 1e-30), norm, name))
    return sorted(rows, reverse=True)


def gradient_error(overrides: list[str], batch: int = 128) -> list[tuple[float, float, str]]:
    """Float32 against float64 parameter gradients of one demo batch."""
    from mscon.config import load_config
    from mscon.data import load_experiment_data
    from mscon.data.augment import ViewAugment, make_views
    from mscon.train import build_model

    config = load_config("demo", [*BASE, *overrides])
    data = load_experiment_data(config.data, config.seed).select("train")
    columns = list(config.data.similarities)
    labels = data.label_matrix(columns)
    torch.manual_seed(config.seed)
    model = build_model(config, [len(data.classes[c]) for c in columns])
    index = torch.arange(min(batch, len(data)))
    augments = [ViewAugment(config.data.image_size, k) for k in model.view_recipes(config.augment)]
    views = make_views(data.images[index], augments, torch.Generator().manual_seed(0))

    def gradients(m: torch.nn.Module, v: torch.Tensor) -> dict:
        m.zero_grad()
        m(v, labels[index], index)["loss"].backward()
        return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

    exact = copy.deepcopy(model).double()
    return relative_differences(gradients(model, views), gradients(exact, views.double()))


def thread_drift(overrides: list[str], out: Path) -> list[tuple[float, float, str]]:
    """Final checkpoints of two runs that differ only in the thread count."""
    from mscon import runs
    from mscon.config import load_config
    from mscon.train import train

    states = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        config = load_config("demo", [*BASE, *overrides, f"out={out / f'threads{threads}'}"])
        run_dir = train(config, overwrite=True)
        states.append(runs.load_checkpoint(runs.checkpoint_path(run_dir))["model"])
    return relative_differences(states[1], states[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--gradient", action="store_true")
    kind.add_argument("--threads", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/float32_drift"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args(argv)
    rows = gradient_error(args.set) if args.gradient else thread_drift(args.set, args.out)
    for rel, norm, name in rows[: args.top]:
        print(f"{rel:.2e}  (norm {norm:.3g})  {name}")


if __name__ == "__main__":
    main()
