"""SCELoss (SPEC section 7) and MoCo's InfoNCE (section 8, coeff = 1).

The reference below is plain Python floats with explicit loops over anchors and
candidates, and an analytic gradient with respect to the student (derived by hand,
chained through the L2 normalisation); nothing in it calls mscon.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from mscon.losses import SCELoss
from mscon.losses.sce import sce_per_anchor

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- reference


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(t * t for t in v))


def _unit(v: list[float]) -> list[float]:
    n = _norm(v)
    return [t / n for t in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def reference_sce(student, teacher, queue, tau, tau_m, coeff, index=None, queue_index=None):
    """(loss, d loss / d student as a B x d list) by explicit loops.

    Anchor i's candidates: [its positive teacher[i]] + the queue entries that are not
    empty (id -1) and not its own image; with no queue entry at all, the teacher keys of
    the batch (key k != i dropped when it has anchor i's image id).
    """
    s_raw, t_raw = student.tolist(), teacher.tolist()
    s, t = [_unit(r) for r in s_raw], [_unit(r) for r in t_raw]
    b, d = len(s), len(s[0])
    q = [] if queue is None else [_unit(r) for r in queue.tolist()]
    qi = [0] * len(q) if queue_index is None else queue_index.tolist()
    ids = None if index is None else index.tolist()
    have_queue = any(x != -1 for x in qi) if queue_index is not None else len(q) > 0

    total, grads = 0.0, []
    for i in range(b):
        # (key, is_positive) pairs
        if have_queue:
            cands = [(t[i], True)]
            for j in range(len(q)):
                if qi[j] == -1:
                    continue
                if ids is not None and queue_index is not None and qi[j] == ids[i]:
                    continue
                cands.append((q[j], False))
        else:
            cands = []
            for k in range(b):
                if k != i and ids is not None and ids[k] == ids[i]:
                    continue
                cands.append((t[k], k == i))
        # teacher target over the non-positive candidates
        t_logits = [_dot(t[i], c) / tau_m for c, pos in cands if not pos]
        target = []
        if t_logits:
            top = max(t_logits)
            e = [math.exp(v - top) for v in t_logits]
            target = [v / sum(e) for v in e]
        weights, it = [], iter(target)
        for _, pos in cands:
            weights.append(coeff if pos else (1 - coeff) * next(it))
        # student distribution over all candidates
        logits = [_dot(s[i], c) / tau for c, _ in cands]
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        probs = [math.exp(v - lse) for v in logits]
        total += -sum(w * (v - lse) for w, v in zip(weights, logits, strict=True))
        # d l_i / d logit_k = p_k * sum(w) - w_k; d logit_k / d s_hat = c_k / tau
        wsum = sum(weights)
        g_hat = [0.0] * d
        for (c, _), p, w in zip(cands, probs, weights, strict=True):
            coef = (p * wsum - w) / tau
            for a in range(d):
                g_hat[a] += coef * c[a]
        # through s_hat = s / |s|: (g - (g . s_hat) s_hat) / |s|
        n = _norm(s_raw[i])
        proj = _dot(g_hat, s[i])
        grads.append([(g_hat[a] - proj * s[i][a]) / n / b for a in range(d)])
    return total / b, grads


# ----------------------------------------------------------------------------- helpers


def rand(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def loss_and_grad(loss_fn, student, teacher, queue=None, **kw):
    x = student.clone().requires_grad_()
    loss = loss_fn(x, teacher, queue, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def infonce(student, teacher, queue, tau):
    """MoCo: cross-entropy with the positive at index 0 over [positive, queue]."""
    s, t, q = (F.normalize(x, dim=1) for x in (student, teacher, queue))
    logits = torch.cat([(s * t).sum(1, keepdim=True), s @ q.T], 1) / tau
    return F.cross_entropy(logits, torch.zeros(len(s), dtype=torch.long))


# ----------------------------------------------------------------------------- tests

SETTINGS = [(0.1, 0.05, 0.5), (0.2, 0.07, 0.0), (0.5, 0.1, 1.0), (0.07, 0.2, 0.3)]


@pytest.mark.parametrize(("tau", "tau_m", "coeff"), SETTINGS)
@pytest.mark.parametrize("case", ["queue", "queue_ids", "batch", "batch_ids"])
def test_matches_loop_reference(gen, tau, tau_m, coeff, case):
    b, m, d = 5, 7, 4
    student, teacher = rand(gen, b, d), rand(gen, b, d)
    kw = {}
    queue = rand(gen, m, d) if case.startswith("queue") else None
    if case == "queue_ids":
        kw = {
            "index": torch.tensor([3, 8, 1, 5, 0]),
            # a stale copy of images 8 and 0, two of image 5, two empty slots
            "queue_index": torch.tensor([8, -1, 5, 2, 5, -1, 0]),
        }
    elif case == "batch_ids":
        kw = {"index": torch.tensor([4, 9, 4, 2, 7])}  # image 4 twice in the batch
    value, grad = loss_and_grad(SCELoss(tau, tau_m, coeff), student, teacher, queue, **kw)
    want, want_grad = reference_sce(student, teacher, queue, tau, tau_m, coeff, **kw)
    assert value.dtype == F64
    torch.testing.assert_close(value, torch.tensor(want, dtype=F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, torch.tensor(want_grad, dtype=F64), rtol=1e-6, atol=1e-12)


def test_identical_embeddings_give_log_candidates():
    z = torch.ones(4, 8)
    for coeff in (0.0, 0.5, 1.0):
        loss_fn = SCELoss(coeff=coeff)
        assert math.isclose(loss_fn(z, z, torch.ones(6, 8)).item(), math.log(7), rel_tol=1e-6)
        assert math.isclose(loss_fn(z, z).item(), math.log(4), rel_tol=1e-6)
        assert math.isclose(loss_fn(z, z, torch.ones(0, 8)).item(), math.log(4), rel_tol=1e-6)


@pytest.mark.parametrize("tau", [0.2, 0.07])
def test_coeff_one_is_moco_infonce(gen, tau):
    student, teacher, queue = rand(gen, 6, 5), rand(gen, 6, 5), rand(gen, 9, 5)
    got, grad = loss_and_grad(SCELoss(tau, 0.05, coeff=1.0), student, teacher, queue)
    x = student.clone().requires_grad_()
    want = infonce(x, teacher, queue, tau)
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_coeff_zero_is_pure_relational(gen):
    tau, tau_m = 0.1, 0.05
    student, teacher, queue = rand(gen, 6, 5), rand(gen, 6, 5), rand(gen, 9, 5)
    got = SCELoss(tau, tau_m, coeff=0.0)(student, teacher, queue)
    s, t, q = (F.normalize(x, dim=1) for x in (student, teacher, queue))
    target = torch.softmax(t @ q.T / tau_m, dim=1)  # no mass on the positive
    log_p = torch.log_softmax(torch.cat([(s * t).sum(1, keepdim=True), s @ q.T], 1) / tau, 1)
    want = -(target * log_p[:, 1:]).sum(1).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # and the mixture is linear in coeff
    mixed = SCELoss(tau, tau_m, coeff=0.3)(student, teacher, queue)
    moco = SCELoss(tau, tau_m, coeff=1.0)(student, teacher, queue)
    torch.testing.assert_close(mixed, 0.3 * moco + 0.7 * got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_queue", [True, False])
def test_no_gradient_reaches_teacher_or_queue(gen, with_queue):
    student = rand(gen, 5, 4).requires_grad_()
    teacher = rand(gen, 5, 4).requires_grad_()
    queue = rand(gen, 6, 4).requires_grad_() if with_queue else None
    loss = SCELoss()(student, teacher, queue)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    if with_queue:
        assert queue.grad is None


def test_self_index_entry_equals_loss_without_it(gen):
    """A queue entry with anchor i's image id changes nothing for anchor i."""
    b, m, d = 4, 6, 5
    student, teacher, queue = rand(gen, b, d), rand(gen, b, d), rand(gen, m, d)
    index = torch.tensor([10, 11, 12, 13])
    queue_index = torch.tensor([20, 11, 21, 13, 22, 13])  # 11 once, 13 twice
    kw = {"temperature": 0.1, "temperature_m": 0.05, "coeff": 0.5}
    got = sce_per_anchor(student, teacher, queue, index=index, queue_index=queue_index, **kw)
    for i in range(b):
        keep = queue_index != index[i]
        want = sce_per_anchor(student[i : i + 1], teacher[i : i + 1], queue[keep], **kw)
        torch.testing.assert_close(got[i], want[0], rtol=1e-12, atol=1e-12)
    # without ids nothing is masked: anchors 1 and 3 see different candidates
    plain = sce_per_anchor(student, teacher, queue, **kw)
    torch.testing.assert_close(got[[0, 2]], plain[[0, 2]], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got[[1, 3]], plain[[1, 3]])


def test_anchor_with_only_its_own_copies_has_zero_loss(gen):
    student, teacher, queue = rand(gen, 2, 3), rand(gen, 2, 3), rand(gen, 2, 3)
    kw = {"temperature": 0.1, "temperature_m": 0.05, "coeff": 0.5}
    got = sce_per_anchor(
        student,
        teacher,
        queue,
        index=torch.tensor([0, 1]),
        queue_index=torch.tensor([0, 0]),
        **kw,
    )
    assert got[0].item() == 0.0 and got[1].item() > 0


def test_empty_slots_are_ignored(gen):
    b, d = 5, 4
    student, teacher, queue = rand(gen, b, d), rand(gen, b, d), rand(gen, 8, d)
    queue_index = torch.tensor([3, -1, 4, -1, -1, 9, 1, -1])
    garbage = queue.clone()
    garbage[queue_index == -1] = 1e6 * rand(gen, 4, d)  # whatever sits in empty slots
    loss_fn = SCELoss(0.1, 0.05, 0.5)
    index = torch.arange(100, 105)
    got = loss_fn(student, teacher, garbage, index=index, queue_index=queue_index)
    keep = queue_index >= 0
    want = loss_fn(student, teacher, queue[keep], index=index, queue_index=queue_index[keep])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, loss_fn(student, teacher, queue[keep]), rtol=1e-12, atol=0)
    # a queue of only empty slots is no queue: the batch's keys are the candidates
    none = loss_fn(student, teacher, queue, queue_index=torch.full((8,), -1))
    torch.testing.assert_close(none, loss_fn(student, teacher), rtol=1e-12, atol=1e-12)


def test_batch_of_one_without_queue_raises():
    z = torch.randn(1, 4)
    with pytest.raises(ValueError, match=r"SCELoss: .*B >= 2.*got B = 1"):
        SCELoss()(z, z)
    with pytest.raises(ValueError, match=r"B >= 2"):
        SCELoss()(z, z, torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"B >= 2"):
        SCELoss()(z, z, torch.randn(3, 4), queue_index=torch.tensor([-1, -1, -1]))
    assert torch.isfinite(SCELoss()(z, z, torch.randn(3, 4)))  # a queue is enough


@pytest.mark.parametrize("with_queue", [True, False])
def test_gradcheck_float64(gen, with_queue):
    student, teacher = rand(gen, 4, 3).requires_grad_(), rand(gen, 4, 3)
    index = torch.tensor([0, 1, 2, 0])
    if with_queue:
        queue, queue_index = rand(gen, 5, 3), torch.tensor([1, -1, 7, 2, 8])
    else:
        queue, queue_index = None, None
    loss_fn = SCELoss(0.2, 0.1, 0.4)
    assert gradcheck(
        lambda s: loss_fn(s, teacher, queue, index=index, queue_index=queue_index), (student,)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_finite_and_close_to_float32(gen, dtype):
    centres = torch.randn(16, 32, generator=gen)
    student = centres + 0.2 * torch.randn(16, 32, generator=gen)
    teacher = centres + 0.2 * torch.randn(16, 32, generator=gen)
    queue = torch.randn(64, 32, generator=gen)
    for tau, tau_m in ((0.1, 0.05), (0.02, 0.01)):
        loss_fn = SCELoss(tau, tau_m)
        for q in (queue, None):
            sh = student.to(dtype).requires_grad_()
            th, qh = teacher.to(dtype), None if q is None else q.to(dtype)
            got = loss_fn(sh, th, qh)
            got.backward()
            assert got.dtype == torch.float32 and torch.isfinite(got)
            assert sh.grad.dtype == dtype and torch.isfinite(sh.grad.float()).all()
            # the same values in float32: only the computation's precision differs
            ref = loss_fn(sh.detach().float(), th.float(), None if q is None else qh.float())
            assert abs(got.item() - ref.item()) <= 1e-2 * max(1.0, abs(ref.item()))


def test_float64_stays_float64_and_mixed_dtypes_promote(gen):
    s, t = rand(gen, 3, 4), rand(gen, 3, 4)
    assert SCELoss()(s, t).dtype == F64
    assert SCELoss()(s.float(), t.float(), rand(gen, 2, 4)).dtype == F64


@pytest.mark.parametrize("with_queue", [True, False])
def test_invariant_to_batch_order(gen, with_queue):
    b, d = 6, 4
    student, teacher = rand(gen, b, d), rand(gen, b, d)
    index = torch.tensor([5, 1, 5, 3, 0, 2])
    queue = rand(gen, 7, d) if with_queue else None
    queue_index = torch.tensor([1, 5, -1, 9, 0, 4, 3]) if with_queue else None
    loss_fn = SCELoss(0.1, 0.05, 0.5)
    value, grad = loss_and_grad(
        loss_fn, student, teacher, queue, index=index, queue_index=queue_index
    )
    perm = torch.randperm(b, generator=gen)
    value_p, grad_p = loss_and_grad(
        loss_fn, student[perm], teacher[perm], queue, index=index[perm], queue_index=queue_index
    )
    torch.testing.assert_close(value_p, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_p, grad[perm], rtol=1e-10, atol=1e-12)


def test_invariant_to_queue_order(gen):
    student, teacher, queue = rand(gen, 5, 4), rand(gen, 5, 4), rand(gen, 9, 4)
    index = torch.arange(5)
    queue_index = torch.tensor([0, -1, 3, 7, 8, 1, -1, 2, 6])
    loss_fn = SCELoss(0.1, 0.05, 0.5)
    value, grad = loss_and_grad(
        loss_fn, student, teacher, queue, index=index, queue_index=queue_index
    )
    perm = torch.randperm(9, generator=gen)
    value_p, grad_p = loss_and_grad(
        loss_fn, student, teacher, queue[perm], index=index, queue_index=queue_index[perm]
    )
    torch.testing.assert_close(value_p, value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_p, grad, rtol=1e-10, atol=1e-12)


def test_does_not_depend_on_embedding_scale(gen):
    student, teacher, queue = rand(gen, 4, 3), rand(gen, 4, 3), rand(gen, 5, 3)
    loss_fn = SCELoss()
    torch.testing.assert_close(
        loss_fn(3.0 * student, 0.2 * teacher, 7.0 * queue), loss_fn(student, teacher, queue)
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((torch.randn(4, 2, 3), torch.randn(4, 2, 3)), {}, r"student must have shape \(B, d\)"),
        ((torch.randn(0, 3), torch.randn(0, 3)), {}, r"student .*B >= 1, got \(0, 3\)"),
        ((torch.randn(4, 3), torch.randn(5, 3)), {}, r"teacher must .* \(4, 3\), got \(5, 3\)"),
        ((torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2)), {}, r"queue .*got \(6, 2\)"),
        ((torch.randn(4, 3), torch.randn(4, 3), torch.randn(6)), {}, r"queue .*got \(6,\)"),
        (
            (torch.randn(4, 3), torch.randn(4, 3)),
            {"index": torch.arange(3)},
            r"index must have shape \(B,\) = \(4,\), got \(3,\)",
        ),
        (
            (torch.randn(4, 3), torch.randn(4, 3)),
            {"index": torch.zeros(4)},
            r"index must be integer image ids, got dtype torch.float32",
        ),
        (
            (torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 3)),
            {"queue_index": torch.arange(5)},
            r"queue_index must have shape \(M,\) = \(6,\), got \(5,\)",
        ),
        (
            (torch.randn(4, 3), torch.randn(4, 3)),
            {"queue_index": torch.arange(5)},
            r"queue_index needs a queue",
        ),
        (
            (torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3)),
            {"queue_index": torch.tensor([0, -2])},
            r"queue_index must be image ids >= 0 \(or -1\), got -2",
        ),
        (
            (torch.full((4, 3), float("nan")), torch.randn(4, 3)),
            {},
            r"student must contain only finite values, got NaN",
        ),
        ((torch.randn(4, 3), torch.randint(0, 3, (4, 3))), {}, r"teacher must be a float16"),
    ],
)
def test_bad_inputs_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCELoss()(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, r"SCELoss: temperature must be a finite number > 0, got 0.0"),
        ({"temperature_m": -1.0}, r"temperature_m must be a finite number > 0"),
        ({"coeff": 1.5}, r"coeff must be a number in \[0, 1\], got 1.5"),
        ({"coeff": True}, r"coeff must be a number in \[0, 1\]"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SCELoss(**kwargs)
