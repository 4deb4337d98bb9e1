"""SupConLoss (mscon.losses.supcon): the loop reference (labels, masks, SimCLR), argument
errors, gradcheck and finite gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from losses import reference as ref
from losses.helpers import (
    LABEL_PATTERNS,
    SETTINGS,
    close,
    raises,
    rand,
    random_labels,
    seeds,
    temps,
)
from mscon.losses import SupConLoss

F64 = torch.float64


@SETTINGS
@given(
    seed=seeds,
    b=st.integers(1, 6),
    v=st.integers(1, 3),
    d=st.integers(1, 5),
    tau=temps,
    pattern=st.sampled_from(LABEL_PATTERNS),
    form=st.sampled_from(["out", "in"]),
)
def test_supcon_labels_matches_reference(seed, b, v, d, tau, pattern, form):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, d, generator=g, dtype=torch.float64)
    labels = random_labels(g, b, pattern)
    got = SupConLoss(temperature=tau, form=form)(x, labels)
    assert close(got.item(), ref.supcon(x, labels, tau=tau, form=form))
    if v == 1:  # (N, d) input means one view
        flat = SupConLoss(temperature=tau, form=form)(x[:, 0], labels)
        assert close(flat.item(), got.item())


@SETTINGS
@given(
    seed=seeds,
    b=st.integers(1, 6),
    v=st.integers(1, 3),
    d=st.integers(1, 4),
    tau=temps,
    kind=st.sampled_from(["none", "bool", "float", "float_zero"]),
    form=st.sampled_from(["out", "in"]),
)
def test_supcon_mask_and_simclr_match_reference(seed, b, v, d, tau, kind, form):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, d, generator=g, dtype=torch.float64)
    mask = None
    if kind == "bool":
        mask = torch.rand(b, b, generator=g) < 0.4
    elif kind == "float":
        mask = torch.rand(b, b, generator=g, dtype=torch.float64)
        mask = mask * (torch.rand(b, b, generator=g) < 0.6)
    elif kind == "float_zero":
        mask = torch.zeros(b, b, dtype=torch.float64)
    loss_fn = SupConLoss(temperature=tau, form=form)
    got = loss_fn(x, mask=mask) if mask is not None else loss_fn(x)
    assert close(got.item(), ref.supcon(x, mask=mask, tau=tau, form=form))


@pytest.mark.parametrize("cls", [SupConLoss])
@pytest.mark.parametrize("tau", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_temperature(cls, tau):
    with raises(f"{cls.__name__}: temperature must be a finite number > 0, got"):
        cls(temperature=tau)


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


@pytest.mark.parametrize("form", ["out", "in"])
def test_gradcheck_supcon(gen, form):
    x = rand(gen, 4, 2, 3)
    labels = torch.tensor([0, 1, 0, -1])
    loss_fn = SupConLoss(0.2, form=form)
    assert gradcheck(lambda f: loss_fn(f, labels), (x,))
    assert gradcheck(lambda f: loss_fn(f), (x,))
    assert gradcheck(lambda f: loss_fn(f[:, 0], torch.tensor([0, 1, 0, 1])), (x,))
    bool_mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 1]]).bool()
    assert gradcheck(lambda f: loss_fn(f, mask=bool_mask), (x,))
    weights = torch.rand(4, 4, generator=gen, dtype=F64)
    assert gradcheck(lambda f: loss_fn(f, mask=weights), (x,))


def test_gradients_finite_at_low_temperature_and_degenerate_batches(gen):
    x = rand(gen, 5, 2, 3)
    for tau in (1e-3, 0.01):
        for labels in (torch.tensor([0, 0, 1, -1, 2]), torch.full((5,), -1)):
            (g,) = torch.autograd.grad(SupConLoss(tau)(x, labels), x)
            assert torch.isfinite(g).all()
    one = rand(gen, 1, 1, 3)  # a single view: no candidate at all
    loss = SupConLoss(0.1)(one, torch.tensor([0]))
    (g,) = torch.autograd.grad(loss, one)
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(one))
