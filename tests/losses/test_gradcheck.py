"""torch.autograd.gradcheck in float64 for every loss, log_vars included."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss
from mscon.losses.functional import contrastive_cross_entropy

F64 = torch.float64


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_()


def test_gradcheck_ntxent(gen):
    z0, z1 = rand(gen, 3, 4), rand(gen, 3, 4)
    assert gradcheck(NTXentLoss(0.3), (z0, z1))


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


def test_gradcheck_primitive_target_weights(gen):
    """Gradient to the anchors, candidates, soft targets and a learned temperature."""
    a, c = rand(gen, 3, 4), rand(gen, 5, 4)
    w = torch.rand(3, 5, generator=gen, dtype=F64).add_(0.1).requires_grad_()
    tau = torch.tensor(0.3, dtype=F64, requires_grad=True)

    def fn(a, c, w, tau):
        a = torch.nn.functional.normalize(a, dim=1)
        c = torch.nn.functional.normalize(c, dim=1)
        out_ = contrastive_cross_entropy(a, c, temperature=tau, target_weights=w)
        in_ = contrastive_cross_entropy(a, c, temperature=tau, target_weights=w, form="in")
        return out_.losses.sum() + in_.losses.sum()

    assert gradcheck(fn, (a, c, w, tau))


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


@pytest.mark.parametrize("mode", ["uncertainty", "temperature", "equal", "fixed"])
def test_gradcheck_multitask_ce_with_log_vars(gen, mode):
    weights = [0.5, 2.0] if mode == "fixed" else None
    loss_fn = MultiTaskCELoss([3, 2], weighting=mode, weights=weights).double()
    logits = (rand(gen, 4, 3), rand(gen, 4, 2))
    labels = torch.tensor([[0, 1], [2, -1], [-1, 0], [1, 1]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(a, b, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, ([a, b], labels))

    assert gradcheck(fn, (*logits, log_vars))


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
