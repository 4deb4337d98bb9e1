"""EMA teacher, momentum schedules, the FIFO key queue and shuffled BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mscon.models import (
    MOMENTUM_SCHEDULES,
    EMATeacher,
    MomentumQueue,
    ProjectionHead,
    constant_momentum,
    cosine_momentum,
    gather_keys,
    predictor_head,
    shuffled_forward,
    shuffled_forward_distributed,
    split_forward,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def small_student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


# ----------------------------------------------------------------------------- EMA teacher


def test_teacher_is_a_frozen_deep_copy():
    student = small_student()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n_t, p_t), (n_s, p_s) in zip(
        teacher.module.named_parameters(), student.named_parameters(), strict=True
    ):
        assert n_t == n_s and torch.equal(p_t, p_s) and p_t.data_ptr() != p_s.data_ptr()
    x = torch.randn(6, 3)
    student.eval(), teacher.eval()
    assert torch.equal(teacher(x), student(x))
    assert "module.0.weight" in teacher.state_dict()


def test_ema_update_hand_computed():
    student = nn.Linear(2, 1)
    teacher = EMATeacher(student)
    with torch.no_grad():
        teacher.module.weight.copy_(torch.tensor([[1.0, -2.0]]))
        teacher.module.bias.fill_(4.0)
        student.weight.copy_(torch.tensor([[3.0, 2.0]]))
        student.bias.fill_(0.0)
    teacher.update(student, momentum=0.75)
    # 0.75 * teacher + 0.25 * student
    assert teacher.module.weight.tolist() == [[1.5, -1.0]]
    assert teacher.module.bias.tolist() == [3.0]
    teacher.update(student, momentum=0.5)
    assert teacher.module.weight.tolist() == [[2.25, 0.5]]
    assert teacher.module.bias.tolist() == [1.5]
    teacher.update(student, momentum=1.0)  # frozen
    assert teacher.module.weight.tolist() == [[2.25, 0.5]]
    teacher.update(student, momentum=0.0)  # a copy
    assert torch.equal(teacher.module.weight, student.weight)
    assert not teacher.module.weight.requires_grad


def test_ema_update_copies_buffers_and_matches_formula():
    student = small_student()
    teacher = EMATeacher(student)
    before = {n: p.clone() for n, p in teacher.module.named_parameters()}
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    student.train()
    student(torch.randn(8, 3)).pow(2).sum().backward()  # also moves BN running stats
    opt.step()
    teacher.update(student, momentum=0.9)
    for n, p_s in student.named_parameters():
        want = 0.9 * before[n] + 0.1 * p_s.detach()
        torch.testing.assert_close(dict(teacher.module.named_parameters())[n], want)
    for (n_t, b_t), (_, b_s) in zip(
        teacher.module.named_buffers(), student.named_buffers(), strict=True
    ):
        assert torch.equal(b_t, b_s), n_t
    assert int(teacher.module[1].num_batches_tracked) == 1


def test_ema_update_unwraps_and_checks():
    student = small_student()
    teacher = EMATeacher(nn.DataParallel(student))
    teacher.update(nn.DataParallel(student), 0.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        teacher.update(student, 1.5)
    with pytest.raises(ValueError, match=r"student must have the teacher's parameters"):
        teacher.update(nn.Linear(3, 4), 0.5)


def test_cosine_and_constant_schedules():
    m0, total = 0.99, 100
    assert cosine_momentum(m0, 0, total) == pytest.approx(0.99, abs=1e-15)
    assert cosine_momentum(m0, 50, total) == pytest.approx(0.995, abs=1e-15)
    assert cosine_momentum(m0, 100, total) == pytest.approx(1.0, abs=1e-15)
    # t = T/3: cos(pi/3) = 1/2, so m = 1 - 0.01 * 0.75
    assert cosine_momentum(m0, 1, 3) == pytest.approx(0.9925, abs=1e-15)
    assert cosine_momentum(m0, 250, total) == 1.0  # clamped after the end
    assert cosine_momentum(m0, -5, total) == pytest.approx(0.99, abs=1e-15)
    values = [cosine_momentum(0.9, t, 20) for t in range(21)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    want = [1 - 0.1 * (math.cos(math.pi * t / 20) + 1) / 2 for t in range(21)]
    assert values == pytest.approx(want, abs=1e-15)
    assert constant_momentum(0.99, 7, 100) == 0.99
    assert set(MOMENTUM_SCHEDULES) == {"constant", "cosine"}
    with pytest.raises(ValueError, match=r"total_steps must be >= 1, got 0"):
        cosine_momentum(0.99, 0, 0)


# ----------------------------------------------------------------------------- queue


def keys_of(ids: list[int], dim: int = 2) -> torch.Tensor:
    """Key rows that encode their id: row for id k is [k, -k, ...]."""
    return torch.tensor([[float(k) * (-1) ** j for j in range(dim)] for k in ids])


def test_queue_starts_empty():
    q = MomentumQueue(size=5, dim=2)
    assert len(q) == 0 and q.keys.shape == (0, 2) and q.index.shape == (0,)
    assert q.queue_index.tolist() == [-1] * 5 and int(q.ptr) == 0


def test_queue_fifo_and_wrap_around():
    q = MomentumQueue(size=5, dim=2)
    q.enqueue(keys_of([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert q.index.tolist() == [0, 1, 2] and int(q.ptr) == 3 and len(q) == 3
    assert torch.equal(q.keys, keys_of([0, 1, 2]))
    # a batch that crosses the end: slots 3, 4, then 0, 1 (ids 0 and 1 are the oldest)
    q.enqueue(keys_of([3, 4, 5, 6]), torch.tensor([3, 4, 5, 6]))
    assert q.index.tolist() == [5, 6, 2, 3, 4] and int(q.ptr) == 2 and len(q) == 5
    assert torch.equal(q.keys, keys_of([5, 6, 2, 3, 4]))
    q.enqueue(keys_of([7]), torch.tensor([7]))  # evicts 2, the oldest
    assert q.index.tolist() == [5, 6, 7, 3, 4] and int(q.ptr) == 3
    assert q.keys.data_ptr() == q.queue_keys.data_ptr()  # a view, no copy


def test_queue_batch_larger_than_queue_keeps_newest():
    q = MomentumQueue(size=3, dim=2)
    q.enqueue(keys_of([0]), torch.tensor([0]))
    q.enqueue(keys_of([1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 5]))
    # pointer 1 + 5 = 6 = 0 (mod 3); the last three written in FIFO order end at slot 2
    assert int(q.ptr) == 0 and len(q) == 3
    assert q.index.tolist() == [3, 4, 5]
    q.enqueue(keys_of([6]), torch.tensor([6]))  # the oldest (3) goes first
    assert q.index.tolist() == [6, 4, 5]


def test_queue_without_ids_and_checks():
    q = MomentumQueue(size=4, dim=3)
    q.enqueue(torch.ones(2, 3, requires_grad=True))
    assert q.index.tolist() == [-1, -1] and not q.keys.requires_grad
    q.enqueue(torch.ones(0, 3))
    assert len(q) == 2
    with pytest.raises(
        ValueError, match=r"keys must have shape \(n, dim\) = \(n, 3\), got \(2, 4\)"
    ):
        q.enqueue(torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"index must have shape \(n,\) = \(2,\), got \(3,\)"):
        q.enqueue(torch.ones(2, 3), torch.arange(3))
    with pytest.raises(ValueError, match=r"size and dim must be >= 1"):
        MomentumQueue(0, 3)


def test_queue_state_dict_round_trip():
    q = MomentumQueue(size=6, dim=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        q.enqueue(torch.randn(4, 3, generator=gen), torch.arange(4) + 10 * step)
    state = q.state_dict()
    assert set(state) == {"queue_keys", "queue_index", "ptr", "filled"}
    restored = MomentumQueue(size=6, dim=3)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue_keys, q.queue_keys)
    assert torch.equal(restored.queue_index, q.queue_index)
    assert int(restored.ptr) == int(q.ptr) == 0 and len(restored) == len(q) == 6
    # and both continue identically
    more = torch.randn(5, 3, generator=gen)
    q.enqueue(more, torch.arange(5))
    restored.enqueue(more, torch.arange(5))
    assert torch.equal(restored.keys, q.keys) and torch.equal(restored.index, q.index)
    assert int(restored.ptr) == int(q.ptr)
    # a partly filled queue restores its fill level too
    part = MomentumQueue(size=6, dim=3)
    part.enqueue(torch.ones(2, 3), torch.tensor([4, 5]))
    again = MomentumQueue(size=6, dim=3)
    again.load_state_dict(part.state_dict())
    assert len(again) == 2 and again.index.tolist() == [4, 5] and int(again.ptr) == 2


def test_queue_feeds_the_loss():
    from mscon.losses import SCELoss

    q = MomentumQueue(size=8, dim=4)
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    index = torch.tensor([0, 1, 2])
    loss_fn = SCELoss()
    # empty queue: the loss falls back to the batch's keys
    first = loss_fn(student, teacher, q.keys, index=index, queue_index=q.index)
    torch.testing.assert_close(first, loss_fn(student, teacher, index=index))
    q.enqueue(*gather_keys(teacher, index))  # one process: the input itself
    assert torch.equal(q.index, index)
    second = loss_fn(student, teacher, q.keys, index=index, queue_index=q.index)
    # the queue holds exactly the batch's keys; with each anchor's own copy masked
    # out, its candidates are its positive and the other keys: the in-batch loss
    torch.testing.assert_close(second, first)
    third = loss_fn(student, teacher, q.keys)  # without ids the own copy is a negative
    assert not torch.allclose(third, first)


# ----------------------------------------------------------------------------- shuffled BN


def test_shuffled_forward_without_batch_norm_equals_plain_forward():
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(9, 3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in (1, 2, 3, 9):
            torch.testing.assert_close(shuffled_forward(net, x, k, gen), net(x))
        # and with rows that identify themselves: outputs come back in input order
        ident = nn.Identity()
        torch.testing.assert_close(shuffled_forward(ident, x, 4, gen), x, rtol=0, atol=0)


def test_shuffled_forward_in_eval_mode_equals_plain_forward():
    net = small_student()
    net.train()
    with torch.no_grad():
        net(torch.randn(32, 3))  # non-trivial running statistics
    net.eval()
    x = torch.randn(10, 3)
    with torch.no_grad():
        torch.testing.assert_close(
            shuffled_forward(net, x, 5, torch.Generator().manual_seed(3)), net(x)
        )


def test_shuffled_forward_uses_random_sub_batches_for_batch_norm():
    bn = nn.BatchNorm1d(2, affine=False)
    x = torch.randn(8, 2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = shuffled_forward(bn, x, 2, torch.Generator().manual_seed(5))
        # by hand: each half of the permuted batch normalised with its own statistics
        want = torch.empty_like(x)
        for part in (perm[:4], perm[4:]):
            rows = x[part]
            mean, var = rows.mean(0), rows.var(0, unbiased=False)
            want[part] = (rows - mean) / torch.sqrt(var + bn.eps)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, nn.BatchNorm1d(2, affine=False)(x))
        # in-order sub-batches (no permutation), e.g. for the student
        in_order = split_forward(nn.BatchNorm1d(2, affine=False), x, 2)
        first = (x[:4] - x[:4].mean(0)) / torch.sqrt(x[:4].var(0, unbiased=False) + bn.eps)
        torch.testing.assert_close(in_order[:4], first)
    with pytest.raises(ValueError, match=r"num_splits must be in \[1, B\] = \[1, 8\], got 9"):
        split_forward(bn, x, 9)


def test_shuffled_forward_distributed_is_plain_forward_on_one_process():
    net = small_student()
    x = torch.randn(6, 3)
    with torch.no_grad():
        torch.testing.assert_close(
            shuffled_forward_distributed(net, x, torch.Generator().manual_seed(0)), net(x)
        )


def test_predictor_head_is_linear_bn_relu_linear():
    head = predictor_head(8, 32)
    assert isinstance(head, ProjectionHead)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.net[0].in_features == 8 and head.net[0].out_features == 32
    assert head.net[3].out_features == 8
    assert head(torch.randn(5, 8)).shape == (5, 8)
