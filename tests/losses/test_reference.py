"""Every loss equals the slow loop-over-anchors reference in float64 (to 1e-10)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from losses import reference as ref
from losses.helpers import LABEL_PATTERNS, random_labels
from mscon.losses import MSConLoss, MultiTaskCELoss, NTXentLoss, SupConLoss
from mscon.losses.functional import contrastive_cross_entropy

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
TOL = 1e-10

seeds = st.integers(0, 2**31 - 1)
temps = st.sampled_from([0.05, 0.1, 0.3, 0.5, 1.0, 2.0])


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


@SETTINGS
@given(seed=seeds, b=st.integers(1, 6), d=st.integers(1, 5), tau=temps)
def test_ntxent_matches_reference(seed, b, d, tau):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    got = NTXentLoss(temperature=tau)(z0, z1)
    assert got.dtype == torch.float64
    assert close(got.item(), ref.ntxent(z0, z1, tau))


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
