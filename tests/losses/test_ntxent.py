"""NTXentLoss (mscon.losses.ntxent): the loop reference, argument errors, gradcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from losses import reference as ref
from losses.helpers import SETTINGS, close, raises, rand, seeds, temps
from mscon.losses import NTXentLoss


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), d=st.integers(1, 5), tau=temps)
def test_ntxent_matches_reference(seed, b, d, tau):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    got = NTXentLoss(temperature=tau)(z0, z1)
    assert got.dtype == torch.float64
    assert close(got.item(), ref.ntxent(z0, z1, tau))


@pytest.mark.parametrize("cls", [NTXentLoss])
@pytest.mark.parametrize("tau", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_temperature(cls, tau):
    with raises(f"{cls.__name__}: temperature must be a finite number > 0, got"):
        cls(temperature=tau)


def test_ntxent_mismatched_batches():
    with raises("NTXentLoss: z0 and z1 must have the same shape (B, d) (one row per image), got"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with raises("NTXentLoss: z0 must have shape (B, d) with B >= 1, got (4, 2, 3)"):
        NTXentLoss()(torch.randn(4, 2, 3), torch.randn(4, 2, 3))


def test_gradcheck_ntxent(gen):
    z0, z1 = rand(gen, 3, 4), rand(gen, 3, 4)
    assert gradcheck(NTXentLoss(0.3), (z0, z1))
