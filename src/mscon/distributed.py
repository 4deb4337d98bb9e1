"""Rank helpers and gathers for multi-process training (torch.distributed).

Every function works without an initialised process group: it then behaves as
one process (world size 1, rank 0, gathers return their input). All
collectives of the project live here.

``gather_with_grad`` is the gather the losses use with
``gather_distributed=True``: its backward sums the gradient over all ranks
(an all-reduce) and returns this rank's slice, so that every rank receives
the gradient that all ranks' losses send to its own rows. Ranks may hold
different numbers of rows (a last, smaller batch); rows are padded for the
collective and the padding is removed again.

Example:
    >>> import torch
    >>> from mscon import distributed
    >>> distributed.world_size(), distributed.rank()
    (1, 0)
    >>> distributed.gather_with_grad(torch.ones(2, 3)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "gather_sizes",
    "gather_with_grad",
    "gather_no_grad",
    "all_reduce_sum",
]


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """The first-dimension size ``n`` of every rank, in rank order.

    Args:
        n: this rank's number of rows.
        device: device of the tensor used for the collective (CUDA for NCCL).
    """
    if not is_distributed():
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def _all_gather_padded(t: Tensor, sizes: Sequence[int]) -> Tensor:
    """Concatenate every rank's ``t`` (rows ``sizes[r]``) along dim 0."""
    longest = max(sizes)
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad], dim=0)
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, t: Tensor, sizes: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.offset = sum(sizes[: rank()])
        ctx.n = t.shape[0]
        return _all_gather_padded(t, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.n], None


def gather_with_grad(t: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """All ranks' ``t`` concatenated along dim 0, differentiable.

    The backward pass sums the incoming gradient over ranks and returns this
    rank's slice: the gradient of the sum of all ranks' losses with respect to
    this rank's rows.

    Args:
        t: (n, ...) this rank's rows; n may differ between ranks.
        sizes: every rank's n (from :func:`gather_sizes`); computed when None.

    Returns:
        (sum(sizes), ...) tensor; ``t`` itself outside a multi-process group.
    """
    if not is_distributed():
        return t
    if sizes is None:
        sizes = gather_sizes(t.shape[0], t.device)
    return _GatherWithGrad.apply(t, tuple(sizes))


def gather_no_grad(t: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """All ranks' ``t`` concatenated along dim 0, without gradient (labels, ids).

    Args:
        t: (n, ...) this rank's rows.
        sizes: every rank's n; computed when None.
    """
    if not is_distributed():
        return t
    if sizes is None:
        sizes = gather_sizes(t.shape[0], t.device)
    with torch.no_grad():
        return _all_gather_padded(t.detach(), sizes)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (a detached copy; ``t`` is left unchanged)."""
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
