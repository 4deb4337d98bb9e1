"""MultiTaskCELoss (mscon.losses.multitask_ce): the loop reference, argument errors,
gradcheck and the chance of the ``relative`` weighting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.func import functional_call

from losses import reference as ref
from losses.helpers import SETTINGS, close, raises, rand, seeds
from mscon.losses import MultiTaskCELoss

F64 = torch.float64


@SETTINGS
@given(
    seed=seeds,
    b=st.integers(1, 6),
    ks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    mode=st.sampled_from(["uncertainty", "temperature", "equal", "fixed"]),
)
def test_multitask_ce_matches_reference(seed, b, ks, mode):
    g = torch.Generator().manual_seed(seed)
    logits = [3 * torch.randn(b, k, generator=g, dtype=torch.float64) for k in ks]
    labels = torch.stack([torch.randint(-1, k, (b,), generator=g) for k in ks], dim=1)
    weights = torch.rand(len(ks), generator=g).tolist() if mode == "fixed" else None
    loss_fn = MultiTaskCELoss(ks, weighting=mode, weights=weights).double()
    with torch.no_grad():
        if mode in ("uncertainty", "temperature"):
            loss_fn.log_vars.copy_(torch.randn(len(ks), generator=g, dtype=torch.float64))
    got = loss_fn(logits, labels)
    want, _ = ref.multitask_ce(logits, labels, mode, loss_fn.log_vars.tolist(), weights)
    assert close(got.item(), want)


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


def test_relative_multitask_ce_uses_log_k_as_chance():
    loss_fn = MultiTaskCELoss([4, 2], weighting="relative").double()
    logits = [torch.zeros(3, 4, dtype=F64), torch.zeros(3, 2, dtype=F64)]
    labels = torch.tensor([[0, 1], [1, 0], [3, 1]])
    loss_fn(logits, labels).backward()  # uniform logits: CE = log K, r = 1
    assert loss_fn.log_vars.grad.tolist() == pytest.approx([-0.5, -0.5], abs=1e-12)
