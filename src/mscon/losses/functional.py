r"""The contrastive cross-entropy primitive (SPEC section 1) and the losses built on it.

For anchor :math:`i`, candidates :math:`a \in A(i)` (every candidate except the
anchor itself) and non-negative target weights :math:`W_{ia}` normalised to
sum to 1 over :math:`a`:

.. math::

    p_{ia} = \frac{\exp(z_i \cdot c_a / \tau)}{\sum_{a' \in A(i)} \exp(z_i \cdot c_{a'} / \tau)},
    \qquad
    \ell_i = -\sum_a W_{ia} \log p_{ia}  \quad\text{("out" form)}

or :math:`\ell_i = -\log \sum_a W_{ia} p_{ia}` ("in" form). Anchors whose
weights are all zero (no positive, or a missing label) are *not valid*: their
:math:`\ell_i` is 0 and they are left out of the mean.

The loss is :math:`\ell_i = D_i - T_i`, with the log-denominator
:math:`D_i = \log\sum_{a\in A(i)} \exp(z_i\cdot c_a/\tau)` and the positive term
:math:`T_i`. :func:`contrastive_cross_entropy` is the one place the equation is
computed; every loss module calls it (through :func:`supcon_per_anchor`). For
``form="out"`` nothing of size M x N is kept:

* :math:`D` comes from :func:`mscon.losses.chunked.log_denominator`, a custom
  autograd function over chunks of anchor rows that rebuilds each chunk's block in
  backward (peak memory O(chunk x N));
* with hard labels, :math:`T_i = z_i\cdot S_i / (|P(i)|\,\tau)` where :math:`S_i` is
  the sum of the candidates of i's class minus i's own column (class sums by
  ``index_add``, no M x N pass);
* with a ``positive_mask`` or ``target_weights`` (already M x N), :math:`T_i = z_i
  \cdot (\bar W C)_i / \tau` with :math:`\bar W` the row-normalised weights: one
  (M x N) @ (N x d) product, no logits.

``form="in"`` (:math:`T_i = \log\sum_a W_{ia} p_{ia}` needs every logit of the row)
takes the direct path, which builds the M x N logits. Everything is computed in
float32 for float16/bfloat16 input (float64 stays float64), with autocast
disabled; exponentials are shifted so that they never overflow or underflow
(see :mod:`mscon.losses.chunked`).

Example:
    >>> import torch
    >>> from mscon.losses.functional import contrastive_cross_entropy
    >>> z = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    >>> labels = torch.tensor([0, 0, 1, -1])
    >>> out = contrastive_cross_entropy(z, temperature=0.5, anchor_labels=labels)
    >>> out.losses  # log(3) for the two anchors of class 0
    tensor([1.0986, 1.0986, 0.0000, 0.0000])
    >>> out.valid
    tensor([ True,  True, False, False])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mscon import distributed
from mscon.losses.chunked import log_denominator

__all__ = [
    "ContrastiveOutput",
    "compute_dtype",
    "l2_normalize",
    "contrastive_cross_entropy",
    "supcon_per_anchor",
    "mixed_label_targets",
    "valid_means",
    "supcon_loss",
    "ntxent_loss",
]


class ContrastiveOutput(NamedTuple):
    """Per-anchor result of :func:`contrastive_cross_entropy`.

    Attributes:
        losses: (M,) :math:`\\ell_i` in the compute dtype; exactly 0 (with a gradient
            path) where ``valid`` is False.
        valid: (M,) bool, anchors with at least one positive (non-zero target weight).
    """

    losses: Tensor
    valid: Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses are computed in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    """Disable autocast on ``device_type`` (the losses accumulate in float32 or float64)."""
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """Cast to the compute dtype (float32 for half inputs), then L2-normalise along ``dim``.

    Casting first keeps float16 norms from overflowing or underflowing.

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0]], dtype=torch.float16))
        tensor([[0.6000, 0.8000]])
    """
    return F.normalize(x.to(compute_dtype(x.dtype)), p=2.0, dim=dim, eps=1e-12)


def contrastive_cross_entropy(
    anchors: Tensor,
    candidates: Tensor | None = None,
    *,
    temperature: float | Tensor,
    anchor_labels: Tensor | None = None,
    candidate_labels: Tensor | None = None,
    positive_mask: Tensor | None = None,
    target_weights: Tensor | None = None,
    self_index: Tensor | None = None,
    form: str = "out",
    chunk_size: int | None = None,
) -> ContrastiveOutput:
    r"""Per-anchor contrastive cross-entropy of anchors against candidates (SPEC section 1).

    The positives (target weights :math:`W`) are given by exactly one of:

    * ``anchor_labels`` (and ``candidate_labels``): :math:`W_{ia} \propto 1` where the
      labels are equal; -1 is a missing label that matches nothing (its anchor is
      not valid, its candidate is only a negative);
    * ``positive_mask``: (M, N) bool, :math:`W_{ia} \propto 1` where True;
    * ``target_weights``: (M, N) non-negative floats, normalised over each row.

    The anchor itself (``self_index``) is removed from its candidates and from its
    positives.

    A leading batch dimension computes C independent problems at once (one per
    similarity; the log-denominators share one batched matmul per chunk): anchors
    (C, M, d), candidates (C, N, d), labels (C, M) and (C, N), temperature () or (C,),
    results (C, M). It needs ``anchor_labels`` and ``form="out"``.

    Args:
        anchors: (M, d) L2-normalised anchor embeddings, or (C, M, d).
        candidates: (N, d) L2-normalised candidates; None means ``anchors``, with
            ``self_index`` defaulting to ``arange(M)`` (each anchor excluded).
        temperature: :math:`\tau > 0`, a float or a 0-dim tensor (may require grad); with
            batched anchors also a (C,) tensor, one temperature per problem.
        anchor_labels: (M,) integer labels, -1 = missing.
        candidate_labels: (N,) integer labels; defaults to ``anchor_labels`` when
            ``candidates`` is None.
        positive_mask: (M, N) bool positives.
        target_weights: (M, N) non-negative target weights.
        self_index: (M,) long, the column of each anchor among the candidates, -1
            for none; None excludes nothing (unless ``candidates`` is None).
        form: ``"out"`` (:math:`-\sum_a W_{ia}\log p_{ia}`) or ``"in"``
            (:math:`-\log\sum_a W_{ia} p_{ia}`; the direct M x N path).
        chunk_size: anchor rows per chunk of the log-denominator; None: the
            environment variable ``MSCON_LOSS_CHUNK_ROWS``, else automatic
            (:func:`~mscon.losses.chunked.resolve_chunk_size`). Results do not depend
            on it beyond rounding.

    Returns:
        :class:`ContrastiveOutput` ``(losses (M,), valid (M,))`` (or (C, M)) in the
        compute dtype (float32 for float16/bfloat16 input, float64 for float64).
    """
    if form not in ("out", "in"):
        raise ValueError(f"contrastive_cross_entropy: form must be 'out' or 'in', got {form!r}")
    given = [x is not None for x in (anchor_labels, positive_mask, target_weights)]
    if sum(given) != 1:
        raise ValueError(
            "contrastive_cross_entropy: exactly one of anchor_labels, positive_mask, "
            f"target_weights must be given, got {sum(given)}"
        )
    batched = anchors.ndim == 3
    if batched and (anchor_labels is None or form != "out"):
        raise ValueError(
            "contrastive_cross_entropy: batched anchors (C, M, d) need anchor_labels and "
            f"form='out', got {'a mask or target weights' if anchor_labels is None else form!r}"
        )
    if candidates is None:
        candidates = anchors
        if self_index is None:
            self_index = torch.arange(anchors.shape[-2], device=anchors.device)
        if candidate_labels is None:
            candidate_labels = anchor_labels
    rank = 3 if batched else 2
    if (
        anchors.ndim != rank
        or candidates.ndim != rank
        or anchors.shape[-1] != candidates.shape[-1]
        or anchors.shape[:-2] != candidates.shape[:-2]
    ):
        raise ValueError(
            "contrastive_cross_entropy: anchors and candidates must have shapes (M, d) and "
            f"(N, d), or (C, M, d) and (C, N, d), got {tuple(anchors.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    lead = tuple(anchors.shape[:-2])
    m, n = anchors.shape[-2], candidates.shape[-2]
    if anchor_labels is not None and (
        candidate_labels is None
        or tuple(anchor_labels.shape) != (*lead, m)
        or tuple(candidate_labels.shape) != (*lead, n)
    ):
        raise ValueError(
            f"contrastive_cross_entropy: anchor_labels and candidate_labels must have shapes "
            f"{(*lead, m)} and {(*lead, n)}"
        )
    for name, w in (("positive_mask", positive_mask), ("target_weights", target_weights)):
        if w is not None and tuple(w.shape) != (m, n):
            raise ValueError(
                f"contrastive_cross_entropy: {name} must have shape (M, N) = ({m}, {n}), "
                f"got {tuple(w.shape)}"
            )
    if positive_mask is not None and positive_mask.dtype != torch.bool:
        raise ValueError(
            f"contrastive_cross_entropy: positive_mask must be bool, got {positive_mask.dtype}"
        )

    symmetric = (
        candidates is anchors
        and self_index is not None
        and torch.equal(self_index, torch.arange(m, device=self_index.device))
    )
    dtype = compute_dtype(anchors.dtype)
    with _no_autocast(anchors.device.type):
        a = anchors.to(dtype)
        c = a if symmetric else candidates.to(dtype)
        tau = temperature.to(dtype) if isinstance(temperature, Tensor) else float(temperature)
        if form == "in":
            return _dense_cross_entropy(
                a,
                c,
                tau,
                anchor_labels,
                candidate_labels,
                positive_mask,
                target_weights,
                self_index,
                form,
            )
        if anchor_labels is not None:
            positive_sum, count = _class_positive_sums(
                c, anchor_labels, candidate_labels, self_index
            )
            valid = count > 0
            positive_sum = positive_sum / count.clamp_min(1).unsqueeze(-1).to(dtype)
        else:
            weights = _excluding_self(
                positive_mask if positive_mask is not None else target_weights, dtype, self_index
            )
            weight_sum = weights.sum(dim=1, keepdim=True)
            valid = weight_sum.squeeze(1) > 0
            positive_sum = (weights / weight_sum.clamp_min(torch.finfo(dtype).tiny)) @ c
        per_problem = isinstance(tau, Tensor) and tau.ndim == 1  # (C,) temperatures
        positive_term = (a * positive_sum).sum(dim=-1) / (tau.unsqueeze(1) if per_problem else tau)
        log_den = log_denominator(
            a,
            None if symmetric else c,
            temperature=tau,
            self_index=self_index,
            chunk_size=chunk_size,
            expected_upstream=valid,  # a mean over valid anchors: g = scale * valid
        )
        losses = torch.where(valid, log_den - positive_term, torch.zeros_like(log_den))
    return ContrastiveOutput(losses, valid)


def _class_positive_sums(
    candidates: Tensor, anchor_labels: Tensor, candidate_labels: Tensor, self_index: Tensor | None
) -> tuple[Tensor, Tensor]:
    r"""Sum and count of each anchor's positives by class, with no (M, N) pass.

    :math:`S_i = \sum_{a \in P(i)} c_a`: the sum of the candidates of the anchor's class
    minus the anchor's own column when it is of that class; a missing label (-1)
    has no positives. With a leading batch dimension (candidates (C, N, d), labels
    (C, M) and (C, N)) each problem's labels are moved to a label range of their own,
    so one pass serves all C.

    Returns:
        ``(sums (M, d), counts (M,) long)``, or (C, M, d) and (C, M).
    """
    if candidates.ndim == 3:
        problems, n, d = candidates.shape
        width = int(torch.maximum(anchor_labels.max(), candidate_labels.max()).clamp_min(0)) + 1
        start = torch.arange(problems, device=candidates.device).unsqueeze(1)

        def moved(labels: Tensor, step: int) -> Tensor:
            return torch.where(labels >= 0, labels + start * step, labels).reshape(-1)

        own = None
        if self_index is not None:
            own = moved(self_index.expand(problems, -1), n)
        sums, counts = _class_positive_sums(
            candidates.reshape(problems * n, d),
            moved(anchor_labels, width),
            moved(candidate_labels, width),
            own,
        )
        return sums.reshape(problems, -1, d), counts.reshape(problems, -1)
    classes, cand_class = torch.unique(candidate_labels, return_inverse=True)
    d = candidates.shape[1]
    class_sums = candidates.new_zeros((classes.numel(), d)).index_add(0, cand_class, candidates)
    class_counts = torch.bincount(cand_class, minlength=classes.numel())
    where = torch.searchsorted(classes, anchor_labels).clamp_(max=max(classes.numel() - 1, 0))
    known = (anchor_labels >= 0) & (classes[where] == anchor_labels)
    sums = class_sums[where]
    counts = class_counts[where]
    if self_index is not None:
        col = self_index.clamp_min(0)
        own = (self_index >= 0) & (candidate_labels[col] == anchor_labels)
        sums = sums - own.unsqueeze(1).to(sums.dtype) * candidates[col]
        counts = counts - own.long()
    counts = torch.where(known, counts, torch.zeros_like(counts))
    return sums, counts


def _excluding_self(weights: Tensor, dtype: torch.dtype, self_index: Tensor | None) -> Tensor:
    """(M, N) float copy of a bool mask or float weights, 0 at each anchor's own column."""
    out = weights.to(dtype)
    if self_index is None:
        return out
    has = self_index >= 0
    rows = torch.arange(weights.shape[0], device=weights.device)[has]
    keep = torch.ones_like(out).index_put((rows, self_index[has]), out.new_zeros(()))
    return out * keep


def _dense_cross_entropy(
    a: Tensor,
    c: Tensor,
    tau: float | Tensor,
    anchor_labels: Tensor | None,
    candidate_labels: Tensor | None,
    positive_mask: Tensor | None,
    target_weights: Tensor | None,
    self_index: Tensor | None,
    form: str,
) -> ContrastiveOutput:
    """The direct path: the full (M, N) logits and weights, via logsumexp.

    Used for ``form="in"`` (whose positive term needs each anchor's full row) and as the
    reference the chunked path is tested against. Arguments as
    :func:`contrastive_cross_entropy`, already in the compute dtype.
    """
    m, n = a.shape[0], c.shape[0]
    dtype = a.dtype
    logits = (a @ c.T) / tau  # (M, N); |logit| <= 1/tau for normalised rows

    excluded = torch.zeros((m, n), dtype=torch.bool, device=a.device)
    if self_index is not None:
        rows = torch.arange(m, device=a.device)
        has_self = self_index >= 0
        excluded[rows[has_self], self_index[has_self]] = True

    if anchor_labels is not None:
        same = anchor_labels.unsqueeze(1) == candidate_labels.unsqueeze(0)
        positive = same & (anchor_labels >= 0).unsqueeze(1) & ~excluded
        weights = positive.to(dtype)
    elif positive_mask is not None:
        weights = (positive_mask & ~excluded).to(dtype)
    else:
        weights = target_weights.to(dtype).masked_fill(excluded, 0.0)
    weight_sum = weights.sum(dim=1)
    valid = weight_sum > 0
    safe_sum = weight_sum.clamp_min(torch.finfo(dtype).tiny)

    # A large finite fill (not -inf) keeps every value and gradient finite, even
    # for an anchor whose only candidate is itself.
    very_negative = -torch.finfo(dtype).max
    log_denominator = torch.logsumexp(logits.masked_fill(excluded, very_negative), dim=1)
    if form == "out":  # weights are 0 on excluded entries, where logits are finite
        positive_term = (weights * logits).sum(dim=1) / safe_sum
    else:
        log_w = torch.log(weights.clamp_min(torch.finfo(dtype).tiny)) - torch.log(
            safe_sum
        ).unsqueeze(1)
        positive_term = torch.logsumexp(
            torch.where(weights > 0, logits + log_w, very_negative), dim=1
        )
    losses = torch.where(valid, log_denominator - positive_term, torch.zeros_like(log_denominator))
    return ContrastiveOutput(losses, valid)


def supcon_per_anchor(
    features: Tensor,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    temperature: float | Tensor,
    form: str = "out",
    gather_distributed: bool = False,
    instance_mix: float = 0.0,
    chunk_size: int | None = None,
) -> ContrastiveOutput:
    r"""SupCon / SimCLR per-anchor losses of the B·V views of a batch (SPEC sections 2-3).

    Views are flattened image-major (row ``b * V + v``). Positives of view (b, v):

    * ``labels``: the other views whose image has the same label (-1 = missing:
      the anchor is not valid and the view is a positive of nobody, but it stays a
      candidate in every denominator);
    * ``mask``: views of images b' with ``mask[b, b']`` True (bool) or with weight
      ``mask[b, b']`` (float, normalised over the anchor's positives), plus the
      other views of the same image, which are always positives with weight 1
      (the diagonal of ``mask`` is ignored);
    * neither: the other views of the same image (SimCLR).

    With ``gather_distributed`` inside a multi-process group, the candidates are
    the views of all ranks (gathered with gradient), labels are gathered, and
    ``mask`` must have one column per image of all ranks, in rank order.

    Batched: features (C, B, V, d) and labels (C, B) compute C similarities' SupCon
    at once (see :func:`contrastive_cross_entropy`), with no mask and
    ``instance_mix`` 0; the result is (C, B·V).

    Args:
        features: (B, V, d) embeddings, any float dtype, not yet normalised; or
            (C, B, V, d).
        labels: (B,) integer labels, -1 = missing; (C, B) for batched features.
        mask: (B, B_all) bool or non-negative float weights between images
            (B_all = B in one process).
        temperature: tau > 0 (float or 0-dim tensor; (C,) for batched features).
        form: "out" (L_out) or "in" (L_in).
        gather_distributed: contrast against the candidates of all ranks.
        instance_mix: :math:`\lambda \in [0, 1)`, only with ``labels``: the target of
            a valid anchor is :math:`(1-\lambda)` spread uniformly over its label
            positives plus :math:`\lambda` spread over the other views of its own
            image (SimCLR's positives), see :func:`mixed_label_targets`. 0 is SupCon.
        chunk_size: anchor rows per chunk of the log-denominator
            (:func:`~mscon.losses.chunked.resolve_chunk_size`; None: automatic).

    Returns:
        :class:`ContrastiveOutput` for this rank's B·V anchors.
    """
    if features.ndim == 4 and (labels is None or mask is not None or instance_mix > 0):
        raise ValueError(
            "supcon_per_anchor: batched features (C, B, V, d) need labels (C, B), no mask "
            "and instance_mix = 0"
        )
    *lead, b, v, d = features.shape
    z = l2_normalize(features).reshape(*lead, b * v, d)
    local_n = b * v
    use_dist = gather_distributed and distributed.is_distributed()
    if use_dist:
        sizes = distributed.gather_sizes(local_n, z.device)
        offset = sum(sizes[: distributed.rank()])
        candidates = _gather_views(z, sizes, dim=-2, with_grad=True)
    else:
        sizes, offset, candidates = [local_n], 0, z
    self_index = offset + torch.arange(local_n, device=z.device)

    if labels is not None:
        view_labels = labels.to(device=z.device, dtype=torch.long).repeat_interleave(v, dim=-1)
        cand_labels = (
            _gather_views(view_labels, sizes, dim=-1, with_grad=False) if use_dist else view_labels
        )
        if instance_mix > 0 and v > 1:
            image = torch.arange(b, device=z.device).repeat_interleave(v) + offset // v
            cand_image = distributed.gather_no_grad(image, sizes) if use_dist else image
            return contrastive_cross_entropy(
                z,
                candidates,
                temperature=temperature,
                target_weights=mixed_label_targets(
                    view_labels,
                    cand_labels,
                    image,
                    cand_image,
                    self_index,
                    instance_mix,
                    compute_dtype(z.dtype),
                ),
                self_index=self_index,
                form=form,
                chunk_size=chunk_size,
            )
        return contrastive_cross_entropy(
            z,
            candidates,
            temperature=temperature,
            anchor_labels=view_labels,
            candidate_labels=cand_labels,
            self_index=self_index,
            form=form,
            chunk_size=chunk_size,
        )

    # Global image index of every local view: views b*V..b*V+V-1 are image offset/V + b.
    image = torch.arange(b, device=z.device).repeat_interleave(v) + offset // v
    cand_image = distributed.gather_no_grad(image, sizes) if use_dist else image
    if mask is None:
        return contrastive_cross_entropy(
            z,
            candidates,
            temperature=temperature,
            anchor_labels=image,
            candidate_labels=cand_image,
            self_index=self_index,
            form=form,
            chunk_size=chunk_size,
        )

    mask = mask.to(z.device)
    same_image = image.unsqueeze(1) == cand_image.unsqueeze(0)  # (B*V, N_all)
    view_mask = mask[:, cand_image].repeat_interleave(v, dim=0)  # (B*V, N_all)
    if mask.dtype == torch.bool:
        return contrastive_cross_entropy(
            z,
            candidates,
            temperature=temperature,
            positive_mask=view_mask | same_image,
            self_index=self_index,
            form=form,
            chunk_size=chunk_size,
        )
    weights = torch.where(same_image, torch.ones_like(view_mask), view_mask)
    return contrastive_cross_entropy(
        z,
        candidates,
        temperature=temperature,
        target_weights=weights,
        self_index=self_index,
        form=form,
        chunk_size=chunk_size,
    )


def _gather_views(t: Tensor, sizes: list[int], *, dim: int, with_grad: bool) -> Tensor:
    """All ranks' ``t`` concatenated along ``dim`` (the views), with or without gradient."""
    moved = t.movedim(dim, 0).contiguous()  # collectives need contiguous tensors
    if with_grad:
        return distributed.gather_with_grad(moved, sizes).movedim(0, dim)
    return distributed.gather_no_grad(moved, sizes).movedim(0, dim)


def mixed_label_targets(
    anchor_labels: Tensor,
    candidate_labels: Tensor,
    anchor_image: Tensor,
    candidate_image: Tensor,
    self_index: Tensor,
    instance_mix: float,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""(M, N) targets: :math:`(1-\lambda)` over label positives, :math:`\lambda` over own views.

    Row i (an anchor with a known label) puts :math:`(1-\lambda)/|P(i)|` on each
    candidate with its label and :math:`\lambda/|I(i)|` more on each other view of its
    own image (:math:`I(i) \subset P(i)`); the anchor itself gets 0. Rows of anchors
    with a missing label (-1) or without another view are 0 (not valid anchors).
    With :math:`\lambda = 0` this is SupCon's uniform target over :math:`P(i)`.

    Example:
        >>> import torch
        >>> labels, image = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1])
        >>> mixed_label_targets(labels, labels, image, image, torch.arange(4), 0.5)[0]
        tensor([0.0000, 0.6667, 0.1667, 0.1667])
    """
    rows = torch.arange(anchor_labels.shape[0], device=anchor_labels.device)
    not_self = torch.ones(
        (anchor_labels.shape[0], candidate_labels.shape[0]),
        dtype=torch.bool,
        device=anchor_labels.device,
    )
    not_self[rows, self_index] = False
    known = (anchor_labels >= 0).unsqueeze(1)
    label_pos = (anchor_labels.unsqueeze(1) == candidate_labels.unsqueeze(0)) & not_self & known
    own_views = (anchor_image.unsqueeze(1) == candidate_image.unsqueeze(0)) & not_self & known
    label_w = label_pos.to(dtype) / label_pos.sum(1, keepdim=True).clamp_min(1)
    own_w = own_views.to(dtype) / own_views.sum(1, keepdim=True).clamp_min(1)
    has_own = own_views.any(1, keepdim=True)
    return torch.where(has_own, (1 - instance_mix) * label_w + instance_mix * own_w, label_w)


def valid_means(
    outputs: Sequence[ContrastiveOutput], *, gather_distributed: bool = False
) -> tuple[Tensor, Tensor]:
    """Mean of each output's losses over its valid anchors (over all ranks when gathering).

    Each mean is ``sum_i valid_i * l_i / max(1, #valid)``: exactly 0 with a gradient
    path when no anchor is valid. With ``gather_distributed`` in a multi-process group
    the count is summed over ranks and the result is this rank's share times the world
    size, so that the mean over ranks is the single-process mean.

    Args:
        outputs: C per-anchor outputs (anchor counts may differ).
        gather_distributed: count valid anchors over all ranks.

    Returns:
        ``(means (C,), counts (C,))``; counts are global valid-anchor counts (no grad).
    """
    sums = torch.stack([(o.losses * o.valid).sum() for o in outputs])
    counts = torch.stack([o.valid.sum() for o in outputs]).to(sums.dtype)
    scale = 1.0
    if gather_distributed and distributed.is_distributed():
        counts = distributed.all_reduce_sum(counts)
        scale = float(distributed.world_size())
    return sums * scale / counts.clamp_min(1.0), counts.detach()


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.1,
    form: str = "out",
    gather_distributed: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """SupCon loss (SPEC section 3): mean of :func:`supcon_per_anchor` over valid anchors.

    Unchecked functional form of :class:`~mscon.losses.SupConLoss` (which validates its
    arguments); ``features`` must be (B, V, d).

    Example:
        >>> z = torch.ones(3, 2, 4)  # identical embeddings, N = 6: log(5)
        >>> supcon_loss(z, torch.tensor([0, 0, 1]))
        tensor(1.6094)
    """
    out = supcon_per_anchor(
        features,
        labels,
        mask,
        temperature=temperature,
        form=form,
        gather_distributed=gather_distributed,
        chunk_size=chunk_size,
    )
    return valid_means([out], gather_distributed=gather_distributed)[0][0]


def ntxent_loss(
    z0: Tensor,
    z1: Tensor,
    *,
    temperature: float | Tensor = 0.5,
    gather_distributed: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """NT-Xent (SPEC section 2) of two views (B, d) each; unchecked functional form.

    Example:
        >>> ntxent_loss(torch.ones(4, 8), torch.ones(4, 8))  # log(2·4 - 1)
        tensor(1.9459)
    """
    return supcon_loss(
        torch.stack([z0, z1], dim=1),
        temperature=temperature,
        gather_distributed=gather_distributed,
        chunk_size=chunk_size,
    )
