"""Slow, independent reference of the f-MICL loss (SPEC section 6).

Explicit Python loops over every ordered pair of views, with 0-dim float64
tensors so that autograd gives the reference gradient. The divergences are
written from SPEC's table as functions of u (not log u), the squared distance
as the sum of squared differences (not 2 - 2 x.y); nothing here calls mscon.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NAMES = ("kl", "js", "pearson", "sq_hellinger", "tsallis", "vlc")


def f(name: str, u: Tensor, a: float = 1.5) -> Tensor:
    """f(u) from SPEC's table."""
    if name == "kl":
        return u * torch.log(u)
    if name == "js":
        return u * torch.log(u) - (1 + u) * torch.log((1 + u) / 2)
    if name == "pearson":
        return (u - 1) ** 2
    if name == "sq_hellinger":
        return (torch.sqrt(u) - 1) ** 2
    if name == "tsallis":
        return (u**a - 1) / (a - 1)
    if name == "vlc":
        return (u - 1) ** 2 / (u + 1)
    raise KeyError(name)


def f_prime(name: str, u: Tensor, a: float = 1.5) -> Tensor:
    """f'(u) from SPEC's table."""
    if name == "kl":
        return torch.log(u) + 1
    if name == "js":
        return torch.log(2 * u / (1 + u))
    if name == "pearson":
        return 2 * (u - 1)
    if name == "sq_hellinger":
        return 1 - u ** (-0.5)
    if name == "tsallis":
        return a * u ** (a - 1) / (a - 1)
    if name == "vlc":
        return (u - 1) * (u + 3) / (u + 1) ** 2
    raise KeyError(name)


def conjugate(name: str, u: Tensor, a: float = 1.5) -> Tensor:
    """f*(f'(u)) from SPEC's table."""
    if name == "kl":
        return u
    if name == "js":
        return torch.log((1 + u) / 2)
    if name == "pearson":
        return u**2 - 1
    if name == "sq_hellinger":
        return torch.sqrt(u) - 1
    if name == "tsallis":
        return u**a + 1 / (a - 1)
    if name == "vlc":
        return (u - 1) * (3 * u + 1) / (u + 1) ** 2
    raise KeyError(name)


def fmicl(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    name: str = "kl",
    alpha: float = 40.0,
    sigma: float = math.sqrt(0.5),
    mu: float = 1.0,
    a: float = 1.5,
) -> Tensor:
    """The pooled-pair f-MICL loss of features (B, V, d); differentiable (float64).

    Positives: ordered pairs of distinct views of the same image (or same label);
    negatives: ordered pairs of views of different images (different labels);
    views with label -1 are in no pair; each term the mean over its pairs, 0 if none.
    """
    b, v, _ = features.shape
    views, keys = [], []
    for i in range(b):
        if labels is not None and int(labels[i]) < 0:
            continue
        for j in range(v):
            x = features[i, j]
            views.append(x / torch.sqrt((x * x).sum()))
            keys.append(i if labels is None else int(labels[i]))
    lo, hi = mu * math.exp(-2 / sigma**2), mu
    positives, negatives = [], []
    for p in range(len(views)):
        for q in range(len(views)):
            if p == q:
                continue
            sq_dist = sum((views[p][k] - views[q][k]) ** 2 for k in range(views[p].shape[0]))
            u = torch.clamp(mu * torch.exp(-sq_dist / (2 * sigma**2)), lo, hi)
            if keys[p] == keys[q]:
                positives.append(-f_prime(name, u, a))
            else:
                negatives.append(conjugate(name, u, a))
    zero = features.sum() * 0
    pos = sum(positives) / len(positives) if positives else zero
    neg = sum(negatives) / len(negatives) if negatives else zero
    return pos + alpha * neg
