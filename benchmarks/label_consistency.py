"""How consistent are a run's training labels with its trained encoder? (issue 5 lead)

For each training similarity, the leave-one-out kNN agreement (k = 20, cosine,
majority vote) between the labels training saw (``data.corrupt`` applied) and the
frozen encoder's features of the train split, rescaled so that 0 is chance (the
sum of squared class frequencies) and 1 is perfect agreement. Unlike the heads'
losses, this does not depend on whether a projection head collapsed.

With ``--noise`` it also prints, per similarity, the estimated share of random
labels that MSCon's ``consistency`` weighting uses
(:func:`mscon.methods.consistency.label_noise`, k = 100, purest 0.1) on the first
4,096 images of the train split (the default bank's size).

Examples (docs/results.md):
    python benchmarks/label_consistency.py runs/weights/relative_c0{00,25,50}/seed0 \
        runs/weights/relative_c100/seed0
    python benchmarks/label_consistency.py --noise runs/weights_wn/relative_c0{00,25,50}/seed0 \
        runs/weights_wn/relative_c100/seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def consistency(features: torch.Tensor, labels: torch.Tensor, k: int = 20) -> float:
    """Leave-one-out kNN agreement of ``labels`` (n,) on ``features`` (n, D), 0 = chance."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    similarity = f @ f.T
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour
    neighbours = similarity.topk(min(k, len(f) - 1), dim=1).indices
    predicted = torch.mode(labels[neighbours], dim=1).values
    agreement = (predicted == labels).float().mean().item()
    frequency = torch.bincount(labels).float() / len(labels)
    chance = (frequency**2).sum().item()
    return (agreement - chance) / (1 - chance) if chance < 1 else 0.0


def run_consistency(run_dir: Path, noise: bool = False) -> dict[str, float]:
    from mscon.data import load_experiment_data
    from mscon.data.augment import to_float
    from mscon.evaluate import extract_features
    from mscon.methods.consistency import nearest, noise_from_neighbours
    from mscon.methods.mscon import MSConConfig
    from mscon.runs import encoder_from_checkpoint, load_run_config

    config = load_run_config(run_dir)
    encoder = encoder_from_checkpoint(run_dir, "last")
    data = load_experiment_data(config.data, config.seed).select("train")
    features = torch.as_tensor(
        extract_features(encoder, data.images, to_float, batch_size=256, device="cpu")
    )
    bank = MSConConfig.model_fields["consistency_bank"].default
    near = nearest(features[:bank], torch.arange(min(bank, len(features))), 100) if noise else None
    result = {}
    for column in config.data.similarities:
        labels = torch.as_tensor(data.labels[column]).long()
        known = labels >= 0
        result[column] = consistency(features[known], labels[known])
        if near is not None:
            result[f"{column} noise"] = noise_from_neighbours(
                near, labels[:bank], data.num_classes(column)
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with checkpoints/)")
    parser.add_argument(
        "--noise", action="store_true", help="also the consistency weighting's noise estimate"
    )
    args = parser.parse_args()
    for run_dir in args.runs:
        values = run_consistency(run_dir, args.noise)
        cells = ", ".join(f"{c} {v:.2f}" for c, v in values.items())
        print(f"{run_dir}: {cells}", flush=True)


if __name__ == "__main__":
    main()
