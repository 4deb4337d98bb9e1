"""The input checks every loss shares (mscon.losses._checks): non-finite values."""

from __future__ import annotations

import math

import pytest
import torch

from losses.helpers import raises
from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss


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
