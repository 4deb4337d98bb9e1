"""MSConLoss (mscon.losses.mscon): the loop reference, argument errors, gradcheck, the
instance-mixed targets, the floors and the chance of the ``relative`` weighting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from losses import reference as ref
from losses.helpers import (
    LABEL_PATTERNS,
    SETTINGS,
    close,
    mixed_reference,
    raises,
    rand,
    random_labels,
    seeds,
    temps,
)
from mscon.losses import MSConLoss

F64 = torch.float64


@SETTINGS
@given(
    seed=seeds,
    c=st.integers(1, 3),
    b=st.integers(1, 5),
    v=st.integers(1, 3),
    tau=temps,
    mode=st.sampled_from(["uncertainty", "temperature", "equal", "fixed"]),
    as_list=st.booleans(),
)
def test_mscon_matches_reference(seed, c, b, v, tau, mode, as_list):
    g = torch.Generator().manual_seed(seed)
    dims = [int(torch.randint(1, 5, (1,), generator=g)) for _ in range(c)] if as_list else [3] * c
    heads = [torch.randn(b, v, dk, generator=g, dtype=torch.float64) for dk in dims]
    patterns = [LABEL_PATTERNS[int(torch.randint(0, 5, (1,), generator=g))] for _ in range(c)]
    labels = torch.stack([random_labels(g, b, p) for p in patterns], dim=1)
    weights = torch.rand(c, generator=g).tolist() if mode == "fixed" else None
    loss_fn = MSConLoss(c, temperature=tau, weighting=mode, weights=weights).double()
    with torch.no_grad():
        if mode in ("uncertainty", "temperature"):
            loss_fn.log_vars.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    features = heads if as_list else torch.stack(heads)
    got = loss_fn(features, labels)
    want, want_losses = ref.mscon(heads, labels, tau, mode, loss_fn.log_vars.tolist(), weights)
    assert close(got.item(), want)
    for gl, wl in zip(loss_fn.last_losses.tolist(), want_losses, strict=True):
        assert abs(gl - wl) <= 1e-6 * max(1.0, abs(wl))  # last_losses is float32


def test_bad_temperature_multi():
    with raises("MSConLoss: temperature must be a finite number > 0, got -1.0"):
        MSConLoss(2, temperature=-1.0)


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


@pytest.mark.parametrize("mode", ["uncertainty", "temperature", "equal", "fixed"])
def test_gradcheck_mscon_with_log_vars(gen, mode):
    weights = [0.5, 2.0] if mode == "fixed" else None
    loss_fn = MSConLoss(2, temperature=0.2, weighting=mode, weights=weights).double()
    feats = rand(gen, 2, 4, 2, 3)
    labels = torch.tensor([[0, 1], [0, -1], [1, 1], [-1, 2]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, (f, labels))

    assert gradcheck(fn, (feats, log_vars))
    assert gradcheck(lambda a, b: loss_fn([a, b], labels), (rand(gen, 4, 2, 3), rand(gen, 4, 2, 5)))
    if mode in ("uncertainty", "temperature"):
        loss_fn(feats, labels).backward()
        assert loss_fn.log_vars.grad is not None and torch.isfinite(loss_fn.log_vars.grad).all()
    else:
        assert not loss_fn.log_vars.requires_grad


def test_gradcheck_excess(gen):
    # (``normalized`` stops gradients on purpose, so finite differences of its value do
    # not match; its gradients are checked analytically in test_weighting.py.)
    loss_fn = MSConLoss(2, temperature=0.2, weighting="excess").double()
    feats = torch.randn(2, 4, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor([[0, 1], [0, -1], [1, 1], [-1, 2]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, (f, labels))

    assert gradcheck(fn, (feats, log_vars))


# ------------------------------------------------------- instance_mix and floors


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_floor_is_the_mean_target_entropy(gen, views, lam):
    labels = torch.tensor([[0], [0], [1], [2], [2], [2], [-1]])
    feats = torch.randn(1, 7, views, 4, generator=gen, dtype=F64)
    loss_fn = MSConLoss(1, temperature=0.5, weighting="excess", instance_mix=lam).double()
    _, expected_floor = mixed_reference(feats[0], labels[:, 0], lam, 0.5)
    assert loss_fn._floor(labels[:, 0], views).item() == pytest.approx(expected_floor, abs=1e-12)


def test_instance_mix_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match="instance_mix"):
        MSConLoss(2, instance_mix=1.0)
    with pytest.raises(ValueError, match="instance_mix"):
        MSConLoss(2, instance_mix=-0.1)


def test_relative_is_chance_for_identical_embeddings():
    loss_fn = MSConLoss(2, temperature=0.1, weighting="relative", instance_mix=0.3)
    feats = torch.ones(2, 8, 2, 16)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 2)
    loss_fn(feats, labels).backward()
    # r = 1 for both: d/ds [exp(-s) r + s/2] at s = 0 is -1 + 1/2
    assert loss_fn.log_vars.grad.tolist() == pytest.approx([-0.5, -0.5], abs=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_gradcheck_instance_mix(gen, lam):
    loss_fn = MSConLoss(2, temperature=0.2, weighting="excess", instance_mix=lam).double()
    feats = torch.randn(2, 4, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor([[0, 1], [0, -1], [1, 1], [-1, 2]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, (f, labels))

    assert torch.autograd.gradcheck(fn, (feats, log_vars))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_instance_mix_low_precision(gen, dtype):
    feats = torch.randn(2, 16, 2, 32, generator=gen)
    labels = torch.randint(0, 3, (16, 2), generator=gen)
    loss_fn = MSConLoss(2, temperature=0.05, weighting="relative", instance_mix=0.5)
    full = loss_fn(feats, labels)
    low = loss_fn(feats.to(dtype), labels)
    assert torch.isfinite(low)
    assert low.item() == pytest.approx(full.item(), abs=5e-2)
