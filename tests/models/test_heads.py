"""Projection heads, the per-similarity multi-head and the linear classifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mscon.models import LinearHeads, MultiHead, ProjectionHead
from mscon.models.heads import NormalizedLinear, RunningCenter

pytestmark = pytest.mark.usefixtures("single_thread")


def test_projection_head_is_supcon_mlp() -> None:
    head = ProjectionHead(32)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 128)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    assert head(torch.randn(5, 32)).shape == (5, 128)


def test_projection_head_hidden_dim_and_batch_norm() -> None:
    head = ProjectionHead(16, out_dim=8, hidden_dim=24, batch_norm=True)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.net[0].out_features == 24 and head.net[0].bias is None
    assert head(torch.randn(4, 16)).shape == (4, 8)


def test_normalized_linear_has_unit_rows_and_no_bias() -> None:
    torch.manual_seed(0)
    layer = NormalizedLinear(6, 4)
    x = torch.randn(5, 6)
    rows = layer.weight / layer.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ rows.T)
    before = layer(x)
    with torch.no_grad():  # scaling a row leaves the layer unchanged
        layer.weight[0] *= 7.0
    torch.testing.assert_close(layer(x), before)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer(torch.zeros(1, 6)).abs().max() == 0  # no bias
    assert layer(x.double()).dtype == torch.float64


def test_normalized_linear_output_is_bounded_by_its_input() -> None:
    torch.manual_seed(0)
    layer = NormalizedLinear(8, 3)
    with torch.no_grad():
        layer.weight.mul_(1000.0)  # a grown weight cannot grow the output
    x = torch.randn(10, 8)
    assert (layer(x).abs() <= x.norm(dim=1, keepdim=True) + 1e-5).all()


def test_normalized_linear_gradient_is_finite_and_checked() -> None:
    layer = NormalizedLinear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_projection_head_weight_norm_replaces_the_last_layer() -> None:
    head = ProjectionHead(16, out_dim=8, batch_norm=True, weight_norm=True)
    assert [type(m) for m in head.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, NormalizedLinear]
    assert head(torch.randn(4, 16)).shape == (4, 8)
    heads = MultiHead(16, num_heads=2, out_dim=8, weight_norm=True)
    assert all(isinstance(h.net[-1], NormalizedLinear) for h in heads.heads)


def test_multi_head_stacks_independent_heads() -> None:
    torch.manual_seed(0)
    heads = MultiHead(16, num_heads=3, out_dim=8)
    h = torch.randn(5, 16)
    z = heads(h)
    assert z.shape == (3, 5, 8) and len(heads) == 3
    for c in range(3):
        torch.testing.assert_close(z[c], heads.heads[c](h))
    assert not torch.allclose(z[0], z[1])
    z.sum().backward()
    assert all(p.grad is not None for p in heads.parameters())


def test_linear_heads_shapes_and_errors() -> None:
    heads = LinearHeads(16, [4, 2, 7])
    logits = heads(torch.randn(5, 16))
    assert [t.shape for t in logits] == [(5, 4), (5, 2), (5, 7)] and len(heads) == 3
    with pytest.raises(ValueError, match="num_classes"):
        LinearHeads(16, [])
    with pytest.raises(ValueError, match="num_heads"):
        MultiHead(16, 0)


def test_running_center_subtracts_then_updates_and_is_frozen_in_eval() -> None:
    center = RunningCenter(3, momentum=0.75)
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(center(x), x)  # c starts at 0
    torch.testing.assert_close(center.center, 0.25 * torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(center(x), x - 0.5)
    torch.testing.assert_close(center.center, 0.75 * 0.5 + 0.25 * torch.tensor([2.0] * 3))
    center.eval()
    before = center.center.clone()
    torch.testing.assert_close(center(x), x - before)
    torch.testing.assert_close(center.center, before)
    y = torch.randn(4, 3, requires_grad=True)
    center.train()
    center(y).sum().backward()  # the running mean is a constant for the gradient
    torch.testing.assert_close(y.grad, torch.ones(4, 3))
    with pytest.raises(ValueError, match="momentum"):
        RunningCenter(3, momentum=1.0)


def test_centred_heads_cannot_output_one_direction() -> None:
    torch.manual_seed(0)
    plain = MultiHead(8, num_heads=2, out_dim=4)
    centred = MultiHead(8, num_heads=2, out_dim=4, center_momentum=0.5)
    centred.load_state_dict(plain.state_dict(), strict=False)
    for heads in (plain, centred):  # a head collapsed onto its bias: one direction
        with torch.no_grad():
            heads.heads[1].net[2].weight.mul_(1e-3)  # the last Linear
            heads.heads[1].net[2].bias.fill_(5.0)
    h = torch.randn(64, 8)
    with torch.no_grad():
        for _ in range(30):
            z_plain, z_centred = plain(h), centred(h)

    def mean_direction(z: torch.Tensor) -> float:
        return float(torch.nn.functional.normalize(z, dim=-1).mean(0).norm())

    assert mean_direction(z_plain[1]) > 0.999  # every view one point on the sphere
    assert mean_direction(z_centred[1]) < 0.3  # centred: the residual spreads out
    assert "heads.1.net.3.center" in centred.state_dict()  # checkpoints carry it


def test_running_center_averages_over_ranks(tmp_path) -> None:
    from pathlib import Path

    from losses.helpers import run_ranks

    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "splits": [0, 3, 10]}, tmp_path / "inputs.pt")
    worker = Path(__file__).with_name("center_distributed_worker.py")
    ranks = run_ranks(worker, tmp_path, world=2, timeout=120)
    single = RunningCenter(3, momentum=0.5)
    outputs = [single(x) for _ in range(2)]
    for r, (lo, hi) in enumerate([(0, 3), (3, 10)]):
        torch.testing.assert_close(ranks[r]["center"], single.center)
        torch.testing.assert_close(ranks[r]["outputs"][1], outputs[1][lo:hi])


def test_prototypes_give_cosine_logits_and_a_gradient_at_the_constant_embedding() -> None:
    from mscon.models.heads import Prototypes

    protos = Prototypes([3, 2], dim=4, temperature=0.5)
    with torch.no_grad():
        protos.prototypes[0].copy_(torch.tensor([[2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 1.0, 0]]))
    z = torch.tensor([[[1.0, 1.0, 0, 0]], [[0, 0, 0, 5.0]]])  # (C=2, n=1, d=4)
    logits = protos(z)
    torch.testing.assert_close(logits[0], torch.tensor([[0.5**0.5, 0.5**0.5, 0.0]]) / 0.5)
    assert logits[1].shape == (1, 2)
    # every view at one point: SupCon has no gradient there, the prototype loss has
    z = torch.ones(2, 6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = torch.nn.functional.cross_entropy(protos(z)[0], labels)
    loss.backward()
    assert z.grad.abs().sum() > 1e-3
    with pytest.raises(ValueError, match="temperature"):
        Prototypes([3], dim=4, temperature=0.0)
