"""The weighting variants of the MSCon-weights study: ``normalized`` and ``excess``."""

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from losses import reference
from losses.helpers import random_labels
from mscon.losses import MSConLoss, TaskWeighting

F64 = torch.float64


def floor_reference(labels: list[int], views: int) -> float:
    """Mean over valid anchors (one per view) of log|P(i)|, by explicit loops."""
    logs = []
    for i, y in enumerate(labels):
        for _ in range(views):
            if y < 0:
                continue
            positives = sum(views for k, o in enumerate(labels) if o == y and k != i) + views - 1
            if positives > 0:
                logs.append(math.log(positives))
    return sum(logs) / len(logs) if logs else 0.0


def test_normalized_value_and_gradients():
    w = TaskWeighting(3, "normalized").double()
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -0.3, 1.0]))
    losses = torch.tensor([2.0, 1.0, 4.0], dtype=F64, requires_grad=True)
    valid = torch.tensor([True, True, False])
    total = w(losses, valid)
    s = w.log_vars.detach()
    m = 3 * torch.softmax(-s, 0)
    assert torch.allclose(w.task_weights(), m)
    assert w.task_weights().sum().item() == pytest.approx(3.0)
    expected = sum(m[c] * losses[c] + math.exp(-s[c]) * losses[c] + s[c] / 2 for c in (0, 1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    total.backward()
    # the encoder sees only the detached multipliers; s sees only the detached losses
    assert torch.allclose(losses.grad, torch.tensor([m[0], m[1], 0.0], dtype=F64))
    expected_s = torch.tensor([-math.exp(-s[0]) * 2 + 0.5, -math.exp(-s[1]) * 1 + 0.5, 0.0])
    assert torch.allclose(w.log_vars.grad, expected_s.to(F64))


def test_normalized_weights_converge_to_inverse_losses():
    w = TaskWeighting(3, "normalized").double()
    fixed = torch.tensor([0.5, 1.0, 4.0], dtype=F64)
    opt = torch.optim.SGD(w.parameters(), lr=0.2)
    for _ in range(3000):
        opt.zero_grad()
        w(fixed, torch.ones(3, dtype=torch.bool)).backward()
        opt.step()
    assert torch.allclose(w.log_vars.detach(), torch.log(2 * fixed), atol=1e-6)
    weights = w.task_weights().detach()
    assert torch.allclose(weights, 3 * (1 / fixed) / (1 / fixed).sum(), atol=1e-6)


@pytest.mark.parametrize("pattern", ["random", "singletons", "missing", "one_class", "dense"])
@pytest.mark.parametrize("views", [1, 2, 3])
def test_excess_equals_uncertainty_on_loss_minus_floor(gen, pattern, views):
    b, c = 6, 2
    labels = torch.stack([random_labels(gen, b, pattern), random_labels(gen, b, "random")], 1)
    feats = torch.randn(c, b, views, 4, generator=gen, dtype=F64)
    s = torch.tensor([0.4, -0.7], dtype=F64)
    loss_fn = MSConLoss(c, temperature=0.3, weighting="excess").double()
    with torch.no_grad():
        loss_fn.log_vars.copy_(s)
    _, per_sim = reference.mscon(list(feats), labels, 0.3, mode="equal")
    total = 0.0
    for k in range(c):
        col = labels[:, k].tolist()
        if not reference._has_valid_anchor(col, views):
            continue
        excess = per_sim[k] - floor_reference(col, views)
        assert excess >= -1e-12  # L_out never goes below its floor
        total += math.exp(-s[k]) * excess + s[k] / 2
    assert loss_fn(feats, labels).item() == pytest.approx(float(total), abs=1e-10)
    assert loss_fn.task_weights().tolist() == pytest.approx(torch.exp(-s).tolist())


def test_excess_is_zero_for_identical_embeddings_of_one_class():
    loss_fn = MSConLoss(1, temperature=0.1, weighting="excess")
    feats = torch.ones(1, 5, 2, 8)
    labels = torch.zeros(5, 1, dtype=torch.long)
    assert loss_fn(feats, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_gradcheck_excess(gen):
    # (``normalized`` stops gradients on purpose, so finite differences of its value do
    # not match; its gradients are checked analytically above.)
    loss_fn = MSConLoss(2, temperature=0.2, weighting="excess").double()
    feats = torch.randn(2, 4, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor([[0, 1], [0, -1], [1, 1], [-1, 2]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, (f, labels))

    assert gradcheck(fn, (feats, log_vars))
