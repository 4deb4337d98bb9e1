"""Heads on top of the shared encoder: projection heads (contrastive) and linear classifiers.

* :class:`ProjectionHead`: SupCon's head, Linear(D, H) -> [BatchNorm] -> ReLU -> Linear(H, d),
  H = D unless given, d = 128 (SPEC section 4). SCE's projector uses the BatchNorm; with
  ``weight_norm`` the last layer is a :class:`NormalizedLinear`.
* :class:`MultiHead`: one projection head per similarity, outputs stacked to (C, B, d), the
  input :class:`~mscon.losses.MSConLoss` takes. Outputs are not normalised (the losses do it).
* :class:`RunningCenter`: subtracts a running mean of its input (DINO's centring), so a
  head cannot map every view to one direction; MultiHead's ``center_momentum``.
* :class:`LinearHeads`: one linear classifier per task for multi-task cross-entropy.
* :class:`Prototypes`: learned class prototypes per similarity, cosine logits of a head's
  embeddings (MSCon's ``prototype_weight``).

Example:
    >>> import torch
    >>> h = torch.randn(4, 32)
    >>> MultiHead(32, num_heads=3, out_dim=16)(h).shape
    torch.Size([3, 4, 16])
    >>> [t.shape for t in LinearHeads(32, [5, 2])(h)]
    [torch.Size([4, 5]), torch.Size([4, 2])]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mscon import distributed


class NormalizedLinear(nn.Module):
    """y = x V^T with each row of V scaled to unit norm: a bias-free linear layer under
    weight normalisation with a fixed gain of 1 (only V's directions are learned).

    Before an L2 normalisation (every contrastive head's) the output's scale is lost,
    so a plain last layer can grow its weights and bias without bound: a head that
    maps every view near one point does so by a large constant output, and the
    gradient through the normalisation falls with that output's norm (the coarse-head
    collapse, docs/results.md). Here the output is bounded by the input's norm.

    Args:
        in_dim: input features.
        out_dim: output features.

    Example:
        >>> import torch
        >>> layer = NormalizedLinear(3, 2)
        >>> layer.weight.data = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
        >>> layer(torch.tensor([[1.0, 1.0, 1.0]])).detach()
        tensor([[1.4000, 1.0000]])
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach())
        self.in_features, self.out_features = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_dim) to (B, out_dim)."""
        weight = self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return nn.functional.linear(x, weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ProjectionHead(nn.Module):
    """Two-layer MLP projection g: Linear(D, H) -> [BatchNorm1d(H)] -> ReLU -> Linear(H, d).

    Args:
        in_dim: D, the encoder's feature dimension.
        out_dim: d, the embedding dimension (128 as in SupCon).
        hidden_dim: H; defaults to ``in_dim``.
        batch_norm: add BatchNorm1d after the first linear layer (SCE's projector); the
            first linear layer then has no bias.
        weight_norm: the last layer is a :class:`NormalizedLinear` (unit-norm rows, no
            bias) instead of a Linear.

    Example:
        >>> import torch
        >>> ProjectionHead(64)(torch.randn(5, 64)).shape
        torch.Size([5, 128])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        last = NormalizedLinear(hidden, out_dim) if weight_norm else nn.Linear(hidden, out_dim)
        layers += [nn.ReLU(inplace=True), last]
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Map features (B, D) to embeddings (B, d), not normalised."""
        return self.net(h)


class RunningCenter(nn.Module):
    """y = x - c, with c a running mean of x over training batches (not a parameter).

    In training mode, after subtracting, c <- m c + (1 - m) mean_batch(x) (without
    gradient; averaged over all ranks under torch.distributed), as DINO centres its
    teacher. A head that maps every view to one vector then outputs about zero, so
    it cannot sit at the constant embedding that a SupCon loss of log(N - 1) means.

    Args:
        dim: d, the feature size.
        momentum: m in [0, 1).

    Shapes: x (B, d) -> (B, d). ``center`` (d,) is a buffer (in checkpoints).

    Example:
        >>> import torch
        >>> center = RunningCenter(2, momentum=0.5)
        >>> center(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # c was 0, becomes (1, 2)
        tensor([[1., 3.],
                [3., 5.]])
        >>> center.center
        tensor([1., 2.])
        >>> _ = center.eval()
        >>> center(torch.tensor([[1.0, 2.0]]))
        tensor([[0., 0.]])
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subtract the running mean; update it in training mode."""
        out = x - self.center.to(x.dtype)
        if self.training:
            with torch.no_grad():
                total = torch.cat([x.float().sum(0), x.new_tensor([x.shape[0]], dtype=torch.float)])
                if distributed.is_distributed():
                    total = distributed.all_reduce_sum(total)
                batch_mean = total[:-1] / total[-1].clamp_min(1.0)
                self.center.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
        return out

    def extra_repr(self) -> str:
        return f"dim={self.center.numel()}, momentum={self.momentum}"


class MultiHead(nn.Module):
    """One :class:`ProjectionHead` per similarity; ``forward`` stacks their outputs.

    Args:
        in_dim: D, the encoder's feature dimension.
        num_heads: C, the number of similarities.
        out_dim: d, each head's embedding dimension.
        hidden_dim: each head's hidden width (default D).
        batch_norm: BatchNorm in each head (see :class:`ProjectionHead`).
        center_momentum: when given, each head's output passes through a
            :class:`RunningCenter` with this momentum (None: no centring).
        weight_norm: each head's last layer is a :class:`NormalizedLinear`.

    Example:
        >>> import torch
        >>> MultiHead(8, 2, out_dim=4)(torch.randn(3, 8)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(
        self,
        in_dim: int,
        num_heads: int,
        out_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        center_momentum: float | None = None,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads: expected >= 1, got {num_heads}")
        self.heads = nn.ModuleList(
            ProjectionHead(in_dim, out_dim, hidden_dim, batch_norm, weight_norm)
            for _ in range(num_heads)
        )
        if center_momentum is not None:
            for head in self.heads:
                head.net.append(RunningCenter(out_dim, center_momentum))

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Map features (B, D) to per-head embeddings (C, B, d), not normalised."""
        return torch.stack([head(h) for head in self.heads])


class LinearHeads(nn.Module):
    """A linear classifier per task: logits_c = W_c h + b_c.

    Args:
        in_dim: D, the encoder's feature dimension.
        num_classes: K_c for each of the C tasks.

    Example:
        >>> import torch
        >>> [t.shape for t in LinearHeads(8, [3, 7])(torch.randn(2, 8))]
        [torch.Size([2, 3]), torch.Size([2, 7])]
    """

    def __init__(self, in_dim: int, num_classes: Sequence[int]) -> None:
        super().__init__()
        if len(num_classes) == 0 or min(num_classes) < 1:
            raise ValueError(
                f"num_classes: expected a non-empty list of ints >= 1, got {num_classes}"
            )
        self.num_classes = [int(k) for k in num_classes]
        self.classifiers = nn.ModuleList(nn.Linear(in_dim, k) for k in self.num_classes)

    def __len__(self) -> int:
        return len(self.classifiers)

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Map features (B, D) to a list of C logit tensors (B, K_c)."""
        return [classifier(h) for classifier in self.classifiers]


class Prototypes(nn.Module):
    r"""Learned class prototypes per similarity: cosine logits of each head's embeddings.

    logits_c = normalize(z_c) normalize(P_c)^T / tau, with P_c (K_c, d) a parameter.
    Cross-entropy on these logits has a gradient wherever the classes' prototypes
    differ, including at the constant embedding where SupCon's is zero.

    Args:
        num_classes: K_c for each of the C similarities.
        dim: d, the embedding size.
        temperature: tau > 0.

    Example:
        >>> import torch
        >>> [t.shape for t in Prototypes([3, 5], dim=4)(torch.randn(2, 6, 4))]
        [torch.Size([6, 3]), torch.Size([6, 5])]
    """

    def __init__(self, num_classes: Sequence[int], dim: int, temperature: float = 0.1) -> None:
        super().__init__()
        if len(num_classes) == 0 or min(num_classes) < 1 or temperature <= 0:
            raise ValueError(
                f"expected classes >= 1 per similarity and temperature > 0, got "
                f"num_classes={list(num_classes)}, temperature={temperature}"
            )
        self.temperature = temperature
        self.prototypes = nn.ParameterList(
            nn.Parameter(torch.randn(k, dim) / dim**0.5) for k in num_classes
        )

    def forward(self, z: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Map embeddings (C, n, d) (not normalised) to C logit tensors (n, K_c)."""
        normalize = nn.functional.normalize
        return [
            normalize(z[c], dim=-1) @ normalize(p, dim=-1).T / self.temperature
            for c, p in enumerate(self.prototypes)
        ]
