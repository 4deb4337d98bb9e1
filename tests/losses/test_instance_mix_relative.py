"""Instance-mixed SupCon targets (``instance_mix``) and the ``relative`` weighting."""

import math

import pytest
import torch
from torch.func import functional_call

from losses import reference
from losses.helpers import random_labels
from mscon.losses import MSConLoss, MultiTaskCELoss, TaskWeighting
from mscon.losses.functional import supcon_per_anchor, valid_means

F64 = torch.float64


def mixed_reference(features, labels, lam: float, tau: float) -> tuple[float, float]:
    """(loss, floor) of the instance-mixed target by loops: views flattened image-major."""
    feats = features.tolist()
    lab = labels.tolist()
    views, image = [], []
    for b, per_image in enumerate(feats):
        for v in per_image:
            views.append(v)
            image.append(b)
    n = len(views)

    def target(i: int) -> dict[int, float]:
        if lab[image[i]] < 0:
            return {}
        pos = [a for a in range(n) if a != i and lab[image[a]] == lab[image[i]]]
        own = [a for a in range(n) if a != i and image[a] == image[i]]
        if not pos:
            return {}
        q = {a: (1 - lam) / len(pos) if own else 1 / len(pos) for a in pos}
        for a in own:
            q[a] += lam / len(own)
        return q

    def weight(i: int, a: int) -> float:
        return target(i).get(a, 0.0)

    loss = reference.contrastive_loss(views, image, weight, tau)
    entropies = [
        -sum(p * math.log(p) for p in target(i).values() if p > 0) for i in range(n) if target(i)
    ]
    floor = sum(entropies) / len(entropies) if entropies else 0.0
    return loss, floor


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


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_floor_is_the_mean_target_entropy(gen, views, lam):
    labels = torch.tensor([[0], [0], [1], [2], [2], [2], [-1]])
    feats = torch.randn(1, 7, views, 4, generator=gen, dtype=F64)
    loss_fn = MSConLoss(1, temperature=0.5, weighting="excess", instance_mix=lam).double()
    _, expected_floor = mixed_reference(feats[0], labels[:, 0], lam, 0.5)
    assert loss_fn._floor(labels[:, 0], views).item() == pytest.approx(expected_floor, abs=1e-12)


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


def test_instance_mix_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match="instance_mix"):
        MSConLoss(2, instance_mix=1.0)
    with pytest.raises(ValueError, match="instance_mix"):
        MSConLoss(2, instance_mix=-0.1)


def test_relative_value_and_gradients():
    w = TaskWeighting(3, "relative").double()
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.2, -0.4, 0.7]))
    losses = torch.tensor([3.0, 2.0, 5.0], dtype=F64, requires_grad=True)
    floors = torch.tensor([1.0, 0.5, 2.0], dtype=F64)
    chance = torch.tensor([5.0, 4.5, 2.0005], dtype=F64)  # task 2: no room -> no s update
    valid = torch.tensor([True, True, True])
    total = w(losses, valid, floors, chance)
    s = w.log_vars.detach()
    m = 3 * torch.softmax(-s, 0)
    r = [(3 - 1) / 4, (2 - 0.5) / 4]
    expected = (m * losses.detach()).sum() + sum(math.exp(-s[c]) * r[c] + s[c] / 2 for c in (0, 1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-12)
    total.backward()
    assert torch.allclose(losses.grad, m)
    expected_s = [-math.exp(-s[0]) * r[0] + 0.5, -math.exp(-s[1]) * r[1] + 0.5, 0.0]
    assert torch.allclose(w.log_vars.grad, torch.tensor(expected_s, dtype=F64))


def test_relative_weights_ignore_granularity_and_follow_learnability():
    # Two tasks at the same relative position between floor and chance get equal
    # weights whatever their floors; a task at chance gets the lowest weight.
    w = TaskWeighting(3, "relative").double()
    floors = torch.tensor([1.0, 4.0, 2.0], dtype=F64)  # fine, coarse, medium
    chance = torch.full((3,), 5.5, dtype=F64)
    losses = floors + torch.tensor([0.5, 0.5, 1.0], dtype=F64) * (chance - floors)
    opt = torch.optim.SGD(w.parameters(), lr=0.2)
    for _ in range(3000):
        opt.zero_grad()
        w(losses, torch.ones(3, dtype=torch.bool), floors, chance).backward()
        opt.step()
    weights = w.task_weights().detach()
    assert weights[0].item() == pytest.approx(weights[1].item(), rel=1e-6)
    assert weights[2].item() == pytest.approx(weights[0].item() / 2, rel=1e-6)
    assert weights.sum().item() == pytest.approx(3.0)


def test_relative_is_chance_for_identical_embeddings():
    loss_fn = MSConLoss(2, temperature=0.1, weighting="relative", instance_mix=0.3)
    feats = torch.ones(2, 8, 2, 16)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 2)
    loss_fn(feats, labels).backward()
    # r = 1 for both: d/ds [exp(-s) r + s/2] at s = 0 is -1 + 1/2
    assert loss_fn.log_vars.grad.tolist() == pytest.approx([-0.5, -0.5], abs=1e-5)


def test_relative_multitask_ce_uses_log_k_as_chance():
    loss_fn = MultiTaskCELoss([4, 2], weighting="relative").double()
    logits = [torch.zeros(3, 4, dtype=F64), torch.zeros(3, 2, dtype=F64)]
    labels = torch.tensor([[0, 1], [1, 0], [3, 1]])
    loss_fn(logits, labels).backward()  # uniform logits: CE = log K, r = 1
    assert loss_fn.log_vars.grad.tolist() == pytest.approx([-0.5, -0.5], abs=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_gradcheck_instance_mix(gen, lam):
    loss_fn = MSConLoss(2, temperature=0.2, weighting="excess", instance_mix=lam).double()
    feats = torch.randn(2, 4, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor([[0, 1], [0, -1], [1, 1], [-1, 2]])
    log_vars = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)

    def fn(f, s):
        return functional_call(loss_fn, {"weighting.log_vars": s}, (f, labels))

    assert torch.autograd.gradcheck(fn, (feats, log_vars))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_instance_mix_low_precision(gen, dtype):
    feats = torch.randn(2, 16, 2, 32, generator=gen)
    labels = torch.randint(0, 3, (16, 2), generator=gen)
    loss_fn = MSConLoss(2, temperature=0.05, weighting="relative", instance_mix=0.5)
    full = loss_fn(feats, labels)
    low = loss_fn(feats.to(dtype), labels)
    assert torch.isfinite(low)
    assert low.item() == pytest.approx(full.item(), abs=5e-2)
