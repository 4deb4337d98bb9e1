r"""Multi-task cross-entropy with task weighting (Kendall et al. 2018; SPEC section 5).

.. math::

    L = \sum_c \big[ e^{-s_c}\, \mathrm{CE}_c + s_c / 2 \big]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mscon.losses import _checks
from mscon.losses.functional import ContrastiveOutput, _no_autocast, compute_dtype, valid_means
from mscon.losses.weighting import WeightedTaskLoss

__all__ = ["MultiTaskCELoss"]


class MultiTaskCELoss(WeightedTaskLoss):
    r"""One cross-entropy per task over the rows whose label is present (SPEC section 5).

    :math:`\mathrm{CE}_c` is the mean cross-entropy of task c's logits over the rows
    with ``labels[:, c] != -1``; a task with no labelled row has
    :math:`\mathrm{CE}_c = 0` and drops its :math:`s_c/2` term. The weighting modes are
    those of :class:`~mscon.losses.MSConLoss`: ``uncertainty``
    (:math:`\sum_c e^{-s_c}\mathrm{CE}_c + s_c/2`), ``temperature`` (Kendall's
    classification form, the logits scaled by :math:`e^{-s_c}`:
    :math:`\sum_c \mathrm{CE}_c(f_c e^{-s_c}) + s_c/2`), ``equal`` and ``fixed``.

    Args:
        num_classes: K_c for each of the C tasks.
        weighting: ``"uncertainty"``, ``"temperature"``, ``"equal"`` or ``"fixed"``.
        weights: (C,) non-negative weights for ``weighting="fixed"``.
        gather_distributed: average each task over the labelled rows of all ranks;
            each rank returns its share times the world size.

    Attributes:
        log_vars, weighting, last_losses, last_valid: as in
            :class:`~mscon.losses.MSConLoss`.

    Shapes:
        logits: sequence of C tensors (B, K_c), any float dtype; labels: (B, C)
        integer in [-1, K_c). Output: scalar.

    Example:
        >>> import torch
        >>> loss_fn = MultiTaskCELoss([3, 2], weighting="equal")
        >>> logits = [torch.zeros(4, 3), torch.zeros(4, 2)]
        >>> loss_fn(logits, torch.tensor([[0, 1], [2, -1], [1, 0], [-1, -1]]))  # log 3 + log 2
        tensor(1.7918)
        >>> loss_fn.last_losses
        tensor([1.0986, 0.6931])
    """

    def __init__(
        self,
        num_classes: Sequence[int],
        weighting: str = "uncertainty",
        weights: Sequence[float] | None = None,
        *,
        gather_distributed: bool = False,
    ) -> None:
        owner = "MultiTaskCELoss"
        if (
            not isinstance(num_classes, Sequence)
            or isinstance(num_classes, str)
            or len(num_classes) < 1
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in num_classes)
        ):
            raise ValueError(
                f"{owner}: num_classes must be a non-empty sequence of integers >= 1, "
                f"got {num_classes!r}"
            )
        super().__init__(
            len(num_classes),
            weighting,
            weights,
            owner=owner,
            gather_distributed=gather_distributed,
        )
        self.num_classes = [int(k) for k in num_classes]

    def _check(self, logits: object, labels: object) -> tuple[list[Tensor], Tensor]:
        owner, c = "MultiTaskCELoss", len(self.num_classes)
        if not isinstance(logits, Sequence) or isinstance(logits, str) or len(logits) != c:
            got = f"{len(logits)} items" if isinstance(logits, Sequence) else type(logits).__name__
            raise ValueError(
                f"{owner}: logits must be a sequence of C = {c} tensors (B, K_c), got {got}"
            )
        b = None
        for i, (x, k) in enumerate(zip(logits, self.num_classes, strict=True)):
            name = f"logits[{i}]"
            _checks.check_float_tensor(owner, name, x, f"(B, {k})")
            if b is None and x.ndim == 2:
                b = x.shape[0]
            if x.ndim != 2 or x.shape[1] != k or x.shape[0] != b:
                raise ValueError(
                    f"{owner}: {name} must have shape (B, K_{i}) = ({b}, {k}), "
                    f"got {_checks.shape_str(x.shape)}"
                )
            _checks.check_finite(owner, name, x)
        labels = _checks.check_labels(
            owner, "labels", labels, (b, c), "(B, C)", num_classes=self.num_classes
        )
        return list(logits), labels

    def forward(self, logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        """Weighted sum of the per-task cross-entropies."""
        logits, labels = self._check(logits, labels)
        factors = self.weighting.temperature_factors()
        outputs = []
        for i, x in enumerate(logits):
            y = labels[:, i].to(device=x.device, dtype=torch.long)
            valid = y >= 0
            with _no_autocast(x.device.type):
                x = x.to(compute_dtype(x.dtype))
                x = x / factors[i].to(x.dtype)
                ce = F.cross_entropy(x, y.clamp_min(0), reduction="none")
                ce = torch.where(valid, ce, torch.zeros_like(ce))
            outputs.append(ContrastiveOutput(ce, valid))
        losses, counts = valid_means(outputs, gather_distributed=self.gather_distributed)
        chance = torch.log(torch.tensor(self.num_classes, dtype=losses.dtype, device=losses.device))
        return self.combine(losses, counts, torch.zeros_like(losses), chance)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
