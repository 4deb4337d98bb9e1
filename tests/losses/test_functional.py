"""The primitive (``contrastive_cross_entropy``) and the instance-mixed SupCon targets
(``supcon_per_anchor(..., instance_mix=)``) of mscon.losses.functional."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from losses import reference as ref
from losses.helpers import close, mixed_reference, rand, random_labels
from mscon.losses.functional import contrastive_cross_entropy, supcon_per_anchor, valid_means

F64 = torch.float64


def test_primitive_with_external_candidates_and_soft_targets(gen):
    """Anchors against a separate candidate set (a queue), no self-exclusion, soft targets."""
    a = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1)
    w = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    w[2] = 0.0
    out = contrastive_cross_entropy(a, c, temperature=0.2, target_weights=w)
    assert out.valid.tolist() == [True, True, False]
    for i in range(2):
        logits = [ref.dot(a[i].tolist(), c[k].tolist()) / 0.2 for k in range(5)]
        den = ref.log_sum_exp(logits)
        want = -sum(w[i, k].item() / w[i].sum().item() * (logits[k] - den) for k in range(5))
        assert close(out.losses[i].item(), want)
    assert out.losses[2].item() == 0.0
    # self_index excludes the given column; -1 excludes nothing
    out2 = contrastive_cross_entropy(
        a, c, temperature=0.2, target_weights=w, self_index=torch.tensor([0, -1, 1])
    )
    logits = [ref.dot(a[0].tolist(), c[k].tolist()) / 0.2 for k in range(1, 5)]
    den = ref.log_sum_exp(logits)
    want = -sum(w[0, k].item() / w[0, 1:].sum().item() * (logits[k - 1] - den) for k in range(1, 5))
    assert close(out2.losses[0].item(), want)
    assert close(out2.losses[1].item(), out.losses[1].item())
    assert math.isfinite(out2.losses.sum().item())


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


# ------------------------------------------------------------------ instance_mix


@pytest.mark.parametrize("pattern", ["random", "singletons", "missing", "one_class"])
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9])
def test_instance_mix_matches_loop_reference(gen, pattern, views, lam):
    b = 6
    labels = random_labels(gen, b, pattern)
    feats = torch.randn(b, views, 5, generator=gen, dtype=F64)
    out = supcon_per_anchor(feats, labels, temperature=0.4, instance_mix=lam)
    (loss,), _ = valid_means([out])
    expected, _ = mixed_reference(feats, labels, lam, 0.4)
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_instance_mix_zero_is_supcon_and_near_one_is_simclr(gen):
    feats = torch.randn(5, 2, 8, generator=gen, dtype=F64)
    labels = torch.tensor([0, 0, 1, 1, 1])
    supcon = supcon_per_anchor(feats, labels, temperature=0.2)
    assert torch.equal(
        supcon_per_anchor(feats, labels, temperature=0.2, instance_mix=0.0).losses, supcon.losses
    )
    nearly = supcon_per_anchor(feats, labels, temperature=0.2, instance_mix=1 - 1e-12)
    simclr = supcon_per_anchor(feats, None, temperature=0.2)
    assert torch.allclose(nearly.losses, simclr.losses, atol=1e-9)


def test_instance_mix_keeps_a_learnable_signal_for_a_collapsed_head():
    # identical embeddings: plain SupCon's gradient is 0 (a stationary point); the mixed
    # target is not matched by any constant embedding, but the gradient is still 0 at
    # exact collapse, so perturb slightly and compare the loss decrease direction.
    gen = torch.Generator().manual_seed(0)
    base = torch.ones(8, 2, 4, dtype=F64) + 1e-3 * torch.randn(8, 2, 4, generator=gen, dtype=F64)
    labels = torch.zeros(8, dtype=torch.long)  # one class: label part is uninformative
    for lam, moves in ((0.0, False), (0.5, True)):
        feats = base.clone().requires_grad_(True)
        out = supcon_per_anchor(feats, labels, temperature=0.1, instance_mix=lam)
        out.losses.sum().backward()
        assert (feats.grad.abs().max().item() > 1e-3) == moves
