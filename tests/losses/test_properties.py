"""Analytic values, invariances (batch permutation, label renaming, view order) and
hypothesis property tests of every loss in mscon.losses."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from losses.helpers import LABEL_PATTERNS, random_labels
from mscon.losses import (
    WEIGHTING_MODES,
    FMICLLoss,
    MSConFMICLLoss,
    MSConLoss,
    MultiTaskCELoss,
    NTXentLoss,
    SCELoss,
    SupConLoss,
    TaskWeighting,
)
from mscon.losses.divergences import DIVERGENCES

F64 = torch.float64


def assert_close(a: torch.Tensor, b: torch.Tensor | float, tol: float = 1e-10) -> None:
    a, b = (float(t.detach()) if isinstance(t, torch.Tensor) else float(t) for t in (a, b))
    assert abs(a - b) <= tol * max(1.0, abs(b)), (a, b)


# ----------------------------------------------------------------- analytic values


@pytest.mark.parametrize("b", [1, 2, 5])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_identical_embeddings_give_log_n_minus_1(b, tau):
    z = torch.ones(b, 6, dtype=F64)
    assert_close(NTXentLoss(temperature=tau)(z, z), math.log(2 * b - 1))
    for v in (2, 3):
        x = torch.ones(b, v, 6, dtype=F64)
        n = b * v
        assert_close(SupConLoss(temperature=tau)(x), math.log(n - 1))
        assert_close(SupConLoss(tau)(x, torch.arange(b) % 2), math.log(n - 1))
        # L_in: -log((1/|P|) sum_p 1/(N-1)) = log(N-1) too
        assert_close(SupConLoss(tau, form="in")(x, torch.arange(b) % 2), math.log(n - 1))


def test_supcon_positive_only_pair_is_zero_and_clean_separation_small():
    # B = 1, V = 2: the only candidate is the positive, p = 1
    assert_close(SupConLoss(0.1)(torch.randn(1, 2, 4, dtype=F64)), 0.0)
    # two classes on opposite poles: loss -> log(|P|) = log(1) at low temperature
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    loss = SupConLoss(0.01)(x, torch.tensor([0, 0, 1, 1]))
    assert 0 <= float(loss) < 1e-50


def test_no_valid_anchor_gives_exact_zero_with_gradient_path(gen):
    x = torch.randn(4, 1, 3, generator=gen, dtype=F64, requires_grad=True)
    for labels in (torch.full((4,), -1), torch.arange(4)):  # all missing; all singletons
        loss = SupConLoss(0.1)(x, labels)
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.equal(grad, torch.zeros_like(x))
    m = MSConLoss(2)
    feats = torch.randn(2, 4, 1, 3, generator=gen, requires_grad=True)
    total = m(feats, torch.full((4, 2), -1))
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert torch.equal(m.log_vars.grad, torch.zeros(2))
    assert m.last_valid.tolist() == [False, False]
    assert torch.isfinite(feats.grad).all()


def test_missing_similarity_drops_its_log_var_term(gen):
    m = MSConLoss(2, temperature=0.2)
    feats = torch.randn(2, 6, 1, 4, generator=gen)
    labels = torch.tensor([[0, -1], [0, -1], [1, -1], [1, 3], [2, -1], [2, -1]])
    with torch.no_grad():
        m.log_vars.fill_(0.7)
    total = m(feats, labels)
    total.backward()
    assert m.last_valid.tolist() == [True, False]
    assert m.last_losses[1].item() == 0.0
    assert_close(total, math.exp(-0.7) * m.last_losses[0].item() + 0.35, 1e-6)
    assert m.log_vars.grad[1].item() == 0.0
    ce = MultiTaskCELoss([3, 2])
    out = ce([torch.randn(3, 3), torch.randn(3, 2)], torch.tensor([[0, -1], [1, -1], [2, -1]]))
    out.backward()
    assert ce.last_valid.tolist() == [True, False] and ce.log_vars.grad[1].item() == 0.0


def test_uncertainty_weighting_converges_to_log_2l():
    """With fixed L_c, minimising over s_c alone gives s_c = log(2 L_c)."""
    losses = torch.tensor([0.3, 1.0, 4.2], dtype=F64)
    w = TaskWeighting(3, "uncertainty").double()
    opt = torch.optim.SGD([w.log_vars], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        w(losses, torch.ones(3, dtype=torch.bool)).backward()
        opt.step()
    torch.testing.assert_close(w.log_vars.detach(), torch.log(2 * losses), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.task_weights().detach(), 1 / (2 * losses), atol=1e-6, rtol=0)


def test_mscon_uncertainty_optimum_through_the_loss(gen):
    """The same optimum via MSConLoss on fixed embeddings (L_c does not depend on s_c)."""
    m = MSConLoss(2, temperature=0.5).double()
    feats = torch.randn(2, 6, 2, 3, generator=gen, dtype=F64)
    labels = torch.stack([torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])], 1)
    opt = torch.optim.SGD([m.log_vars], lr=0.5)
    for _ in range(80):
        opt.zero_grad()
        m(feats, labels).backward()
        opt.step()
    torch.testing.assert_close(
        m.log_vars.detach(), torch.log(2 * m.last_losses.double()), atol=1e-5, rtol=0
    )


# ------------------------------------------------------------------- invariances


def test_invariance_batch_permutation_label_renaming_view_order(gen):
    b, v, d = 7, 3, 5
    x = torch.randn(b, v, d, generator=gen, dtype=F64)
    labels = random_labels(gen, b, "random")
    perm = torch.randperm(b, generator=gen)
    views = torch.randperm(v, generator=gen)
    rename = torch.tensor([4, 9, 2])  # class k -> rename[k]; -1 stays -1
    renamed = torch.where(labels >= 0, rename[labels.clamp_min(0)], labels)
    mask = torch.rand(b, b, generator=gen, dtype=F64)
    for form in ("out", "in"):
        loss_fn = SupConLoss(0.2, form=form)
        base = loss_fn(x, labels)
        assert_close(loss_fn(x[perm], labels[perm]), base)
        assert_close(loss_fn(x[:, views], labels), base)
        assert_close(loss_fn(x, renamed), base)
        base_mask = loss_fn(x, mask=mask)
        assert_close(loss_fn(x[perm], mask=mask[perm][:, perm]), base_mask)
        assert_close(loss_fn(x[:, views], mask=mask), base_mask)

    z0, z1 = x[:, 0], x[:, 1]
    nt = NTXentLoss(0.3)
    assert_close(nt(z0[perm], z1[perm]), nt(z0, z1))
    assert_close(nt(z1, z0), nt(z0, z1))

    m = MSConLoss(2, weighting="uncertainty").double()
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor([0.3, -0.4]))
    feats = torch.randn(2, b, v, d, generator=gen, dtype=F64)
    lab2 = torch.stack([labels, random_labels(gen, b, "dense")], 1)
    base = m(feats, lab2)
    assert_close(m(feats[:, perm], lab2[perm]), base)
    assert_close(m(feats[:, :, views], lab2), base)
    assert_close(m(feats, torch.where(lab2 >= 0, lab2 + 10, lab2)), base)

    ce = MultiTaskCELoss([3, 4]).double()
    logits = [
        torch.randn(b, 3, generator=gen, dtype=F64),
        torch.randn(b, 4, generator=gen, dtype=F64),
    ]
    y = torch.stack(
        [torch.randint(-1, 3, (b,), generator=gen), torch.randint(-1, 4, (b,), generator=gen)], 1
    )
    assert_close(ce([t[perm] for t in logits], y[perm]), ce(logits, y))


def test_gather_distributed_without_group_is_identical(gen):
    x = torch.randn(5, 2, 4, generator=gen, dtype=F64)
    labels = random_labels(gen, 5, "random")
    assert SupConLoss(gather_distributed=True)(x, labels).item() == SupConLoss()(x, labels).item()
    a = NTXentLoss(gather_distributed=True)(x[:, 0], x[:, 1]).item()
    assert a == NTXentLoss()(x[:, 0], x[:, 1]).item()


# ----------------------------------------------------------- property-based (hypothesis)
#
# Every loss exported by mscon.losses, in every weighting mode and divergence: for
# legal shapes, awkward label patterns, four dtypes and temperatures down to 0.01 the
# value and the gradients are finite; SupCon and NT-Xent are >= 0 (up to rounding);
# task weights are > 0 when learned and >= 0 when fixed; the value does not depend
# on the order of the batch. Example counts are capped: the section runs in seconds.

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PROPERTY = settings(max_examples=6, deadline=None, derandomize=True)
CASES = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "b": st.integers(1, 6),
        "v": st.integers(1, 3),
        "d": st.integers(2, 8),
        "c": st.integers(1, 3),
        "tau": st.sampled_from([0.01, 0.03, 0.1, 0.5, 1.0]),
        "patterns": st.lists(st.sampled_from(LABEL_PATTERNS), min_size=3, max_size=3),
        "dtype": st.sampled_from(DTYPES),
    }
)
# always tried: every dtype once at the smallest temperature with degenerate labels
EXTREMES = [
    {"seed": 0, "b": b, "v": 2, "d": 4, "c": 3, "tau": 0.01, "patterns": pats, "dtype": dtype}
    for b, pats, dtype in (
        (1, ["missing"] * 3, torch.float16),
        (4, ["singletons", "one_class", "missing"], torch.bfloat16),
        (5, ["one_class", "missing", "singletons"], torch.float32),
        (6, ["random", "dense", "singletons"], torch.float64),
    )
]


@dataclass
class Case:
    """A loss evaluated on ``inputs`` (leaf tensors) and on the batch permuted by ``perm``."""

    loss: Callable[[], torch.Tensor]
    inputs: list[torch.Tensor]
    permuted: Callable[[torch.Tensor], torch.Tensor]
    module: torch.nn.Module
    batch: int
    non_negative: bool = False


def leaf(gen, dtype, *shape, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=F64)).to(dtype).requires_grad_()


def label_matrix(gen, b, patterns):
    return torch.stack([random_labels(gen, b, p) for p in patterns], 1)


def ntxent(p, gen, dtype):
    m = NTXentLoss(p["tau"])
    z0, z1 = leaf(gen, dtype, p["b"], p["d"]), leaf(gen, dtype, p["b"], p["d"])
    return Case(lambda: m(z0, z1), [z0, z1], lambda i: m(z0[i], z1[i]), m, p["b"], True)


def supcon(form):
    def make(p, gen, dtype):
        m = SupConLoss(p["tau"], form=form)
        x = leaf(gen, dtype, p["b"], p["v"], p["d"])
        y = random_labels(gen, p["b"], p["patterns"][0])
        return Case(lambda: m(x, y), [x], lambda i: m(x[i], y[i]), m, p["b"], True)

    return make


def task_weights(mode, c, gen):
    if not WEIGHTING_MODES[mode].uses_weights:
        return None
    return (torch.rand(c, generator=gen) * 3).masked_fill(torch.rand(c, generator=gen) < 0.3, 0)


def mscon(mode):
    def make(p, gen, dtype):
        c = p["c"]
        m = MSConLoss(c, p["tau"], weighting=mode, weights=task_weights(mode, c, gen))
        x = leaf(gen, dtype, c, p["b"], p["v"], p["d"])
        y = label_matrix(gen, p["b"], p["patterns"][:c])
        return Case(lambda: m(x, y), [x], lambda i: m(x[:, i], y[i]), m, p["b"])

    return make


def mscon_fmicl(mode):
    def make(p, gen, dtype):
        c = p["c"]
        m = MSConFMICLLoss(c, weighting=mode, weights=task_weights(mode, c, gen))
        x = leaf(gen, dtype, c, p["b"], max(2, p["v"]), p["d"])
        y = label_matrix(gen, p["b"], p["patterns"][:c])
        return Case(lambda: m(x, y), [x], lambda i: m(x[:, i], y[i]), m, p["b"])

    return make


def multitask_ce(mode):
    def make(p, gen, dtype):
        c = p["c"]
        classes = [2 + k for k in range(c)]
        m = MultiTaskCELoss(classes, weighting=mode, weights=task_weights(mode, c, gen))
        logits = [leaf(gen, dtype, p["b"], k, scale=1 / p["tau"]) for k in classes]
        raw = label_matrix(gen, p["b"], p["patterns"][:c])
        y = torch.where(raw < 0, -1, raw % torch.tensor(classes))
        permuted = lambda i: m([t[i] for t in logits], y[i])  # noqa: E731
        return Case(lambda: m(logits, y), logits, permuted, m, p["b"])

    return make


def fmicl(divergence):
    def make(p, gen, dtype):
        m = FMICLLoss(divergence)
        x = leaf(gen, dtype, p["b"], max(2, p["v"]), p["d"])
        y = random_labels(gen, p["b"], p["patterns"][0])
        return Case(lambda: m(x, y), [x], lambda i: m(x[i], y[i]), m, p["b"])

    return make


def sce(p, gen, dtype):
    m = SCELoss(p["tau"], temperature_m=p["tau"] / 2)
    queue = leaf(gen, dtype, 3, p["d"]).detach() if p["patterns"][0] == "dense" else None
    b = p["b"] if queue is not None else max(2, p["b"])  # the batch's keys need B >= 2
    student, teacher = leaf(gen, dtype, b, p["d"]), leaf(gen, dtype, b, p["d"])
    return Case(
        lambda: m(student, teacher, queue),
        [student, teacher],
        lambda i: m(student[i], teacher[i], queue),
        m,
        b,
    )


LOSS_CASES = {
    "NTXentLoss": ntxent,
    "SupConLoss/out": supcon("out"),
    "SupConLoss/in": supcon("in"),
    **{f"MSConLoss/{mode}": mscon(mode) for mode in WEIGHTING_MODES},
    **{f"MSConFMICLLoss/{mode}": mscon_fmicl(mode) for mode in MSConFMICLLoss.WEIGHTINGS},
    **{f"MultiTaskCELoss/{mode}": multitask_ce(mode) for mode in WEIGHTING_MODES},
    **{f"FMICLLoss/{name}": fmicl(name) for name in DIVERGENCES},
    "SCELoss": sce,
}


def test_every_exported_loss_has_property_cases():
    import mscon.losses

    exported = {
        name
        for name in mscon.losses.__all__
        if name.endswith("Loss") and issubclass(getattr(mscon.losses, name), torch.nn.Module)
    }
    assert exported == {key.split("/")[0] for key in LOSS_CASES}


def check_properties(make, p):
    gen = torch.Generator().manual_seed(p["seed"])
    dtype = p["dtype"]
    case = make(p, gen, dtype)
    if dtype == F64:
        case.module.double()
    learned = [q for q in case.module.parameters() if q.requires_grad]
    with torch.no_grad():  # learned task weights anywhere in a plausible range
        for q in learned:
            q.uniform_(-4.0, 4.0, generator=gen)
    loss = case.loss()
    assert loss.dim() == 0 and torch.isfinite(loss), loss.item()
    if case.non_negative:
        assert loss.item() >= -1e-6
    grads = torch.autograd.grad(loss, case.inputs + learned, allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()
    weighting = getattr(case.module, "weighting", None)
    if weighting is not None:
        weights = case.module.task_weights().detach()
        assert torch.isfinite(weights).all()
        assert (weights > 0).all() if weighting.strategy.learnable else (weights >= 0).all()
    if dtype == F64:  # invariance: the same loss on the batch in another order
        perm = torch.randperm(case.batch, generator=gen)
        assert_close(case.permuted(perm), loss, 1e-9)


def with_extremes(test):
    for extreme in EXTREMES:
        test = example(p=extreme)(test)
    return test


@pytest.mark.parametrize("name", list(LOSS_CASES))
@PROPERTY
@with_extremes
@given(p=CASES)
def test_finite_non_negative_weighted_and_permutation_invariant(name, p):
    check_properties(LOSS_CASES[name], p)
