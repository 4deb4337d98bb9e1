r"""SupCon (Khosla et al. 2020; SPEC section 3), with SimCLR positives when no labels are given.

.. math::

    \ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log
        \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \ne i} \exp(z_i \cdot z_a / \tau)}
    \quad (\text{L\_out}), \qquad
    L = \operatorname{mean}_{i:\,|P(i)| > 0} \ell_i
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mscon import distributed
from mscon.losses import _checks
from mscon.losses.chunked import check_chunk_size
from mscon.losses.functional import supcon_per_anchor, valid_means

__all__ = ["SupConLoss"]


def check_supcon_inputs(
    owner: str,
    features: object,
    labels: object,
    mask: object,
    gather_distributed: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate SupCon inputs; return features as (B, V, d)."""
    expected = "(B, V, d) or (N, d)"
    features = _checks.check_float_tensor(owner, "features", features, expected)
    if features.ndim not in (2, 3):
        raise ValueError(
            f"{owner}: features must have shape {expected}, got {_checks.shape_str(features.shape)}"
        )
    if features.shape[0] < 1:
        raise ValueError(
            f"{owner}: features must hold at least one image (B >= 1), "
            f"got shape {_checks.shape_str(features.shape)}"
        )
    if features.ndim == 3 and features.shape[1] < 1:
        raise ValueError(
            f"{owner}: features must hold at least one view (V >= 1), "
            f"got shape {_checks.shape_str(features.shape)}"
        )
    _checks.check_embeddings(owner, "features", features, expected)
    if labels is not None and mask is not None:
        raise ValueError(f"{owner}: give labels or mask, not both (got both)")
    if features.ndim == 2:
        if labels is None and mask is None:
            raise ValueError(
                f"{owner}: features of shape (N, d) = {_checks.shape_str(features.shape)} hold one "
                "view per image, so labels or mask is needed for positives, got neither "
                "(pass (B, V, d) features for SimCLR positives)"
            )
        features = features.unsqueeze(1)
    b = features.shape[0]
    if labels is not None:
        labels = _checks.check_labels(owner, "labels", labels, (b,), "(B,)")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ValueError(
                f"{owner}: mask must be a bool or float tensor of shape (B, B), "
                f"got {type(mask).__name__}"
            )
        b_all = b
        if gather_distributed and distributed.is_distributed():
            b_all = sum(distributed.gather_sizes(b, features.device))
        if tuple(mask.shape) != (b, b_all):
            raise ValueError(
                f"{owner}: mask must have shape (B, B) = ({b}, {b_all}), "
                f"got {_checks.shape_str(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            if not mask.dtype.is_floating_point:
                raise ValueError(
                    f"{owner}: mask must be bool or non-negative float weights, "
                    f"got dtype {mask.dtype}"
                )
            _checks.check_finite(owner, "mask", mask)
            if mask.numel() and float(mask.min()) < 0:
                raise ValueError(
                    f"{owner}: mask weights must be non-negative, got {float(mask.min())}"
                )
    return features, labels, mask


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss (SPEC section 3); SimCLR positives without labels.

    For each of the N = B·V views (anchors), the candidates are all other views of
    the batch and the positives :math:`P(i)` are:

    * with ``labels``: the other views whose image has the same label;
    * with ``mask``: the views of images :math:`b'` with ``mask[b, b']`` True (bool),
      or weighted by ``mask[b, b']`` (float, normalised over the anchor's positives),
      plus the other views of the same image, always positive with weight 1 (the
      diagonal of ``mask`` is ignored);
    * with neither: the other views of the same image (SimCLR, SPEC section 2).

    ``form="out"`` (default, L_out):
    :math:`\ell_i = -\frac{1}{|P(i)|}\sum_{p\in P(i)} \log p_{ip}`;
    ``form="in"`` (L_in): :math:`\ell_i = -\log \frac{1}{|P(i)|}\sum_{p\in P(i)} p_{ip}`,
    with :math:`p_{ia} = \exp(z_i\cdot z_a/\tau) / \sum_{a'\ne i}\exp(z_i\cdot z_{a'}/\tau)`
    and :math:`z` the L2-normalised features. The loss is the mean of
    :math:`\ell_i` over anchors with :math:`|P(i)| > 0`. An anchor whose label is
    missing (-1) is left out of the mean and is a positive of no other view, but it
    stays a candidate in every denominator. No valid anchor gives exactly 0 (with a
    gradient path). There is no :math:`\tau/\tau_{base}` factor.

    Args:
        temperature: :math:`\tau > 0`.
        form: ``"out"`` or ``"in"``.
        gather_distributed: inside a multi-process group, contrast this rank's
            anchors with the views of all ranks (gathered with gradient) and return
            this rank's share times the world size (the mean over ranks is the loss
            of the whole batch). ``mask`` then has one column per image of all ranks.
        chunk_size: anchor rows per chunk of the log-denominator; None (default) picks
            it from N and d, or from ``$MSCON_LOSS_CHUNK_ROWS`` when set
            (:mod:`mscon.losses.chunked`).

    Shapes:
        features: (B, V, d), or (N, d) meaning V = 1; float16/bfloat16/float32/float64.
        labels: (B,) integer, -1 = missing. mask: (B, B) bool or non-negative float.
        output: scalar, float32 (float64 for float64 input).

    Example:
        >>> import torch
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> features = torch.ones(4, 2, 16)  # identical embeddings, N = 8
        >>> loss_fn(features, labels=torch.tensor([0, 1, 0, -1]))  # log(N - 1)
        tensor(1.9459)
        >>> loss_fn(features)  # SimCLR positives
        tensor(1.9459)
    """

    def __init__(
        self,
        temperature: float = 0.1,
        form: str = "out",
        *,
        gather_distributed: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _checks.check_temperature("SupConLoss", temperature)
        self.form = _checks.check_choice("SupConLoss", "form", form, ("out", "in"))
        self.gather_distributed = bool(gather_distributed)
        self.chunk_size = check_chunk_size("SupConLoss", chunk_size)

    def forward(
        self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Loss of ``features`` (B, V, d) or (N, d) with ``labels`` (B,) or ``mask`` (B, B)."""
        features, labels, mask = check_supcon_inputs(
            "SupConLoss", features, labels, mask, self.gather_distributed
        )
        out = supcon_per_anchor(
            features,
            labels,
            mask,
            temperature=self.temperature,
            form=self.form,
            gather_distributed=self.gather_distributed,
            chunk_size=self.chunk_size,
        )
        return valid_means([out], gather_distributed=self.gather_distributed)[0][0]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, form={self.form!r}"
