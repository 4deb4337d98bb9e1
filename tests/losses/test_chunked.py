"""The chunked log-denominator (mscon.losses.chunked) and the chunked path of
``contrastive_cross_entropy``, against the direct M x N path and torch.logsumexp."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from losses.helpers import random_labels, run_ranks
from mscon.losses import MSConLoss, NTXentLoss, SupConLoss, chunked
from mscon.losses.chunked import CHUNK_ENV, auto_chunk_size, log_denominator, resolve_chunk_size
from mscon.losses.functional import (
    _dense_cross_entropy,
    contrastive_cross_entropy,
    supcon_per_anchor,
)

F64 = torch.float64
WORKER = __file__.replace("test_chunked.py", "chunked_distributed_worker.py")


def unit(gen, *shape, dtype=F64):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def dense_log_denominator(a, c, tau, self_index):
    """logsumexp over the full logits; a (M, d) or (C, M, d), tau () or (C,)."""
    tau = torch.as_tensor(tau, dtype=a.dtype)
    logits = a @ c.mT / (tau.reshape(-1, 1, 1) if a.ndim == 3 else tau)
    rows = torch.arange(a.shape[-2])
    has = self_index >= 0
    logits = logits.clone()
    logits[..., rows[has], self_index[has]] = -math.inf
    return torch.logsumexp(logits, dim=-1)


def dense(anchors, candidates=None, *, temperature, self_index=None, **targets):
    """The direct path with contrastive_cross_entropy's defaults for candidates=None."""
    if candidates is None:
        candidates = anchors
        self_index = torch.arange(anchors.shape[0]) if self_index is None else self_index
        if "anchor_labels" in targets:
            targets.setdefault("candidate_labels", targets["anchor_labels"])
    return _dense_cross_entropy(
        anchors,
        candidates,
        temperature,
        targets.get("anchor_labels"),
        targets.get("candidate_labels"),
        targets.get("positive_mask"),
        targets.get("target_weights"),
        self_index,
        targets.get("form", "out"),
    )


@pytest.fixture
def row_max(monkeypatch):
    """Force the row-maximum shift (normally only for very small temperatures)."""
    monkeypatch.setattr(chunked, "_SAFE_EXPONENT", {torch.float32: 0.0, torch.float64: 0.0})


# ------------------------------------------------------------------ log_denominator


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("shift", ["global", "row_max"])
def test_log_denominator_matches_logsumexp(gen, chunk, shift, request):
    if shift == "row_max":
        request.getfixturevalue("row_max")
    a, c = unit(gen, 7, 5), unit(gen, 9, 5)
    self_index = torch.tensor([0, -1, 8, 3, -1, 2, 5])
    got = log_denominator(a, c, temperature=0.3, self_index=self_index, chunk_size=chunk)
    assert torch.allclose(got, dense_log_denominator(a, c, 0.3, self_index), atol=1e-12)
    sym = log_denominator(a, None, temperature=0.3, chunk_size=chunk)
    assert torch.allclose(sym, dense_log_denominator(a, a, 0.3, torch.arange(7)), atol=1e-12)
    none = log_denominator(a, c, temperature=0.3, chunk_size=chunk)  # nothing excluded
    assert torch.allclose(none, torch.logsumexp(a @ c.T / 0.3, 1), atol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shift", ["global", "row_max"])
def test_gradcheck_log_denominator(gen, symmetric, shift, request):
    """Anchors, candidates and a learned temperature, under an arbitrary per-anchor
    upstream gradient (some anchors weighted 0, as invalid anchors are)."""
    if shift == "row_max":
        request.getfixturevalue("row_max")
    a = torch.randn(6, 4, generator=gen, dtype=F64).requires_grad_()
    c = torch.randn(5, 4, generator=gen, dtype=F64).requires_grad_()
    tau = torch.tensor(0.4, dtype=F64, requires_grad=True)
    weight = torch.tensor([1.0, 0.0, 2.5, -0.5, 0.0, 0.3], dtype=F64)
    self_index = torch.tensor([1, -1, 0, 4, 2, -1])

    def fn(a, c, tau):
        a = torch.nn.functional.normalize(a, dim=1)
        if symmetric:
            out = log_denominator(a, None, temperature=tau, chunk_size=4)
        else:
            c = torch.nn.functional.normalize(c, dim=1)
            out = log_denominator(a, c, temperature=tau, self_index=self_index, chunk_size=4)
        return (weight * out).sum()

    assert gradcheck(fn, (a, c, tau))


@pytest.mark.parametrize("shift", ["global", "row_max"])
def test_batched_problems_match_one_at_a_time(gen, shift, request):
    """(C, M, d) anchors with one temperature per problem, own columns on a shifted
    diagonal (as a rank's anchors among gathered candidates) or scattered."""
    if shift == "row_max":
        request.getfixturevalue("row_max")
    a, c = unit(gen, 3, 6, 4), unit(gen, 3, 9, 4)
    tau = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    for self_index in (2 + torch.arange(6), torch.tensor([4, -1, 0, 8, 1, -1])):
        got = log_denominator(a, c, temperature=tau, self_index=self_index, chunk_size=4)
        want = dense_log_denominator(a, c, tau, self_index)
        assert got.shape == (3, 6) and torch.allclose(got, want, atol=1e-12)
    sym = log_denominator(a, None, temperature=tau, chunk_size=4)
    assert torch.allclose(sym, dense_log_denominator(a, a, tau, torch.arange(6)), atol=1e-12)
    one = log_denominator(a, None, temperature=0.3, chunk_size=4)  # one temperature for all
    assert torch.allclose(one[1], log_denominator(a[1], None, temperature=0.3), atol=1e-12)
    with pytest.raises(ValueError, match=r"temperature must be .* shape \(\) or \(3,\)"):
        log_denominator(a, None, temperature=tau[:2])


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_batched_log_denominator(gen, symmetric):
    a = torch.randn(2, 5, 3, generator=gen, dtype=F64).requires_grad_()
    c = torch.randn(2, 4, 3, generator=gen, dtype=F64).requires_grad_()
    tau = torch.tensor([0.4, 0.7], dtype=F64, requires_grad=True)
    weight = torch.randn(2, 5, generator=gen, dtype=F64)

    def fn(a, c, tau):
        a = torch.nn.functional.normalize(a, dim=-1)
        if symmetric:
            return (weight * log_denominator(a, None, temperature=tau, chunk_size=2)).sum()
        c = torch.nn.functional.normalize(c, dim=-1)
        self_index = torch.tensor([1, -1, 0, 3, 2])
        out = log_denominator(a, c, temperature=tau, self_index=self_index, chunk_size=2)
        return (weight * out).sum()

    assert gradcheck(fn, (a, c, tau))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shift", ["global", "row_max"])
def test_expected_upstream_is_used_only_when_it_matches(gen, symmetric, shift, request):
    """An upstream that is a per-problem multiple of ``expected_upstream`` (a mean over
    valid anchors) skips the rebuild (float64 gradcheck on that path); any other falls
    back to it; both give the same gradients."""
    if shift == "row_max":
        request.getfixturevalue("row_max")
    a = torch.randn(2, 6, 3, generator=gen, dtype=F64).requires_grad_()
    c = torch.randn(2, 5, 3, generator=gen, dtype=F64).requires_grad_()
    tau = torch.tensor([0.4, 0.7], dtype=F64, requires_grad=True)
    valid = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    self_index = torch.tensor([1, -1, 0, 3, 2, 4])
    rebuilt = []
    original = chunked._rebuilt_grads
    request.getfixturevalue("monkeypatch").setattr(
        chunked, "_rebuilt_grads", lambda *args: rebuilt.append(1) or original(*args)
    )

    def fn(weight, expected):
        def loss(a, c, tau):
            a = torch.nn.functional.normalize(a, dim=-1)
            c = None if symmetric else torch.nn.functional.normalize(c, dim=-1)
            out = log_denominator(
                a,
                c,
                temperature=tau,
                self_index=None if symmetric else self_index,
                chunk_size=4,
                expected_upstream=expected,
            )
            return (weight * out).sum()

        return loss

    matching = torch.tensor([[2.5], [-0.7]], dtype=F64) * valid
    assert gradcheck(fn(matching, valid), (a, c, tau))
    assert rebuilt == []
    other = matching + 0.1 * torch.rand(2, 6, generator=gen, dtype=F64) * valid
    for weight in (matching, other):
        got = torch.autograd.grad(fn(weight, valid)(a, c, tau), (a, c, tau), allow_unused=True)
        want = torch.autograd.grad(fn(weight, None)(a, c, tau), (a, c, tau), allow_unused=True)
        for g, w in zip(got, want, strict=True):
            assert (g is None and w is None) or torch.allclose(g, w, atol=1e-12)
    assert len(rebuilt) == 3  # `other` with the expected upstream, and both without it


def test_no_gradient_work_without_grad(gen, monkeypatch):
    """Under no_grad (evaluation), forward computes no gradients ahead."""
    calls = []
    original = chunked._softmax_grads
    monkeypatch.setattr(chunked, "_softmax_grads", lambda *a: calls.append(1) or original(*a))
    z = unit(gen, 8, 4).requires_grad_()
    with torch.no_grad():
        log_denominator(z, None, temperature=0.5, expected_upstream=torch.ones(8))
    assert calls == []
    log_denominator(z, None, temperature=0.5, expected_upstream=torch.ones(8))
    assert calls == [1]


def test_mscon_batched_path_matches_one_call_per_head(gen, monkeypatch):
    """MSConLoss sends same-shape heads through one batched call; it equals one call per
    head (values, feature and log-variance gradients), missing labels included."""
    feats = torch.randn(3, 7, 2, 5, generator=gen, dtype=F64)
    labels = torch.stack([random_labels(gen, 7, p) for p in ("random", "dense", "missing")], 1)
    results = []
    for batched in (True, False):
        monkeypatch.setattr(MSConLoss, "_batchable", lambda self, heads, b=batched: b)
        loss_fn = MSConLoss(3, temperature=0.2, weighting="temperature", chunk_size=3).double()
        with torch.no_grad():
            loss_fn.log_vars.copy_(torch.tensor([0.3, -0.7, 0.1]))
        x = feats.clone().requires_grad_()
        loss = loss_fn(x, labels)
        results.append(
            (loss, loss_fn.last_losses, *torch.autograd.grad(loss, (x, loss_fn.log_vars)))
        )
    for got, want in zip(*results, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_batched_primitive_needs_labels_and_the_out_form(gen):
    z = unit(gen, 2, 4, 3)
    labels = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="batched anchors \\(C, M, d\\) need anchor_labels"):
        contrastive_cross_entropy(z, temperature=0.1, anchor_labels=labels, form="in")
    with pytest.raises(ValueError, match="batched anchors"):
        contrastive_cross_entropy(z, temperature=0.1, positive_mask=torch.ones(4, 4).bool())
    with pytest.raises(ValueError, match="batched features \\(C, B, V, d\\) need labels"):
        supcon_per_anchor(z.reshape(2, 2, 2, 3), temperature=0.1)


def test_tiny_temperature_is_finite_in_float32(gen):
    """exp((s - 1)/tau) underflows float32 at tau = 0.01 for far candidates: the row max
    is subtracted instead, and values and gradients match float64."""
    a64 = torch.randn(64, 8, generator=gen, dtype=F64)
    a64[:, 0] = -a64[:, 0].abs() - 1.0  # every other row on the far side of row 0
    a64[0] = torch.eye(8, dtype=F64)[0]
    a64 = torch.nn.functional.normalize(a64, dim=1)
    a32 = a64.float().requires_grad_()
    a64 = a64.clone().requires_grad_()
    got = log_denominator(a32, None, temperature=0.01, chunk_size=16)
    want = dense_log_denominator(a64, a64, 0.01, torch.arange(64))
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), want, rtol=1e-5)
    got.sum().backward()
    want.sum().backward()
    assert torch.allclose(a32.grad.double(), a64.grad, atol=1e-3 * a64.grad.abs().max())


def test_an_anchor_with_no_candidate_is_finite():
    a = torch.tensor([[1.0, 0.0]], dtype=F64, requires_grad=True)
    out = contrastive_cross_entropy(a, temperature=0.1, anchor_labels=torch.tensor([0]))
    assert out.losses.tolist() == [0.0] and out.valid.tolist() == [False]
    out.losses.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_no_m_by_n_tensor_is_saved_for_backward(gen):
    """Peak memory O(chunk x N): the graph holds nothing of size M x N."""
    n, d = 96, 4
    z = unit(gen, n, d, dtype=torch.float32).requires_grad_()
    labels = torch.randint(0, 3, (n,), generator=gen)
    largest = []

    def pack(t):
        largest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = contrastive_cross_entropy(z, temperature=0.1, anchor_labels=labels, chunk_size=8)
    out.losses.sum().backward()
    assert max(largest) <= n * (d + 1)


# ------------------------------------------------------------------ the primitive


@pytest.mark.parametrize("pattern", ["random", "singletons", "missing", "one_class", "dense"])
@pytest.mark.parametrize("chunk", [1, 5, None])
def test_labels_match_the_direct_path(gen, pattern, chunk):
    """Values and gradients (anchors, candidates, temperature) under per-anchor weights."""
    m, n = 10, 13
    a, c = unit(gen, m, 6).requires_grad_(), unit(gen, n, 6).requires_grad_()
    la, lc = random_labels(gen, m, pattern), random_labels(gen, n, pattern)
    lc[: m // 2] = la[: m // 2]  # some shared classes
    self_index = torch.tensor([0, 1, -1, 3, 12, -1, 6, 2, 8, 9])
    weight = torch.rand(m, generator=gen, dtype=F64)
    for symmetric in (False, True):
        results = []
        for fn in (contrastive_cross_entropy, dense):
            tau = torch.tensor(0.2, dtype=F64, requires_grad=True)
            kw = {"chunk_size": chunk} if fn is contrastive_cross_entropy else {}
            if symmetric:
                out = fn(a, temperature=tau, anchor_labels=la, **kw)
            else:
                out = fn(a, c, temperature=tau, anchor_labels=la, candidate_labels=lc,
                         self_index=self_index, **kw)  # fmt: skip
            grads = torch.autograd.grad((weight * out.losses).sum(), (a, c, tau), allow_unused=True)
            results.append((out, grads))
        (got, g_got), (want, g_want) = results
        assert torch.equal(got.valid, want.valid)
        assert torch.allclose(got.losses, want.losses, atol=1e-12)
        for x, y in zip(g_got, g_want, strict=True):
            assert (x is None and y is None) or torch.allclose(x, y, atol=1e-12)


@pytest.mark.parametrize("kind", ["positive_mask", "target_weights"])
def test_masks_and_soft_targets_match_the_direct_path(gen, kind):
    m, n = 8, 11
    a, c = unit(gen, m, 5).requires_grad_(), unit(gen, n, 5).requires_grad_()
    if kind == "positive_mask":
        target = torch.rand(m, n, generator=gen) < 0.3
        target[2] = False
    else:
        target = torch.rand(m, n, generator=gen, dtype=F64).requires_grad_()
        target.data[3] = 0.0
    self_index = torch.tensor([0, 4, -1, 3, 10, 5, -1, 7])
    weight = torch.rand(m, generator=gen, dtype=F64)
    inputs = (a, c) + ((target,) if target.requires_grad else ())
    outs = []
    for fn in (contrastive_cross_entropy, dense):
        tau = torch.tensor(0.3, dtype=F64, requires_grad=True)
        out = fn(a, c, temperature=tau, self_index=self_index, **{kind: target})
        outs.append((out, torch.autograd.grad((weight * out.losses).sum(), (*inputs, tau))))
    (got, g_got), (want, g_want) = outs
    assert torch.equal(got.valid, want.valid)
    assert torch.allclose(got.losses, want.losses, atol=1e-12)
    for x, y in zip(g_got, g_want, strict=True):
        assert torch.allclose(x, y, atol=1e-12)


def test_gradcheck_chunked_primitive_with_missing_labels(gen, row_max):
    a, c = torch.randn(6, 4, generator=gen, dtype=F64), torch.randn(7, 4, generator=gen, dtype=F64)
    a.requires_grad_(), c.requires_grad_()
    tau = torch.tensor(0.3, dtype=F64, requires_grad=True)
    la = torch.tensor([0, 1, -1, 0, 2, 1])
    lc = torch.tensor([1, 0, 0, -1, 2, 1, 0])

    def fn(a, c, tau):
        a = torch.nn.functional.normalize(a, dim=1)
        c = torch.nn.functional.normalize(c, dim=1)
        out = contrastive_cross_entropy(
            a, c, temperature=tau, anchor_labels=la, candidate_labels=lc,
            self_index=torch.tensor([1, -1, 3, 2, 4, 6]), chunk_size=4,
        )  # fmt: skip
        sym = contrastive_cross_entropy(a, temperature=tau, anchor_labels=la, chunk_size=4)
        return out.losses.sum() + 0.5 * sym.losses.sum()

    assert gradcheck(fn, (a, c, tau))


@pytest.mark.parametrize("weighting", ["uncertainty", "temperature"])
def test_mscon_loss_matches_the_direct_path(gen, weighting, monkeypatch):
    """Task weights and a learned per-similarity temperature reach the chunked path."""
    feats = torch.randn(3, 6, 2, 8, generator=gen, dtype=F64)
    labels = torch.stack([random_labels(gen, 6, p) for p in ("random", "dense", "missing")], 1)
    results = []
    for route in ("chunked", "dense"):
        if route == "dense":
            import mscon.losses.functional as functional

            monkeypatch.setattr(
                functional,
                "log_denominator",
                lambda a, c, *, temperature, self_index, **_: dense_log_denominator(
                    a, a if c is None else c, temperature, self_index
                ),
            )
        loss_fn = MSConLoss(3, temperature=0.2, weighting=weighting, chunk_size=5).double()
        with torch.no_grad():
            loss_fn.log_vars.copy_(torch.tensor([0.3, -0.7, 0.1]))
        x = feats.clone().requires_grad_()
        loss = loss_fn(x, labels)
        results.append((loss, *torch.autograd.grad(loss, (x, loss_fn.log_vars))))
    for got, want in zip(*results, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_results_do_not_depend_on_the_chunk_size(gen, monkeypatch):
    feats = torch.randn(20, 2, 16, generator=gen)
    want = SupConLoss(0.1)(feats, torch.arange(20) % 4)
    for chunk in (1, 3, 40):
        got = SupConLoss(0.1, chunk_size=chunk)(feats, torch.arange(20) % 4)
        assert torch.allclose(got, want, rtol=1e-6)
    monkeypatch.setenv(CHUNK_ENV, "7")
    assert resolve_chunk_size(None, 40, 16, "cpu") == 7
    assert resolve_chunk_size(2, 40, 16, "cpu") == 2  # the argument wins
    assert torch.allclose(
        NTXentLoss(0.5)(feats[:, 0], feats[:, 1]),
        NTXentLoss(0.5, chunk_size=40)(feats[:, 0], feats[:, 1]),
    )


def test_chunk_size_is_checked(monkeypatch):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="SupConLoss: chunk_size must be None or an integer"):
            SupConLoss(chunk_size=bad)
        with pytest.raises(ValueError, match="MSConLoss: chunk_size"):
            MSConLoss(2, chunk_size=bad)
        with pytest.raises(ValueError, match="NTXentLoss: chunk_size"):
            NTXentLoss(chunk_size=bad)
    monkeypatch.setenv(CHUNK_ENV, "lots")
    with pytest.raises(ValueError, match=f"{CHUNK_ENV} must be an integer >= 1, got 'lots'"):
        SupConLoss()(torch.randn(4, 2, 3))


def test_auto_chunk_size_keeps_a_block_near_128_mb():
    assert auto_chunk_size(4096, 128) == 2**25 // (4096 + 256)
    assert auto_chunk_size(4096, 128, batch=3) == 2**25 // (3 * (4096 + 256))
    assert 3 * auto_chunk_size(32768, 128, batch=3) * 32768 * 4 <= 128 * 2**20
    assert auto_chunk_size(2**30, 128) == 1
    assert auto_chunk_size(4096, 128, "cuda") == 2**26 // (4096 + 256)


# ------------------------------------------------------------------ two processes


def test_gather_distributed_matches_one_process(tmp_path, gen):
    """2-process gloo, uneven shards, missing labels, a float mask, a learned temperature,
    chunks smaller than a shard: values and gradients equal one process on the whole batch
    (itself checked against the direct path above)."""
    b, v = 7, 2
    feats = torch.randn(b, v, 6, generator=gen, dtype=F64)
    labels = torch.tensor([0, -1, 1, 0, 2, -1, 1])
    mask = torch.rand(b, b, generator=gen, dtype=F64)
    tau = 0.25
    torch.save(
        {"features": feats, "labels": labels, "mask": mask, "tau": tau, "splits": [0, 4, 7]},
        tmp_path / "inputs.pt",
    )
    ranks = run_ranks(WORKER, tmp_path)
    for name, kwargs in (("labels", {"labels": labels}), ("simclr", {}), ("mask", {"mask": mask})):
        x = feats.clone().requires_grad_()
        t = torch.tensor(tau, dtype=F64, requires_grad=True)
        out = supcon_per_anchor(x, temperature=t, **kwargs)
        total = (out.losses * out.valid).sum() / out.valid.sum()
        grad, grad_t = torch.autograd.grad(total, (x, t))
        value = sum(r[name]["value"] for r in ranks) / 2
        assert torch.allclose(value, total, atol=1e-12), name
        grads = torch.cat([r[name]["grad"] for r in ranks])  # DDP averages: divide by 2
        assert torch.allclose(grads / 2, grad, atol=1e-12), name
        assert torch.allclose(sum(r[name]["grad_tau"] for r in ranks) / 2, grad_t, atol=1e-12)
