r"""SCE, similarity contrastive estimation (Denize et al., WACV 2023; SPEC section 7), and MoCo.

An online student embeds view 1 of image :math:`i` as :math:`z^1_i`; a momentum
(EMA) teacher embeds view 2 as :math:`z^2_i` (a constant: no gradient). With
candidates :math:`k` (the positive key :math:`z^2_i` and a queue of past teacher
keys, or the batch's teacher keys when there is no queue):

.. math::

    s_{ik} &= \frac{\mathbb{1}[i \ne k]\,\exp(z^2_i \cdot z^2_k / \tau_m)}
                   {\sum_{j} \mathbb{1}[i \ne j]\,\exp(z^2_i \cdot z^2_j / \tau_m)}
    \qquad\text{(teacher's relational target, positive masked out)}\\
    w_{ik} &= \lambda\,\mathbb{1}[i = k] + (1 - \lambda)\,s_{ik}\\
    p_{ik} &= \frac{\exp(z^1_i \cdot z^2_k / \tau)}{\sum_j \exp(z^1_i \cdot z^2_j / \tau)}\\
    L_{SCE} &= -\frac{1}{B}\sum_i \sum_k w_{ik} \log p_{ik}

:math:`\lambda` (``coeff``) = 1 is MoCo's InfoNCE (SPEC section 8); :math:`\lambda = 0` is
a pure relational (ReSSL-like) loss. Following the paper (not the authors' code,
which gives the positive a target logit of 0), the positive is masked out of
:math:`s`.

Masking by image id. When the image ids of the batch (``index``) and of the queue
entries (``queue_index``) are given, a candidate other than the positive whose id
equals the anchor's own (a stale copy of the anchor's image in the queue, or a
duplicate of it in the batch) is removed from the anchor's candidates and from its
target; queue slots with id -1 (empty) are removed for every anchor. An anchor left
with no candidate but its positive has loss 0 (:math:`p_{ii} = 1`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mscon import distributed
from mscon.losses import _checks
from mscon.losses.functional import _no_autocast, compute_dtype, l2_normalize

__all__ = ["SCELoss", "sce_per_anchor", "sce_loss"]


def _soft_targets(teacher_logits: Tensor, excluded: Tensor) -> Tensor:
    """Row-wise softmax over the entries not ``excluded``; a row with none left is all 0."""
    very_negative = -torch.finfo(teacher_logits.dtype).max
    s = torch.softmax(teacher_logits.masked_fill(excluded, very_negative), dim=1)
    return s.masked_fill(excluded, 0.0)


def sce_per_anchor(
    student: Tensor,
    teacher: Tensor,
    queue: Tensor | None = None,
    *,
    temperature: float,
    temperature_m: float,
    coeff: float,
    index: Tensor | None = None,
    queue_index: Tensor | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""Per-anchor SCE losses :math:`\ell_i = -\sum_k w_{ik}\log p_{ik}` (SPEC section 7).

    Unchecked functional form (see :class:`SCELoss` for the argument checks). The
    teacher and the queue are detached. Computed in float32 for float16/bfloat16
    input (float64 if any input is float64), autocast disabled, with logsumexp.

    Candidates of anchor i (rows of ``student``):

    * ``queue`` with at least one entry: column 0 is its positive ``teacher[i]``,
      then the queue entries (empty slots and, with ``index``, copies of image i
      masked out);
    * otherwise: the teacher keys of the batch (of all ranks, gathered without
      gradient, when ``gather_distributed`` in a multi-process group), the positive
      being this anchor's own key (other keys with the anchor's id masked out).

    Args:
        student: (B, d) student embeddings of view 1 (any float dtype, not normalised).
        teacher: (B, d) teacher embeddings of view 2.
        queue: (M, d) past teacher keys, or None.
        temperature: :math:`\tau > 0` of the student's distribution.
        temperature_m: :math:`\tau_m > 0` of the teacher's target.
        coeff: :math:`\lambda \in [0, 1]`, the weight of the positive.
        index: (B,) integer image ids of the batch.
        queue_index: (M,) integer image ids of the queue entries, -1 = empty slot.
        gather_distributed: in-batch candidates from all ranks.

    Returns:
        (B,) per-anchor losses in the compute dtype.
    """
    dtype = compute_dtype(student.dtype)
    if teacher.dtype == torch.float64 or (queue is not None and queue.dtype == torch.float64):
        dtype = torch.float64
    device = student.device
    b = student.shape[0]
    rows = torch.arange(b, device=device)
    if index is not None:
        index = index.to(device=device, dtype=torch.long)
    with _no_autocast(device.type):
        z1 = l2_normalize(student).to(dtype)
        z2 = l2_normalize(teacher.detach()).to(dtype)
        if queue is not None and queue_index is not None:
            queue_index = queue_index.to(device=device, dtype=torch.long)
            filled = queue_index >= 0
            if not bool(filled.all()):
                queue, queue_index = queue[filled], queue_index[filled]
        use_queue = queue is not None and queue.shape[0] > 0

        if use_queue:
            keys = l2_normalize(queue.detach()).to(device=device, dtype=dtype)
            m = keys.shape[0]
            if index is not None and queue_index is not None:
                own = index.unsqueeze(1) == queue_index.unsqueeze(0)  # (B, M)
            else:
                own = torch.zeros((b, m), dtype=torch.bool, device=device)
            excluded = torch.cat([torch.zeros_like(own[:, :1]), own], dim=1)  # (B, 1 + M)
            logits = torch.cat([(z1 * z2).sum(dim=1, keepdim=True), z1 @ keys.T], dim=1) / float(
                temperature
            )
            target = _soft_targets((z2 @ keys.T) / float(temperature_m), own)
            positive = torch.zeros((b, 1 + m), dtype=dtype, device=device)
            positive[:, 0] = 1.0
            target = torch.cat([torch.zeros_like(target[:, :1]), target], dim=1)
        else:
            use_dist = gather_distributed and distributed.is_distributed()
            if use_dist:
                sizes = distributed.gather_sizes(b, device)
                offset = sum(sizes[: distributed.rank()])
                keys = distributed.gather_no_grad(z2, sizes)
                key_index = distributed.gather_no_grad(index, sizes) if index is not None else None
            else:
                offset, keys, key_index = 0, z2, index
            n = keys.shape[0]
            pos_col = rows + offset
            positive = torch.zeros((b, n), dtype=dtype, device=device)
            positive[rows, pos_col] = 1.0
            is_pos = positive > 0
            if key_index is not None:
                excluded = (index.unsqueeze(1) == key_index.unsqueeze(0)) & ~is_pos
            else:
                excluded = torch.zeros((b, n), dtype=torch.bool, device=device)
            logits = (z1 @ keys.T) / float(temperature)
            target = _soft_targets((z2 @ keys.T) / float(temperature_m), excluded | is_pos)

        weights = coeff * positive + (1.0 - coeff) * target  # 0 on excluded entries
        very_negative = -torch.finfo(dtype).max
        log_denominator = torch.logsumexp(logits.masked_fill(excluded, very_negative), dim=1)
        # -sum_k w_ik log p_ik = (sum_k w_ik) lse_i - sum_k w_ik logit_ik
        return weights.sum(dim=1) * log_denominator - (weights * logits).sum(dim=1)


def sce_loss(
    student: Tensor,
    teacher: Tensor,
    queue: Tensor | None = None,
    *,
    temperature: float = 0.1,
    temperature_m: float = 0.05,
    coeff: float = 0.5,
    index: Tensor | None = None,
    queue_index: Tensor | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""SCE loss (SPEC section 7): the mean of :func:`sce_per_anchor` over the batch.

    With ``gather_distributed`` in a multi-process group, B counts the anchors of all
    ranks and the result is this rank's share times the world size, so that the mean
    over ranks is the single-process loss. Unchecked; see :class:`SCELoss`.

    Example:
        >>> z = torch.ones(4, 8)  # identical embeddings: uniform p over 1 + M candidates
        >>> sce_loss(z, z, torch.ones(3, 8))  # log(1 + 3)
        tensor(1.3863)
    """
    losses = sce_per_anchor(
        student,
        teacher,
        queue,
        temperature=temperature,
        temperature_m=temperature_m,
        coeff=coeff,
        index=index,
        queue_index=queue_index,
        gather_distributed=gather_distributed,
    )
    if gather_distributed and distributed.is_distributed():
        total = sum(distributed.gather_sizes(student.shape[0], student.device))
        return losses.sum() * (distributed.world_size() / total)
    return losses.mean()


def _check_index(owner: str, name: str, x: object, n: int, expected: str) -> Tensor:
    """An integer tensor of shape (n,) with values >= -1."""
    want = f"{expected} = ({n},)"
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{owner}: {name} must be an integer tensor of shape {want}, got {type(x).__name__}"
        )
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{owner}: {name} must be integer image ids, got dtype {x.dtype}")
    if tuple(x.shape) != (n,):
        got = _checks.shape_str(x.shape)
        raise ValueError(f"{owner}: {name} must have shape {want}, got {got}")
    if x.numel() and int(x.min()) < -1:
        raise ValueError(f"{owner}: {name} must be image ids >= 0 (or -1), got {int(x.min())}")
    return x


class SCELoss(nn.Module):
    r"""Similarity contrastive estimation (SPEC section 7); ``coeff=1`` is MoCo (section 8).

    For student embeddings :math:`z^1` (view 1, online) and teacher embeddings
    :math:`z^2` (view 2, EMA teacher; constants), all L2-normalised:

    .. math::

        s_{ik} = \operatorname{softmax}_{k \ne i}(z^2_i \cdot z^2_k / \tau_m), \quad
        w_{ik} = \lambda\,\mathbb{1}[i = k] + (1 - \lambda)\,s_{ik}, \quad
        p_{ik} = \operatorname{softmax}_k(z^1_i \cdot z^2_k / \tau), \quad
        L = -\frac{1}{B}\sum_i\sum_k w_{ik}\log p_{ik}.

    The candidates :math:`k` of anchor i are its positive key :math:`z^2_i` and the
    queue's entries; without a queue (None, or no entry left) they are the teacher
    keys of the batch, which needs B >= 2 (B of all ranks with
    ``gather_distributed``). The target :math:`s` puts no mass on the positive (the
    paper's form). With ``index`` and ``queue_index``, candidates other than the
    positive that show the anchor's own image are masked out of both the
    candidates and the target; queue slots with ``queue_index`` -1 are empty and
    ignored. Identical embeddings give :math:`\log(1 + M)` (:math:`\log B` without a
    queue) for every :math:`\lambda`.

    Args:
        temperature: :math:`\tau > 0` of the student's distribution (MoCo v2: 0.2).
        temperature_m: :math:`\tau_m > 0` of the teacher's relational target.
        coeff: :math:`\lambda \in [0, 1]`, the weight of the positive (1 = InfoNCE).
        gather_distributed: inside a multi-process group, the in-batch candidates (no
            queue) are the teacher keys of all ranks (gathered without gradient; they
            are constants), the anchors stay local, and each rank returns its share
            times the world size, so that the mean over ranks is the single-process
            loss (B counted over all ranks; shards may differ in size). With a queue,
            it only counts B over all ranks; the queue itself must already hold the
            gathered keys (see :func:`mscon.models.momentum.gather_keys`).

    Shapes:
        student, teacher: (B, d), float16/bfloat16/float32/float64.
        queue: (M, d) or None. index: (B,) integer image ids (optional).
        queue_index: (M,) integer image ids, -1 = empty slot (optional).
        output: scalar, float32 (float64 for float64 input).

    Example:
        >>> import torch
        >>> loss_fn = SCELoss(temperature=0.1, temperature_m=0.05, coeff=0.5)
        >>> z = torch.ones(4, 16)
        >>> loss_fn(z, z, torch.ones(7, 16))  # identical embeddings: log(1 + 7)
        tensor(2.0794)
        >>> loss_fn(z, z)  # no queue: the batch's 4 teacher keys, log(4)
        tensor(1.3863)
        >>> # two empty slots; images 0, 1 and 2 also have a stale copy in the queue
        >>> queue_index = torch.tensor([2, -1, 0, 5, 9, -1, 1])
        >>> loss_fn(z, z, torch.ones(7, 16), index=torch.arange(4), queue_index=queue_index)
        tensor(1.6550)
        >>> (3 * torch.log(torch.tensor(5.0)) + torch.log(torch.tensor(6.0))) / 4
        tensor(1.6550)
    """

    def __init__(
        self,
        temperature: float = 0.1,
        temperature_m: float = 0.05,
        coeff: float = 0.5,
        *,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        owner = "SCELoss"
        self.temperature = _checks.check_temperature(owner, temperature)
        self.temperature_m = _checks.check_temperature(owner, temperature_m, "temperature_m")
        if isinstance(coeff, bool) or not isinstance(coeff, (int, float)):
            raise ValueError(f"{owner}: coeff must be a number in [0, 1], got {coeff!r}")
        if not 0.0 <= float(coeff) <= 1.0:
            raise ValueError(f"{owner}: coeff must be a number in [0, 1], got {coeff!r}")
        self.coeff = float(coeff)
        self.gather_distributed = bool(gather_distributed)

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        queue: Tensor | None = None,
        *,
        index: Tensor | None = None,
        queue_index: Tensor | None = None,
    ) -> Tensor:
        """Loss of ``student`` (B, d) against ``teacher`` (B, d) and ``queue`` (M, d)."""
        owner = "SCELoss"
        for name, z in (("student", student), ("teacher", teacher)):
            _checks.check_float_tensor(owner, name, z, "(B, d)")
            if z.ndim != 2 or z.shape[0] < 1:
                raise ValueError(
                    f"{owner}: {name} must have shape (B, d) with B >= 1, "
                    f"got {_checks.shape_str(z.shape)}"
                )
        if teacher.shape != student.shape:
            raise ValueError(
                f"{owner}: teacher must have the student's shape (B, d) = "
                f"{_checks.shape_str(student.shape)}, got {_checks.shape_str(teacher.shape)}"
            )
        _checks.check_embeddings(owner, "student", student, "(B, d)")
        _checks.check_embeddings(owner, "teacher", teacher, "(B, d)")
        b, d = student.shape
        if queue is not None:
            _checks.check_float_tensor(owner, "queue", queue, f"(M, d) = (M, {d})")
            if queue.ndim != 2 or queue.shape[1] != d:
                raise ValueError(
                    f"{owner}: queue must have shape (M, d) = (M, {d}), "
                    f"got {_checks.shape_str(queue.shape)}"
                )
            _checks.check_finite(owner, "queue", queue)
        if index is not None:
            index = _check_index(owner, "index", index, b, "(B,)")
        if queue_index is not None:
            if queue is None:
                raise ValueError(f"{owner}: queue_index needs a queue, got queue=None")
            queue_index = _check_index(owner, "queue_index", queue_index, queue.shape[0], "(M,)")
        held = 0
        if queue is not None:
            held = queue.shape[0] if queue_index is None else int((queue_index >= 0).sum())
        if held == 0:
            total = b
            if self.gather_distributed and distributed.is_distributed():
                total = sum(distributed.gather_sizes(b, student.device))
            if total < 2:
                raise ValueError(
                    f"{owner}: without a queue the candidates are the batch's teacher keys, "
                    f"so the batch must hold B >= 2 images, got B = {total}"
                )
        return sce_loss(
            student,
            teacher,
            queue,
            temperature=self.temperature,
            temperature_m=self.temperature_m,
            coeff=self.coeff,
            index=index,
            queue_index=queue_index,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, temperature_m={self.temperature_m}, "
            f"coeff={self.coeff}"
        )
