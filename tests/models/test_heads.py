"""Projection heads, the per-similarity multi-head and the linear classifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mscon.models import LinearHeads, MultiHead, ProjectionHead

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
