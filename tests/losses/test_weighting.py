"""Task weighting (mscon.losses.weighting): the modes ``uncertainty``, ``temperature``,
``equal``, ``fixed``, ``normalized``, ``excess``, ``relative``, the loss modules' view of
the weighting, and registering a new mode."""

from __future__ import annotations

import math

import pytest
import torch

from losses import reference
from losses.helpers import random_labels
from mscon.losses import (
    WEIGHTING_MODES,
    MSConLoss,
    MultiTaskCELoss,
    SupConLoss,
    TaskWeighting,
    register_weighting_mode,
)
from mscon.losses.weighting import TemperatureWeighting, WeightingMode

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


def test_task_weights_in_every_mode(gen):
    s = torch.tensor([0.5, -1.0, 2.0])
    losses = torch.tensor([1.0, 2.0, 3.0])
    valid = torch.tensor([True, True, True])
    expected = {
        "uncertainty": torch.exp(-s),
        "temperature": torch.ones(3),
        "equal": torch.ones(3),
        "fixed": torch.tensor([0.2, 0.0, 3.0]),
    }
    for mode, want in expected.items():
        w = TaskWeighting(3, mode, [0.2, 0.0, 3.0] if mode == "fixed" else None)
        assert w.log_vars.requires_grad == (mode in ("uncertainty", "temperature"))
        with torch.no_grad():
            w.log_vars.copy_(s)
        if mode not in ("uncertainty", "temperature"):
            w.log_vars.data.zero_()
        torch.testing.assert_close(w.task_weights().detach(), want)
        factors = torch.exp(s) if mode == "temperature" else torch.ones(3)
        torch.testing.assert_close(w.temperature_factors().detach(), factors)
        reg = 0.5 * s.sum() if mode in ("uncertainty", "temperature") else 0.0
        torch.testing.assert_close(w(losses, valid).detach(), (want * losses).sum() + reg)


def test_loss_modules_expose_the_weighting(gen):
    for module in (MSConLoss(3), MultiTaskCELoss([2, 2, 2])):
        assert module.log_vars is module.weighting.log_vars
        assert isinstance(module.log_vars, torch.nn.Parameter) and module.log_vars.shape == (3,)
        with torch.no_grad():
            module.log_vars.copy_(torch.tensor([0.1, 0.2, -0.3]))
        torch.testing.assert_close(module.task_weights(), torch.exp(-module.log_vars))
        names = [n for n, _ in module.named_parameters()]
        assert names == ["weighting.log_vars"]
        assert "weighting.log_vars" in module.state_dict()


def test_temperature_mode_scales_the_temperature(gen):
    feats = torch.randn(1, 6, 2, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0], [0], [1], [1], [2], [-1]])
    m = MSConLoss(1, temperature=0.1, weighting="temperature").double()
    with torch.no_grad():
        m.log_vars.fill_(math.log(3.0))
    got = m(feats, labels)
    want = SupConLoss(0.3)(feats[0], labels[:, 0]) + math.log(3.0) / 2
    assert abs(got.item() - want.item()) < 1e-12


def test_registering_a_new_mode_needs_no_caller_change():
    @register_weighting_mode
    class Normalised(WeightingMode):
        name = "test_normalised"
        learnable = True

        def task_weights(self, w):
            return w.log_vars.numel() * torch.softmax(-w.log_vars, dim=0)

    try:
        m = MSConLoss(2, weighting="test_normalised")
        torch.testing.assert_close(m.task_weights().detach(), torch.ones(2))
        loss = m(torch.ones(2, 3, 2, 4), torch.zeros(3, 2, dtype=torch.long))
        assert abs(loss.item() - 2 * math.log(5)) < 1e-5
    finally:
        del WEIGHTING_MODES["test_normalised"]


def test_temperature_mode_is_bounded_for_a_collapsed_head():
    # Identical projections: the loss is log(N - 1) at any temperature, so only
    # s/2 moves s. Unbounded, s -> -inf and the logits overflow; clamped, s stops.
    m = MSConLoss(1, temperature=0.1, weighting="temperature")
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    feats = torch.ones(1, 8, 2, 4) + 1e-4 * torch.randn(1, 8, 2, 4)
    labels = torch.tensor([[0], [0], [1], [1], [2], [2], [3], [3]])
    for _ in range(20):
        opt.zero_grad()
        loss = m(feats, labels)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    s = m.log_vars.detach()
    assert s.item() <= TemperatureWeighting.S_MIN + 1e-6
    assert m.log_vars.grad.abs().item() == 0.0  # no pull beyond the bound
    torch.testing.assert_close(
        m.weighting.temperature_factors().detach(), torch.exp(torch.tensor([-3.0]))
    )


# -------------------------------------------------------------------- normalized


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


# ------------------------------------------------------------------------ excess


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


# ---------------------------------------------------------------------- relative


def test_relative_value_and_gradients():
    w = TaskWeighting(3, "relative").double()
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.2, -0.4, 0.7]))
    losses = torch.tensor([3.0, 2.0, 5.0], dtype=F64, requires_grad=True)
    floors = torch.tensor([1.0, 0.5, 2.0], dtype=F64)
    chance = torch.tensor([5.0, 4.5, 2.0005], dtype=F64)  # task 2: no room -> no s update
    valid = torch.tensor([True, True, True])
    total = w(losses, valid, floors, chance)
    s = w.log_vars.detach()
    m = 3 * torch.softmax(-s, 0)
    r = [(3 - 1) / 4, (2 - 0.5) / 4]
    expected = (m * losses.detach()).sum() + sum(math.exp(-s[c]) * r[c] + s[c] / 2 for c in (0, 1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    total.backward()
    assert torch.allclose(losses.grad, m)
    expected_s = [-math.exp(-s[0]) * r[0] + 0.5, -math.exp(-s[1]) * r[1] + 0.5, 0.0]
    assert torch.allclose(w.log_vars.grad, torch.tensor(expected_s, dtype=F64))


def test_relative_weights_ignore_granularity_and_follow_learnability():
    # Two tasks at the same relative position between floor and chance get equal
    # weights whatever their floors; a task at chance gets the lowest weight.
    w = TaskWeighting(3, "relative").double()
    floors = torch.tensor([1.0, 4.0, 2.0], dtype=F64)  # fine, coarse, medium
    chance = torch.full((3,), 5.5, dtype=F64)
    losses = floors + torch.tensor([0.5, 0.5, 1.0], dtype=F64) * (chance - floors)
    opt = torch.optim.SGD(w.parameters(), lr=0.2)
    for _ in range(3000):
        opt.zero_grad()
        w(losses, torch.ones(3, dtype=torch.bool), floors, chance).backward()
        opt.step()
    weights = w.task_weights().detach()
    assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-6)
    assert weights[2].item() == pytest.approx(weights[0].item() / 2, rel=1e-6)
    assert weights.sum().item() == pytest.approx(3.0)
