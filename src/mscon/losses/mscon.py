r"""MSCon: multi-similarity contrastive loss (Mu, Guttag, Makar 2023; SPEC section 4).

.. math::

    L_{MSCon} = \sum_c \big[ e^{-s_c} L_c + s_c / 2 \big], \qquad
    L_c = \mathrm{SupCon}(z^c, y^c)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mscon import distributed
from mscon.losses import _checks
from mscon.losses.chunked import check_chunk_size
from mscon.losses.fmicl import FMICLLoss
from mscon.losses.functional import ContrastiveOutput, supcon_per_anchor, valid_means
from mscon.losses.weighting import WeightedTaskLoss

__all__ = ["MSConLoss", "MSConFMICLLoss", "check_heads"]


def check_heads(
    owner: str, c: int, features: object, labels: object
) -> tuple[list[Tensor], Tensor]:
    """Validate C heads' features ((C, B, V, d) or C tensors (B, V, d)) and labels (B, C)."""
    if isinstance(features, Tensor):
        _checks.check_float_tensor(owner, "features", features, "(C, B, V, d)")
        if features.ndim != 4 or features.shape[0] != c:
            raise ValueError(
                f"{owner}: features must have shape (C, B, V, d) with C = {c}, "
                f"got {_checks.shape_str(features.shape)}"
            )
        heads = list(features.unbind(0))
    elif isinstance(features, Sequence) and not isinstance(features, str):
        if len(features) != c:
            raise ValueError(
                f"{owner}: features must be a sequence of C = {c} tensors (B, V, d), "
                f"got {len(features)}"
            )
        heads = list(features)
    else:
        raise ValueError(
            f"{owner}: features must be a tensor (C, B, V, d) or a sequence of C tensors "
            f"(B, V, d), got {type(features).__name__}"
        )
    # A stacked tensor is checked for finite values in one pass; heads by name on failure.
    all_finite = (
        isinstance(features, Tensor)
        and features.shape[-1] >= 1
        and bool(torch.isfinite(features).all())
    )
    for i, z in enumerate(heads):
        name = f"features[{i}]"
        _checks.check_float_tensor(owner, name, z, "(B, V, d)")
        if z.ndim != 3 or min(z.shape[:2]) < 1:
            raise ValueError(
                f"{owner}: {name} must have shape (B, V, d) with B, V >= 1, "
                f"got {_checks.shape_str(z.shape)}"
            )
        if z.shape[0] != heads[0].shape[0]:
            raise ValueError(
                f"{owner}: every head must have the same batch size B = {heads[0].shape[0]}, "
                f"got {name} of shape {_checks.shape_str(z.shape)}"
            )
        if not all_finite:
            _checks.check_embeddings(owner, name, z, "(B, V, d)")
    b = heads[0].shape[0]
    labels = _checks.check_labels(owner, "labels", labels, (b, c), "(B, C)")
    return heads, labels


class MSConLoss(WeightedTaskLoss):
    r"""One SupCon loss per similarity, combined by a task weighting (SPEC section 4).

    For similarity :math:`c`, :math:`L_c` is :class:`~mscon.losses.SupConLoss` of the
    head's embeddings :math:`z^c` with the labels :math:`y^c` (column c of
    ``labels``; -1 = missing): the mean over anchors with at least one positive.
    The total depends on ``weighting`` (see :mod:`mscon.losses.weighting`):

    * ``uncertainty`` (default): :math:`\sum_c [e^{-s_c} L_c + s_c/2]`;
    * ``temperature``: :math:`\sum_c [L_c(\tau e^{s_c}) + s_c/2]`;
    * ``equal``: :math:`\sum_c L_c`;  ``fixed``: :math:`\sum_c w_c L_c`.

    A similarity with no valid anchor in the batch has :math:`L_c = 0` and drops its
    :math:`s_c/2` term.

    Args:
        num_similarities: C >= 1.
        temperature: :math:`\tau > 0`.
        weighting: ``"uncertainty"``, ``"temperature"``, ``"equal"``, ``"fixed"``
            (or any mode registered in :mod:`mscon.losses.weighting`).
        weights: (C,) non-negative weights for ``weighting="fixed"``.
        form: the SupCon form, ``"out"`` (default) or ``"in"``.
        gather_distributed: contrast with the views of all ranks; each rank returns
            its share times the world size (see :class:`~mscon.losses.SupConLoss`).
        instance_mix: :math:`\lambda \in [0, 1)`: each head's target puts
            :math:`\lambda` on the anchor's own other views and :math:`1-\lambda` on
            its label positives (:func:`~mscon.losses.functional.mixed_label_targets`).
            A head whose labels the encoder cannot yet separate then still has a
            signal (the instance part) and does not collapse to the constant
            embedding whose loss is :math:`\log(N-1)`. 0 (default) is plain SupCon.
        chunk_size: anchor rows per chunk of each log-denominator; None (default) picks
            it from N and d, or from ``$MSCON_LOSS_CHUNK_ROWS`` when set
            (:mod:`mscon.losses.chunked`).

    Attributes:
        log_vars: ``nn.Parameter`` (C,), :math:`s_c = \log\sigma_c^2` (train it without
            weight decay; it does not require grad in ``equal`` and ``fixed``).
        weighting: the :class:`~mscon.losses.TaskWeighting` module that owns it.
        last_losses: (C,) detached :math:`L_c` of the last call (over all ranks).
        last_valid: (C,) bool, whether similarity c had a valid anchor in the last call.

    Shapes:
        features: (C, B, V, d) tensor, or a sequence of C tensors (B, V, d) (the
        heads may differ in d); labels: (B, C) integer. Output: scalar.

    Example:
        >>> import torch
        >>> loss_fn = MSConLoss(2, temperature=0.1)
        >>> features = torch.ones(2, 4, 2, 16)  # identical embeddings, N = 8
        >>> labels = torch.tensor([[0, 1], [0, 1], [1, -1], [2, -1]])
        >>> loss_fn(features, labels)  # 2 * log(7) at s = 0
        tensor(3.8918, grad_fn=<SumBackward0>)
        >>> loss_fn.last_losses
        tensor([1.9459, 1.9459])
        >>> loss_fn.task_weights()
        tensor([1., 1.], grad_fn=<ExpBackward0>)
    """

    def __init__(
        self,
        num_similarities: int,
        temperature: float = 0.1,
        weighting: str = "uncertainty",
        weights: Sequence[float] | None = None,
        *,
        form: str = "out",
        gather_distributed: bool = False,
        instance_mix: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        owner = "MSConLoss"
        if (
            isinstance(num_similarities, bool)
            or not isinstance(num_similarities, int)
            or num_similarities < 1
        ):
            raise ValueError(
                f"{owner}: num_similarities must be an integer >= 1, got {num_similarities!r}"
            )
        temperature = _checks.check_temperature(owner, temperature)
        form = _checks.check_choice(owner, "form", form, ("out", "in"))
        if not (isinstance(instance_mix, (int, float)) and 0.0 <= instance_mix < 1.0):
            raise ValueError(f"{owner}: instance_mix must be in [0, 1), got {instance_mix!r}")
        super().__init__(
            num_similarities,
            weighting,
            weights,
            owner=owner,
            gather_distributed=gather_distributed,
        )
        self.num_similarities = num_similarities
        self.temperature = temperature
        self.form = form
        self.instance_mix = float(instance_mix)
        self.chunk_size = check_chunk_size(owner, chunk_size)

    def _check(self, features: object, labels: object) -> tuple[list[Tensor], Tensor]:
        return check_heads("MSConLoss", self.num_similarities, features, labels)

    def forward(self, features: Tensor | Sequence[Tensor], labels: Tensor) -> Tensor:
        """Weighted sum of the per-similarity SupCon losses of ``features`` and ``labels``."""
        heads, labels = self._check(features, labels)
        temperatures = self.temperature * self.weighting.temperature_factors()
        if self._batchable(heads):  # one batched call: fewer, larger operations
            stacked = features if isinstance(features, Tensor) else torch.stack(heads)
            out = supcon_per_anchor(
                stacked,
                labels.T,
                temperature=temperatures,
                gather_distributed=self.gather_distributed,
                chunk_size=self.chunk_size,
            )
            outputs = [ContrastiveOutput(*pair) for pair in zip(*out, strict=True)]
        else:
            outputs = [
                supcon_per_anchor(
                    z,
                    labels[:, i],
                    temperature=temperatures[i],
                    form=self.form,
                    gather_distributed=self.gather_distributed,
                    instance_mix=self.instance_mix,
                    chunk_size=self.chunk_size,
                )
                for i, z in enumerate(heads)
            ]
        losses, counts = valid_means(outputs, gather_distributed=self.gather_distributed)
        floors = chance = None
        if self.weighting.needs_floors:
            if self.form == "out":
                floors = torch.stack(
                    [self._floor(labels[:, i], z.shape[1]) for i, z in enumerate(heads)]
                ).to(losses.dtype)
            images = heads[0].shape[0]
            if self.gather_distributed and distributed.is_distributed():
                images = sum(distributed.gather_sizes(images, labels.device))  # ranks may differ
            candidates = images * heads[0].shape[1]  # N = B * V views of the whole batch
            chance = torch.full_like(losses, math.log(max(candidates - 1, 1)))
        return self.combine(losses, counts, floors, chance)

    def _batchable(self, heads: list[Tensor]) -> bool:
        """Whether the C heads go through one batched call: same shape and dtype, L_out,
        no instance mix (the cases the batched primitive covers)."""
        same = all(z.shape == heads[0].shape and z.dtype == heads[0].dtype for z in heads)
        return same and self.form == "out" and self.instance_mix == 0.0

    def _floor(self, labels: Tensor, views: int) -> Tensor:
        """H_c: the mean over valid anchors of the entropy of the anchor's target.

        The lowest value L_out can take (cross-entropy >= the target's entropy); for
        plain SupCon (``instance_mix`` = 0) it is log|P(i)| (SPEC section 4).
        """
        if self.gather_distributed and distributed.is_distributed():
            sizes = distributed.gather_sizes(labels.shape[0], labels.device)
            everyone = distributed.gather_no_grad(labels, sizes)
        else:
            everyone = labels
        known = everyone[everyone >= 0]
        if known.numel() == 0:
            return torch.zeros((), device=labels.device)
        counts = torch.bincount(known, minlength=int(labels.max().clamp_min(0)) + 1)
        mine = labels[labels >= 0]
        positives = (views * counts[mine] - 1).to(torch.float64)
        positives = positives[positives > 0]
        logs = self._target_entropy(positives, views)
        total = torch.stack(
            [logs.sum(), torch.tensor(float(logs.numel()), dtype=torch.float64, device=logs.device)]
        )
        if self.gather_distributed and distributed.is_distributed():
            total = distributed.all_reduce_sum(total)
        return total[0] / total[1].clamp_min(1.0)

    def extra_repr(self) -> str:
        return (
            f"num_similarities={self.num_similarities}, temperature={self.temperature}, "
            f"form={self.form!r}"
        )

    def _target_entropy(self, positives: Tensor, views: int) -> Tensor:
        """Entropy of an anchor's target given its |P(i)| (float64) label positives."""
        lam = self.instance_mix if views > 1 else 0.0
        if lam == 0.0:
            return torch.log(positives)
        own = float(views - 1)
        share_own = lam / own + (1 - lam) / positives  # each other view of its image
        share_rest = (1 - lam) / positives  # each other label positive
        rest = positives - own
        return -own * share_own * torch.log(share_own) - torch.where(
            rest > 0, rest * share_rest * torch.log(share_rest), torch.zeros_like(rest)
        )


class MSConFMICLLoss(WeightedTaskLoss):
    r"""MSCon with supervised f-MICL as each similarity's loss (SPEC sections 4 and 6).

    For similarity :math:`c`, :math:`L_c` is :class:`~mscon.losses.FMICLLoss` of the
    head's embeddings with the labels :math:`y^c` (pairs of views with the same label
    are positives, with different labels negatives; views with a missing label take
    part in no pair). The per-similarity losses are combined by a task weighting.

    f-MICL losses can be negative and have no temperature, so only the weighting
    modes in :data:`WEIGHTINGS` apply (``uncertainty``, ``temperature``,
    ``normalized`` and ``excess`` need a positive loss or a temperature). For
    ``relative``: chance :math:`U` = :func:`~mscon.losses.fmicl.fmicl_chance` (the
    loss of embeddings that ignore the labels, every pair at cosine 0) and floor
    :math:`H_c` = :func:`~mscon.losses.fmicl.fmicl_floor` of the :math:`K_c` classes
    present in the batch (positives at :math:`u = \mu`, classes on a regular
    simplex). A collapsed head (every embedding equal) sits far above chance, so
    :math:`r_c > 1` there.

    Args:
        num_similarities: C >= 1.
        weighting: one of :data:`WEIGHTINGS` (default ``equal``).
        weights: (C,) for ``fixed``.
        divergence, alpha, sigma, mu, tsallis_alpha: as :class:`~mscon.losses.FMICLLoss`.
        gather_distributed: pairs over all ranks (see :class:`~mscon.losses.FMICLLoss`).

    Shapes: as :class:`MSConLoss` (V >= 2 views).

    Example:
        >>> import torch
        >>> loss_fn = MSConFMICLLoss(2, divergence="pearson", alpha=1.0)
        >>> features = torch.ones(2, 4, 2, 16)  # every pair at u = 1: f'(1) = f*(f'(1)) = 0
        >>> labels = torch.tensor([[0, 1], [0, 1], [1, -1], [2, -1]])
        >>> float(loss_fn(features, labels)), loss_fn.last_losses.tolist()
        (0.0, [0.0, 0.0])
    """

    WEIGHTINGS = ("equal", "fixed", "relative")

    def __init__(
        self,
        num_similarities: int,
        weighting: str = "equal",
        weights: Sequence[float] | None = None,
        *,
        divergence: str = "kl",
        alpha: float = 40.0,
        sigma: float = 0.5**0.5,
        mu: float = 1.0,
        tsallis_alpha: float = 1.5,
        gather_distributed: bool = False,
    ) -> None:
        owner = "MSConFMICLLoss"
        if (
            isinstance(num_similarities, bool)
            or not isinstance(num_similarities, int)
            or num_similarities < 1
        ):
            raise ValueError(
                f"{owner}: num_similarities must be an integer >= 1, got {num_similarities!r}"
            )
        if weighting not in self.WEIGHTINGS:
            raise ValueError(
                f"{owner}: weighting must be one of {', '.join(self.WEIGHTINGS)} for f-MICL "
                f"losses (they can be negative and have no temperature), got {weighting!r}"
            )
        super().__init__(
            num_similarities, weighting, weights, owner=owner, gather_distributed=gather_distributed
        )
        self.num_similarities = num_similarities
        self.base = FMICLLoss(
            divergence,
            alpha,
            sigma,
            mu,
            tsallis_alpha,
            gather_distributed=gather_distributed,
        )

    def forward(self, features: Tensor | Sequence[Tensor], labels: Tensor) -> Tensor:
        """Weighted sum of the per-similarity supervised f-MICL losses."""
        heads, labels = check_heads("MSConFMICLLoss", self.num_similarities, features, labels)
        if min(z.shape[1] for z in heads) < 2:
            raise ValueError(
                f"MSConFMICLLoss: features need V >= 2 views per image, got "
                f"{_checks.shape_str(heads[0].shape)}"
            )
        losses = torch.stack([self.base(z, labels[:, i]) for i, z in enumerate(heads)])
        everyone = labels
        if self.gather_distributed and distributed.is_distributed():
            sizes = distributed.gather_sizes(labels.shape[0], labels.device)
            everyone = distributed.gather_no_grad(labels, sizes)
        counts = (everyone >= 0).sum(0)
        floors = chance = None
        if self.weighting.needs_floors:
            present = [int(torch.unique(col[col >= 0]).numel()) for col in everyone.T]
            floors = torch.tensor(
                [self.base.floor(max(k, 1)) for k in present], dtype=losses.dtype
            ).to(losses.device)
            chance = torch.full_like(losses, self.base.chance())
        return self.combine(losses, counts, floors, chance)

    def extra_repr(self) -> str:
        return f"num_similarities={self.num_similarities}"
