"""Helpers for the loss tests: random labels with awkward patterns, tolerances, loop
references shared by several test files."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

from losses import reference

LABEL_PATTERNS = ["random", "singletons", "missing", "one_class", "dense"]

# Hypothesis settings and strategies of the float64 loop-reference tests.
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
TOL = 1e-10

seeds = st.integers(0, 2**31 - 1)
temps = st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0, 2.0])


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


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def raises(pattern: str):
    return pytest.raises(ValueError, match=re.escape(pattern))


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def mixed_reference(features, labels, lam: float, tau: float) -> tuple[float, float]:
    """(loss, floor) of the instance-mixed target by loops: views flattened image-major."""
    feats = features.tolist()
    lab = labels.tolist()
    views, image = [], []
    for b, per_image in enumerate(feats):
        for v in per_image:
            views.append(v)
            image.append(b)
    n = len(views)

    def target(i: int) -> dict[int, float]:
        if lab[image[i]] < 0:
            return {}
        pos = [a for a in range(n) if a != i and lab[image[a]] == lab[image[i]]]
        own = [a for a in range(n) if a != i and image[a] == image[i]]
        if not pos:
            return {}
        q = {a: (1 - lam) / len(pos) if own else 1 / len(pos) for a in pos}
        for a in own:
            q[a] += lam / len(own)
        return q

    def weight(i: int, a: int) -> float:
        return target(i).get(a, 0.0)

    loss = reference.contrastive_loss(views, image, weight, tau)
    entropies = [
        -sum(p * math.log(p) for p in target(i).values() if p > 0) for i in range(n) if target(i)
    ]
    floor = sum(entropies) / len(entropies) if entropies else 0.0
    return loss, floor


def run_ranks(worker, tmp_path, world: int = 2, timeout: float = 180) -> list[dict]:
    """Run ``worker`` (a script taking RANK WORLD TMPDIR) as ``world`` gloo processes;
    return what each rank saved as TMPDIR/rank{R}.pt."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[2]  # src for mscon, tests for rank_worker
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root / "tests")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(r), str(world), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
