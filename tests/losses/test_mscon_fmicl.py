"""MSConFMICLLoss: supervised f-MICL per similarity, combined by a task weighting."""

import pytest
import torch

from mscon.losses import FMICLLoss, MSConFMICLLoss
from mscon.losses.fmicl import fmicl_chance, fmicl_floor


def inputs(seed=0, b=10, v=2, d=6):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(3, b, v, d, generator=g, dtype=torch.float64)
    labels = torch.stack(
        [
            torch.randint(0, 4, (b,), generator=g),
            torch.tensor([0, 1, -1, 1, 0, -1, 2, 2, 1, 0])[:b],
            torch.full((b,), -1),  # no label: no valid term
        ],
        1,
    )
    return features, labels


@pytest.mark.parametrize("divergence", ["kl", "js", "vlc"])
def test_equal_is_the_sum_of_supervised_fmicl_per_head(divergence):
    features, labels = inputs()
    loss_fn = MSConFMICLLoss(3, "equal", divergence=divergence, alpha=5.0)
    single = FMICLLoss(divergence, alpha=5.0)
    expected = [single(features[c], labels[:, c]) for c in range(3)]
    total = loss_fn(features, labels)
    torch.testing.assert_close(total, expected[0] + expected[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        loss_fn.last_losses, torch.stack(expected).float(), rtol=1e-6, atol=1e-6
    )
    assert loss_fn.last_valid.tolist() == [True, True, False]


def test_fixed_weights_and_gradcheck():
    features, labels = inputs(1, b=5, d=3)
    labels = labels[:5]
    loss_fn = MSConFMICLLoss(3, "fixed", [0.5, 2.0, 1.0], divergence="pearson", alpha=2.0)
    single = FMICLLoss("pearson", alpha=2.0)
    expected = 0.5 * single(features[0], labels[:, 0]) + 2.0 * single(features[1], labels[:, 1])
    torch.testing.assert_close(loss_fn(features, labels), expected)
    x = features.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: loss_fn(f, labels), (x,))


def test_relative_uses_fmicl_chance_and_floor():
    features, labels = inputs(2)
    loss_fn = MSConFMICLLoss(3, "relative", divergence="kl", alpha=10.0).double()
    with torch.no_grad():
        loss_fn.log_vars.copy_(torch.tensor([0.3, -0.2, 0.1]))
    total = loss_fn(features, labels)
    losses = loss_fn.last_losses.double()
    chance = fmicl_chance("kl", alpha=10.0)
    floors = torch.tensor(
        [fmicl_floor(int(torch.unique(labels[:, c][labels[:, c] >= 0]).numel()), "kl", alpha=10.0)
         for c in range(2)], dtype=torch.float64,
    )  # fmt: skip
    s = loss_fn.log_vars.detach()
    weights = 3 * torch.softmax(-s, 0)
    r = ((losses[:2] - floors) / (chance - floors)).clamp_min(0)
    expected = (weights[:2] * losses[:2]).sum() + (torch.exp(-s[:2]) * r + s[:2] / 2).sum()
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_refuses_weightings_that_need_a_positive_loss():
    for mode in ("uncertainty", "temperature", "normalized", "excess"):
        with pytest.raises(ValueError, match="weighting must be one of equal, fixed, relative"):
            MSConFMICLLoss(2, mode)
    with pytest.raises(ValueError, match="V >= 2"):
        MSConFMICLLoss(2)(torch.randn(2, 4, 1, 3), torch.zeros(4, 2, dtype=torch.long))


def test_finite_in_half_precision_and_for_identical_embeddings():
    labels = torch.tensor([[0, 1], [0, 1], [1, -1], [2, -1]])
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(2, 4, 2, 8, dtype=dtype, requires_grad=True)
        loss = MSConFMICLLoss(2, "relative", divergence="js")(x, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    same = torch.ones(2, 4, 2, 8, requires_grad=True)
    loss = MSConFMICLLoss(2, divergence="sq_hellinger")(same, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
