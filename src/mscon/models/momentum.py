r"""Momentum-teacher parts for MoCo and SCE (SPEC sections 7-8): EMA teacher, queue, shuffled BN.

* :class:`EMATeacher`: a frozen deep copy of the student (encoder + projection head)
  updated after each optimiser step by
  :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s`, buffers (BatchNorm
  running statistics) copied. :func:`cosine_momentum` is the ImageNet schedule
  :math:`m = 1 - (1 - m_0)(\cos(\pi t / T) + 1) / 2`, :func:`constant_momentum` the
  CIFAR one.
* :class:`MomentumQueue`: a first-in first-out queue of past teacher keys with the
  image id of each entry (for the loss's self-index masking), whose whole state is
  in buffers so that a checkpoint restores it exactly. :func:`gather_keys` gathers
  the keys and ids of all ranks (rank order) before they are enqueued.
* Shuffled BatchNorm (MoCo): the teacher's BatchNorm statistics must not come from
  the same set of images as the student's, or the student can find its positive
  key through the batch statistics (information leaks within a BN batch) instead of
  learning features. :func:`shuffled_forward` does this on one process (the teacher
  runs on K randomly composed sub-batches), :func:`shuffled_forward_distributed`
  across ranks (the batch is shuffled between ranks, as in MoCo's code).
  SyncBatchNorm is not an alternative here: it is CUDA-only (NCCL), and it would
  make the statistics shared again rather than different.
* :func:`predictor_head`: SCE's ImageNet predictor, Linear-BN-ReLU-Linear.

Example:
    >>> import torch
    >>> student = torch.nn.Linear(4, 3)
    >>> teacher = EMATeacher(student)
    >>> queue = MomentumQueue(size=8, dim=3)
    >>> with torch.no_grad():
    ...     keys = teacher(torch.randn(5, 4))
    >>> queue.enqueue(keys, index=torch.arange(5))
    >>> queue.keys.shape, queue.index.tolist()
    (torch.Size([5, 3]), [0, 1, 2, 3, 4])
    >>> teacher.update(student, cosine_momentum(0.99, step=0, total_steps=100))
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mscon import distributed
from mscon.models.heads import ProjectionHead

__all__ = [
    "EMATeacher",
    "MomentumQueue",
    "MOMENTUM_SCHEDULES",
    "constant_momentum",
    "cosine_momentum",
    "gather_keys",
    "predictor_head",
    "shuffled_forward",
    "shuffled_forward_distributed",
    "shuffled_keys",
    "split_forward",
]


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel / torch.compile wrapper."""
    if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return getattr(module, "_orig_mod", module)


class EMATeacher(nn.Module):
    r"""A momentum (EMA) teacher: a frozen deep copy of a student module.

    The copy's parameters have ``requires_grad=False`` (so they never enter an
    optimiser or receive a gradient). :meth:`update` moves them towards the
    student's, :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s`, and copies
    the student's buffers (BatchNorm running statistics), as MoCo and SCE do. Call it
    after each optimiser step. ``forward`` runs the copy; wrap it in
    ``torch.no_grad()`` (or use :func:`shuffled_forward`). The copy is a submodule, so
    a state dict of the teacher (or of a module holding it) checkpoints it.

    Args:
        student: the module to copy (encoder + projection head); a
            DistributedDataParallel or torch.compile wrapper is unwrapped.

    Example:
        >>> import torch
        >>> student = torch.nn.Linear(1, 1, bias=False)
        >>> teacher = EMATeacher(student)
        >>> with torch.no_grad():
        ...     _ = teacher.module.weight.fill_(1.0), student.weight.fill_(3.0)
        >>> teacher.update(student, momentum=0.75)  # 0.75 * 1 + 0.25 * 3
        >>> teacher.module.weight.item()
        1.5
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(_unwrap(student))
        self.module.requires_grad_(False)

    def forward(self, *args, **kwargs):
        """Run the teacher copy."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        r""":math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_s`; buffers copied.

        Args:
            student: the module the teacher was copied from (same parameter names).
            momentum: :math:`m \in [0, 1]`; 1 freezes the teacher, 0 copies the student.
        """
        m = float(momentum)
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"EMATeacher.update: momentum must be in [0, 1], got {momentum!r}")
        student = _unwrap(student)
        t_named = list(self.module.named_parameters())
        s_named = list(student.named_parameters())
        if [n for n, _ in t_named] != [n for n, _ in s_named]:
            raise ValueError(
                "EMATeacher.update: student must have the teacher's parameters, got names "
                f"{[n for n, _ in s_named][:4]}... for {[n for n, _ in t_named][:4]}..."
            )
        t_params = [p for _, p in t_named]
        s_params = [p.detach() for _, p in s_named]
        if t_params:
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - m)
        t_buffers = dict(self.module.named_buffers())
        for name, buf in student.named_buffers():
            if name not in t_buffers:
                raise ValueError(
                    f"EMATeacher.update: student buffer {name!r} is not in the teacher"
                )
            t_buffers[name].copy_(buf)


def cosine_momentum(m0: float, step: int, total_steps: int) -> float:
    r"""The cosine momentum schedule :math:`m = 1 - (1 - m_0)(\cos(\pi t / T) + 1) / 2`.

    Rises from :math:`m_0` at step 0 to 1 at step T (SPEC section 7, ImageNet); steps
    beyond T stay at 1.

    Example:
        >>> [cosine_momentum(0.99, t, 100) for t in (0, 50, 100)]
        [0.99, 0.995, 1.0]
    """
    if total_steps <= 0:
        raise ValueError(f"cosine_momentum: total_steps must be >= 1, got {total_steps}")
    t = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - m0) * (math.cos(math.pi * t / total_steps) + 1.0) / 2.0


def constant_momentum(m0: float, step: int, total_steps: int) -> float:
    """The constant schedule: always ``m0`` (SPEC section 7, CIFAR-10: 0.99)."""
    return float(m0)


MOMENTUM_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": constant_momentum,
    "cosine": cosine_momentum,
}


class MomentumQueue(nn.Module):
    """A first-in first-out queue of teacher keys (MoCo's dictionary) with their image ids.

    The queue *starts empty and counts what it holds*: :attr:`keys` and :attr:`index`
    are views of the filled slots only, and empty slots carry id -1. MoCo instead
    fills the queue with random unit vectors; in SCE these would be negatives *and*
    receive relational target mass while carrying no information, for
    ``size / batch`` steps (a large share of a short CPU run). An empty queue gives
    the loss no entries, so :class:`~mscon.losses.SCELoss` falls back to the batch's
    own teacher keys until the first keys arrive.

    All state (``queue_keys`` (size, dim), ``queue_index`` (size,) long, ``ptr`` and
    ``filled``, 0-dim long) is in registered buffers: ``state_dict()`` /
    ``load_state_dict()`` restore it exactly, and ``.to(device)`` moves it.

    Under ``torch.distributed`` every rank keeps an identical queue: enqueue the keys
    of all ranks in rank order, ``queue.enqueue(*gather_keys(keys, index))``.

    Args:
        size: number of slots (M).
        dim: key dimension (d).
        dtype: dtype of the stored keys.

    Example:
        >>> import torch
        >>> q = MomentumQueue(size=4, dim=2)
        >>> q.enqueue(torch.ones(3, 2), index=torch.tensor([10, 11, 12]))
        >>> q.enqueue(2 * torch.ones(2, 2), index=torch.tensor([13, 14]))  # wraps around
        >>> q.index.tolist(), int(q.ptr), len(q)
        ([14, 11, 12, 13], 1, 4)
    """

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(
                f"MomentumQueue: size and dim must be >= 1, got size={size}, dim={dim}"
            )
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("queue_keys", torch.zeros(self.size, self.dim, dtype=dtype))
        self.register_buffer("queue_index", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @property
    def keys(self) -> Tensor:
        """(n, dim) the keys held (n <= size), a view; slot order, not age order."""
        return self.queue_keys[: int(self.filled)]

    @property
    def index(self) -> Tensor:
        """(n,) the image ids of :attr:`keys`.

        Keys enqueued without ids hold -1, which :class:`~mscon.losses.SCELoss` reads as
        an empty slot: for such a queue pass ``queue_index=None`` to the loss.
        """
        return self.queue_index[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, index: Tensor | None = None) -> None:
        """Write ``keys`` (n, dim) and their image ids ``index`` (n,) over the oldest entries.

        The write starts at :attr:`ptr` and wraps around the end. When n > size only
        the last ``size`` keys are kept (the oldest of the batch are overwritten at
        once). Keys are stored detached, as given (the losses normalise them), in the
        queue's dtype. Without ``index`` the entries get id -1.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(
                f"MomentumQueue.enqueue: keys must have shape (n, dim) = (n, {self.dim}), "
                f"got {tuple(keys.shape)}"
            )
        n = keys.shape[0]
        if index is None:
            index = torch.full((n,), -1, dtype=torch.long)
        if tuple(index.shape) != (n,):
            raise ValueError(
                f"MomentumQueue.enqueue: index must have shape (n,) = ({n},), "
                f"got {tuple(index.shape)}"
            )
        if n == 0:
            return
        kept = min(n, self.size)
        ptr = int(self.ptr)
        device = self.queue_keys.device
        slots = (ptr + (n - kept) + torch.arange(kept, device=device)) % self.size
        self.queue_keys[slots] = keys[n - kept :].detach().to(device, self.queue_keys.dtype)
        self.queue_index[slots] = index[n - kept :].to(device, torch.long)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


def gather_keys(keys: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The keys (and image ids) of all ranks, concatenated in rank order, without gradient.

    What every rank enqueues so that all queues stay identical. Ranks may hold
    different numbers of keys. Outside a multi-process group: the input, detached.

    Args:
        keys: (n, d) this rank's teacher keys.
        index: (n,) their image ids, or None.
    """
    keys = keys.detach()
    if not distributed.is_distributed():
        return keys, index
    sizes = distributed.gather_sizes(keys.shape[0], keys.device)
    all_keys = distributed.gather_no_grad(keys, sizes)
    all_index = None
    if index is not None:
        all_index = distributed.gather_no_grad(index.to(keys.device), sizes)
    return all_keys, all_index


def split_forward(
    module: Callable[[Tensor], Tensor],
    x: Tensor,
    num_splits: int,
    permutation: Tensor | None = None,
) -> Tensor:
    """Run ``module`` on ``num_splits`` sub-batches of ``x[permutation]``; rows in input order.

    Each sub-batch gets its own BatchNorm statistics (in training mode). Sub-batches
    are as equal as possible (``torch.tensor_split``); with BatchNorm in training
    mode each needs at least 2 rows.

    Args:
        module: maps (b, ...) to (b, ...).
        x: (B, ...) the batch.
        num_splits: K in [1, B].
        permutation: (B,) row order of the sub-batches; None keeps the batch order.

    Returns:
        (B, ...) outputs, row i the output for ``x[i]``.
    """
    b = x.shape[0]
    if not 1 <= num_splits <= max(b, 1):
        raise ValueError(f"num_splits must be in [1, B] = [1, {b}], got {num_splits}")
    if permutation is None:
        return torch.cat([module(part) for part in torch.tensor_split(x, num_splits)])
    permutation = permutation.to(x.device)
    y = torch.cat([module(part) for part in torch.tensor_split(x[permutation], num_splits)])
    out = torch.empty_like(y)
    out[permutation] = y
    return out


def shuffled_forward(
    module: Callable[[Tensor], Tensor],
    x: Tensor,
    num_splits: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Shuffled BatchNorm on one process: the teacher on K randomly composed sub-batches.

    MoCo's shuffle BN in single-process form. The batch is permuted with
    ``generator`` (CPU), cut into ``num_splits`` sub-batches, each run through
    ``module`` (so its BatchNorm layers, in training mode, normalise with that
    sub-batch's statistics), and the outputs are put back in the input order. The
    student runs on the whole batch (or on in-order sub-batches, see
    :func:`split_forward`), so a key's BN statistics come from a random subset of
    images that differs from the set that normalised its query. This is what a
    single-process (CPU, or one GPU) MoCo / SCE run uses; across ranks use
    :func:`shuffled_forward_distributed`. For a module without BatchNorm, or in eval
    mode, the result equals ``module(x)``.

    Args:
        module: the teacher, mapping (b, ...) to (b, ...); call under ``no_grad``.
        x: (B, ...) the batch.
        num_splits: K in [1, B]; 1 is a plain forward.
        generator: the CPU generator of the permutation (None: the global one).

    Returns:
        (B, ...) outputs in the input's row order.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        >>> x = torch.randn(8, 3)
        >>> y = shuffled_forward(net, x, 2, torch.Generator().manual_seed(0))
        >>> y.shape, torch.allclose(y, net(x))  # different BN batches
        (torch.Size([8, 4]), False)
    """
    perm = torch.randperm(x.shape[0], generator=generator)
    return split_forward(module, x, num_splits, perm)


def shuffled_forward_distributed(
    module: Callable[[Tensor], Tensor],
    x: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Shuffled BatchNorm across ranks: each rank runs the teacher on a random shard.

    MoCo's multi-GPU shuffle BN (its ``_batch_shuffle_ddp``): the batches of all
    ranks are gathered (rank order), permuted with ``generator``, each rank runs
    ``module`` on its slice of the permuted batch (as many rows as it gave), the
    outputs are gathered back and un-permuted, and each rank keeps the outputs of
    its own rows. The student's BN statistics come from this rank's shard; the
    teacher's from a random mix of all ranks' images. ``generator`` must be seeded
    identically on every rank and drawn from in step (the same permutation
    everywhere). Unlike SyncBatchNorm (CUDA only) this works with gloo on CPU.
    Outside a multi-process group this is ``module(x)`` (one rank: shuffling does
    not change the statistics); use :func:`shuffled_forward` there.

    Args:
        module: the teacher; call under ``no_grad`` (no gradient crosses the gathers).
        x: (n, ...) this rank's batch; ranks may hold different n.
        generator: a CPU generator with the same state on all ranks.

    Returns:
        (n, ...) the outputs for this rank's rows, in their order.
    """
    if not distributed.is_distributed():
        return module(x)
    sizes = distributed.gather_sizes(x.shape[0], x.device)
    offset = sum(sizes[: distributed.rank()])
    n = x.shape[0]
    x_all = distributed.gather_no_grad(x, sizes)
    perm = torch.randperm(x_all.shape[0], generator=generator).to(x.device)
    y_local = module(x_all[perm[offset : offset + n]])
    y_all = distributed.gather_no_grad(y_local, sizes)
    out = torch.empty_like(y_all)
    out[perm] = y_all
    return out[offset : offset + n]


def shuffled_keys(
    module: Callable[[Tensor], Tensor], x: Tensor, num_splits: int, generator: torch.Generator
) -> Tensor:
    """The teacher's outputs with shuffled BatchNorm, on one process or across ranks.

    One process: :func:`shuffled_forward` on ``num_splits`` sub-batches (at most
    B // 2, so each holds 2 images). In a multi-process group of K ranks:
    :func:`shuffled_forward_distributed` (the global batch permuted across ranks),
    each rank's slice cut into ``num_splits // K`` sub-batches (at least 1), so the
    global batch has about ``num_splits`` BatchNorm batches either way. Without
    BatchNorm in ``module`` both equal ``module(x)``.

    Args:
        module: the teacher; call under ``no_grad``.
        x: (n, ...) this rank's batch.
        num_splits: BatchNorm batches of the global batch.
        generator: a CPU generator in the same state on every rank.
    """
    world = distributed.world_size()
    if world == 1:
        return shuffled_forward(module, x, min(num_splits, x.shape[0] // 2) or 1, generator)
    splits = max(1, min(num_splits // world, x.shape[0] // 2))
    return shuffled_forward_distributed(
        lambda part: split_forward(module, part, splits), x, generator
    )


def predictor_head(dim: int = 256, hidden_dim: int = 4096) -> ProjectionHead:
    """SCE's ImageNet predictor (SPEC section 7): Linear(d, H) -> BN -> ReLU -> Linear(H, d).

    Example:
        >>> predictor_head(8, 16)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """
    return ProjectionHead(dim, dim, hidden_dim=hidden_dim, batch_norm=True)
