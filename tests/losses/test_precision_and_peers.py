"""float16/bfloat16 inputs, and agreement with peer libraries (pytorch-metric-learning, lightly)."""

from __future__ import annotations

import pytest
import torch

from losses import reference as ref
from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss

HALF = [torch.float16, torch.bfloat16]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = float(a.detach()), float(b.detach())
    return abs(a - b) / max(1.0, abs(b))


def clustered(gen, b: int, v: int, d: int, spread: float = 0.05) -> torch.Tensor:
    """Views of an image close together: high similarities, as after training."""
    centres = torch.randn(b, 1, d, generator=gen)
    return centres + spread * torch.randn(b, v, d, generator=gen)


@pytest.mark.parametrize("dtype", HALF)
def test_half_inputs_are_finite_and_close_to_float32(gen, dtype):
    x = clustered(gen, 16, 2, 32, spread=0.2)
    labels = torch.randint(-1, 4, (16,), generator=gen)
    xh = x.to(dtype)
    for tau in (0.5, 0.1, 0.02):
        loss_fn = SupConLoss(tau)
        got = loss_fn(xh, labels)
        assert got.dtype == torch.float32 and torch.isfinite(got)
        # the same input values in float32: only the computation's precision differs
        assert rel_err(got, loss_fn(xh.float(), labels)) <= 1e-2
        if tau >= 0.1:  # and the unrounded float32 input
            assert rel_err(got, loss_fn(x, labels)) <= 1e-2
    z0, z1 = xh[:, 0], xh[:, 1]
    assert rel_err(NTXentLoss(0.5)(z0, z1), NTXentLoss(0.5)(x[:, 0], x[:, 1])) <= 1e-2
    m = MSConLoss(2, temperature=0.1)
    feats = torch.stack([x, clustered(gen, 16, 2, 32, spread=0.2)])
    lab2 = torch.stack([labels, torch.randint(0, 3, (16,), generator=gen)], 1)
    assert rel_err(m(feats.to(dtype), lab2), m(feats, lab2)) <= 1e-2
    ce = MultiTaskCELoss([4, 3])
    logits = [torch.randn(16, 4, generator=gen), torch.randn(16, 3, generator=gen)]
    y = torch.stack([torch.randint(-1, 4, (16,), generator=gen), lab2[:, 1]], 1)
    assert rel_err(ce([t.to(dtype) for t in logits], y), ce(logits, y)) <= 1e-2


@pytest.mark.parametrize("dtype", HALF)
def test_half_gradients_finite_at_low_temperature(gen, dtype):
    x = clustered(gen, 8, 2, 16).to(dtype).requires_grad_()
    loss = SupConLoss(0.01)(x, torch.tensor([0, 0, 1, 1, 2, -1, 3, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    assert x.grad.dtype == dtype


def test_supcontrast_reference_nans_in_float16_where_we_do_not(gen):
    """The known trap: SupContrast's code returns NaN in pure float16 at low temperature."""
    b, tau = 8, 0.02
    x = torch.nn.functional.normalize(torch.randn(b, 2, 16, generator=gen), dim=-1)
    labels = torch.arange(b) % 4
    theirs = ref.supcontrast_reference(x.half(), labels, tau)
    assert torch.isnan(theirs)
    ours = SupConLoss(tau)(x.half(), labels)
    assert torch.isfinite(ours)
    assert rel_err(ours, SupConLoss(tau)(x.half().float(), labels)) <= 1e-2
    # and in float32 SupContrast agrees with us up to its tau / base_tau factor
    theirs32 = ref.supcontrast_reference(x, labels, tau) * (0.07 / tau)
    assert rel_err(SupConLoss(tau)(x, labels), theirs32) <= 1e-5


# ------------------------------------------------------------------------- peers


@pytest.mark.parametrize("tau", [0.07, 0.1, 0.5])
def test_supcon_one_view_equals_pytorch_metric_learning(gen, tau):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    for b, k in ((6, 2), (12, 4), (20, 9)):
        x = torch.randn(b, 8, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, k, (b,), generator=gen)
        labels[:2] = torch.tensor([0, 1])  # at least two classes, so the peer has negatives
        labels[2] = 0  # and at least one positive pair
        theirs = pml_losses.SupConLoss(temperature=tau)(x, labels)
        ours = SupConLoss(temperature=tau)(x, labels)
        assert rel_err(ours, theirs) <= 1e-10


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ntxent_equals_lightly(gen, tau):
    lightly_loss = pytest.importorskip("lightly.loss")
    for b in (1, 3, 16):
        z0 = torch.randn(b, 8, generator=gen, dtype=torch.float64)
        z1 = torch.randn(b, 8, generator=gen, dtype=torch.float64)
        theirs = lightly_loss.NTXentLoss(temperature=tau, memory_bank_size=0)(z0, z1)
        ours = NTXentLoss(temperature=tau)(z0, z1)
        assert rel_err(ours, theirs) <= 1e-10
        z32 = (z0.float(), z1.float())
        assert rel_err(NTXentLoss(tau)(*z32), lightly_loss.NTXentLoss(tau)(*z32)) <= 1e-5
