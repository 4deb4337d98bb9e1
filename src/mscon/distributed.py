"""Rank helpers, gathers and DDP set-up for multi-process training (torch.distributed).

Every function works without an initialised process group: it then behaves as
one process (world size 1, rank 0, gathers return their input, a model is not
wrapped). All collectives of the project live here.

Training on K processes (``torchrun --nproc_per_node K -m mscon train CONFIG``):
:func:`process_group_from_env` creates the group from torchrun's environment
(gloo on CPU, NCCL on CUDA), :func:`shard_rows` gives each rank its disjoint slice
of every global batch, :func:`wrap_model` wraps the model in
DistributedDataParallel, :func:`mean_over_ranks` makes the logged loss that of
the whole batch, and :func:`run_on_main` runs file work on rank 0 alone and
hands its result (or its error) to every rank.

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

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "gather_sizes",
    "gather_with_grad",
    "gather_no_grad",
    "all_reduce_sum",
    "mean_over_ranks",
    "launched_world_size",
    "process_group_from_env",
    "local_device",
    "shard_rows",
    "row_offset",
    "wrap_model",
    "is_main_process",
    "run_on_main",
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


def mean_over_ranks(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (detached): the whole batch's loss from the ranks' shares."""
    return all_reduce_sum(t) / world_size()


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 when not set)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group_from_env(device_type: str) -> Iterator[bool]:
    """Create the default process group from torchrun's environment; destroy it on exit.

    Only when ``WORLD_SIZE`` > 1 and no group exists yet: gloo for ``device_type``
    "cpu", NCCL for "cuda" (each process on ``cuda:LOCAL_RANK``). Rendezvous uses
    torchrun's ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE``.

    Yields:
        Whether this call created the group.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        yield False
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield True
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA in a multi-process group."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard_rows(batch: int) -> slice:
    """This rank's rows of a global batch of ``batch`` rows: contiguous, disjoint, in rank order.

    The first ``batch % K`` ranks take one row more (uneven shards are fine: the
    losses count over all ranks).

    Example:
        >>> shard_rows(10)  # one process: every row
        slice(0, 10, None)
    """
    size, extra = divmod(batch, world_size())
    r = rank()
    start = r * size + min(r, extra)
    return slice(start, start + size + (1 if r < extra else 0))


def row_offset(n: int, device: torch.device | str = "cpu") -> int:
    """The index of this rank's first row in the global batch (ranks holding ``n`` rows each).

    Example:
        >>> row_offset(5)
        0
    """
    return sum(gather_sizes(n, device)[: rank()])


def wrap_model(module: nn.Module, device: torch.device, sync_batch_norm: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel inside a multi-process group, else ``module``.

    DDP averages the parameter gradients over ranks; the losses (built with
    ``gather_distributed=True``) return their share times the world size, so the
    average is the single-process gradient of the whole batch. Keep the unwrapped
    ``module`` for state dicts (no ``module.`` prefix) and hooks.

    Args:
        module: the model, already on ``device``.
        device: its device (``device_ids`` for CUDA).
        sync_batch_norm: convert its BatchNorm layers to SyncBatchNorm (in place;
            CUDA only), so batch statistics are those of the global batch.
    """
    if not is_distributed():
        return module
    if sync_batch_norm:
        nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def is_main_process() -> bool:
    """Whether this process writes files (rank 0; always true in one process)."""
    return rank() == 0


def run_on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on rank 0 only; its result, or its exception, on every rank.

    For file work (checking and creating the run folder, reading a checkpoint to
    resume): the other ranks never touch the files, need no shared file system,
    and raise the same error rank 0 raised instead of waiting for it forever.
    The result is sent with ``broadcast_object_list`` (pickled; keep tensors on CPU).

    Example:
        >>> run_on_main(lambda x: x + 1, 1)
        2
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    payload: list[object] = [None]
    if is_main_process():
        try:
            payload = [(True, fn(*args, **kwargs))]
        except Exception as error:  # handed to every rank, raised there
            payload = [(False, error)]
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]  # type: ignore[misc]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
