"""Helpers for the loss tests: random labels with awkward patterns."""

from __future__ import annotations

import torch

LABEL_PATTERNS = ["random", "singletons", "missing", "one_class", "dense"]


def random_labels(gen: torch.Generator, b: int, pattern: str, num_classes: int = 3) -> torch.Tensor:
    """(B,) labels: 'random' (some -1), 'singletons' (every class once), 'missing' (all -1),
    'one_class' (all the same), 'dense' (no -1)."""
    if pattern == "missing":
        return torch.full((b,), -1, dtype=torch.long)
    if pattern == "singletons":
        return torch.randperm(b, generator=gen) + 5
    if pattern == "one_class":
        return torch.full((b,), 7, dtype=torch.long)
    labels = torch.randint(0, num_classes, (b,), generator=gen)
    if pattern == "random":
        drop = torch.rand(b, generator=gen) < 0.3
        labels = labels.masked_fill(drop, -1)
    return labels
