"""benchmarks/label_consistency.py: kNN agreement of labels with features, 0 = chance."""

from __future__ import annotations

import torch
from label_consistency import consistency


def test_clustered_labels_are_fully_consistent_and_random_ones_are_at_chance():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(50)
    centres = torch.eye(8)[:4] * 10
    features = centres[labels] + torch.randn(200, 8, generator=gen)
    assert consistency(features, labels) == 1.0
    shuffled = labels[torch.randperm(200, generator=gen)]
    assert abs(consistency(features, shuffled)) < 0.15
    half = labels.clone()
    half[::2] = shuffled[::2]  # half the labels random: agreement falls, stays above chance
    assert 0.2 < consistency(features, half) < 0.9


def test_the_script_reports_the_noise_estimate_of_a_run(tmp_path, tiny_config):
    from label_consistency import run_consistency

    from mscon.train import train

    run_dir = train(tiny_config("mscon", **{"train.epochs": 1}))
    values = run_consistency(run_dir, noise=True)
    assert set(values) == {"shape", "color", "size", "shape noise", "color noise", "size noise"}
    assert all(0.0 <= values[f"{c} noise"] <= 1.0 for c in ("shape", "color", "size"))
