"""Clear ValueErrors for bad arguments; the task-weighting modes and registry."""

from __future__ import annotations

import math
import re

import pytest
import torch

from mscon.losses import (
    WEIGHTING_MODES,
    MSConLoss,
    MultiTaskCELoss,
    NTXentLoss,
    SupConLoss,
    TaskWeighting,
    register_weighting_mode,
)
from mscon.losses.weighting import TemperatureWeighting, WeightingMode


def raises(pattern: str):
    return pytest.raises(ValueError, match=re.escape(pattern))


@pytest.mark.parametrize("cls", [NTXentLoss, SupConLoss])
@pytest.mark.parametrize("tau", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_temperature(cls, tau):
    with raises(f"{cls.__name__}: temperature must be a finite number > 0, got"):
        cls(temperature=tau)


def test_bad_temperature_multi():
    with raises("MSConLoss: temperature must be a finite number > 0, got -1.0"):
        MSConLoss(2, temperature=-1.0)


def test_supcon_shape_and_label_errors():
    f = SupConLoss()
    x = torch.randn(8, 2, 4)
    with raises("SupConLoss: labels must have shape (B,) = (8,), got (8, 2)"):
        f(x, torch.zeros(8, 2, dtype=torch.long))
    with raises("SupConLoss: labels must have shape (B,) = (8,), got (7,)"):
        f(x, torch.zeros(7, dtype=torch.long))
    with raises("labels must be integer labels (-1 = missing), got dtype torch.float32"):
        f(x, torch.zeros(8))
    with raises("continuous similarities are not supported yet"):
        f(x, torch.zeros(8, dtype=torch.float64))
    with raises("SupConLoss: labels must be class indices >= 0 or -1 for missing, got -2"):
        f(x, torch.tensor([0, 1, -2, 0, 1, 0, 1, 0]))
    with raises("SupConLoss: features must have shape (B, V, d) or (N, d), got (2, 8, 2, 4)"):
        f(torch.randn(2, 8, 2, 4))
    with raises("SupConLoss: features must be a float16, bfloat16, float32 or float64 tensor"):
        f(torch.ones(8, 2, 4, dtype=torch.long))
    with raises("SupConLoss: features of shape (N, d) = (8, 4) hold one view per image"):
        f(torch.randn(8, 4))
    with raises("SupConLoss: give labels or mask, not both"):
        f(x, torch.zeros(8, dtype=torch.long), torch.ones(8, 8, dtype=torch.bool))
    with raises("SupConLoss: mask must have shape (B, B) = (8, 8), got (8, 7)"):
        f(x, mask=torch.ones(8, 7, dtype=torch.bool))
    with raises("SupConLoss: mask weights must be non-negative, got -1.0"):
        f(x, mask=-torch.ones(8, 8))
    with raises(
        "SupConLoss: mask must be bool or non-negative float weights, got dtype torch.int64"
    ):
        f(x, mask=torch.ones(8, 8, dtype=torch.long))
    with raises("SupConLoss: form must be one of 'out', 'in', got 'mid'"):
        SupConLoss(form="mid")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(bad):
    x = torch.randn(4, 2, 3)
    x[1, 0, 2] = bad
    kind = "NaN" if math.isnan(bad) else "inf"
    with raises(f"SupConLoss: features must contain only finite values, got {kind}"):
        SupConLoss()(x)
    with raises(f"NTXentLoss: z1 must contain only finite values, got {kind}"):
        NTXentLoss()(x[:, 1], x[:, 0])
    with raises(f"MSConLoss: features[1] must contain only finite values, got {kind}"):
        MSConLoss(2)(torch.stack([x.nan_to_num(), x]), torch.zeros(4, 2, dtype=torch.long))
    with raises(f"MultiTaskCELoss: logits[0] must contain only finite values, got {kind}"):
        MultiTaskCELoss([3])([x[:, 0]], torch.zeros(4, 1, dtype=torch.long))


def test_ntxent_mismatched_batches():
    with raises("NTXentLoss: z0 and z1 must have the same shape (B, d) (one row per image), got"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with raises("NTXentLoss: z0 must have shape (B, d) with B >= 1, got (4, 2, 3)"):
        NTXentLoss()(torch.randn(4, 2, 3), torch.randn(4, 2, 3))


def test_mscon_errors():
    m = MSConLoss(2)
    with raises("MSConLoss: num_similarities must be an integer >= 1, got 0"):
        MSConLoss(0)
    with raises("MSConLoss: features must have shape (C, B, V, d) with C = 2, got (3, 4, 2, 5)"):
        m(torch.randn(3, 4, 2, 5), torch.zeros(4, 2, dtype=torch.long))
    with raises("MSConLoss: features must be a sequence of C = 2 tensors (B, V, d), got 1"):
        m([torch.randn(4, 2, 5)], torch.zeros(4, 2, dtype=torch.long))
    with raises("MSConLoss: every head must have the same batch size B = 4, got features[1]"):
        m([torch.randn(4, 2, 5), torch.randn(3, 2, 5)], torch.zeros(4, 2, dtype=torch.long))
    with raises("MSConLoss: labels must have shape (B, C) = (4, 2), got (4,)"):
        m(torch.randn(2, 4, 2, 5), torch.zeros(4, dtype=torch.long))
    with raises("MSConLoss: labels must be integer labels"):
        m(torch.randn(2, 4, 2, 5), torch.zeros(4, 2))
    with raises("MSConLoss: weighting must be one of 'uncertainty', 'temperature', 'equal'"):
        MSConLoss(2, weighting="softmax")
    with raises("MSConLoss: weights must be given for weighting='fixed'"):
        MSConLoss(2, weighting="fixed")
    with raises("MSConLoss: weights must have one value per task (2), got 3"):
        MSConLoss(2, weighting="fixed", weights=[1, 1, 1])
    with raises("MSConLoss: weights must be finite and non-negative, got [1.0, -0.5]"):
        MSConLoss(2, weighting="fixed", weights=[1, -0.5])
    with raises("MSConLoss: weights are only used with weighting='fixed'"):
        MSConLoss(2, weights=[1.0, 1.0])


def test_multitask_ce_errors():
    ce = MultiTaskCELoss([3, 2])
    logits = [torch.randn(4, 3), torch.randn(4, 2)]
    with raises("MultiTaskCELoss: labels[:, 1] must be in [-1, 1] (num_classes[1] = 2), got 2"):
        ce(logits, torch.tensor([[0, 0], [1, 2], [2, 1], [0, -1]]))
    with raises("MultiTaskCELoss: labels must be class indices >= 0 or -1 for missing, got -3"):
        ce(logits, torch.tensor([[0, 0], [1, 1], [-3, 1], [0, -1]]))
    with raises("MultiTaskCELoss: logits[1] must have shape (B, K_1) = (4, 2), got (4, 3)"):
        ce([logits[0], torch.randn(4, 3)], torch.zeros(4, 2, dtype=torch.long))
    with raises("MultiTaskCELoss: logits[1] must have shape (B, K_1) = (4, 2), got (5, 2)"):
        ce([logits[0], torch.randn(5, 2)], torch.zeros(4, 2, dtype=torch.long))
    with raises("MultiTaskCELoss: logits must be a sequence of C = 2 tensors (B, K_c), got 1"):
        ce(logits[:1], torch.zeros(4, 2, dtype=torch.long))
    with raises("MultiTaskCELoss: labels must have shape (B, C) = (4, 2), got (4, 3)"):
        ce(logits, torch.zeros(4, 3, dtype=torch.long))
    with raises("MultiTaskCELoss: num_classes must be a non-empty sequence of integers >= 1"):
        MultiTaskCELoss([3, 0])


# --------------------------------------------------------------------- weighting


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
