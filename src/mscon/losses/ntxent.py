r"""NT-Xent, the SimCLR loss (Chen et al. 2020; SPEC section 2).

.. math::

    \ell_i = -\log \frac{\exp(z_i \cdot z_{j(i)} / \tau)}{\sum_{a \ne i} \exp(z_i \cdot z_a / \tau)}
"""

from __future__ import annotations

from torch import Tensor, nn

from mscon.losses import _checks
from mscon.losses.chunked import check_chunk_size
from mscon.losses.functional import ntxent_loss

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    r"""Normalised-temperature cross-entropy of two views (SPEC section 2).

    The 2B embeddings of both views are L2-normalised; each is an anchor whose
    positive :math:`j(i)` is the other view of its image and whose candidates are
    the other 2B - 1 embeddings:
    :math:`\ell_i = -\log(e^{z_i\cdot z_{j(i)}/\tau} / \sum_{a\ne i} e^{z_i\cdot z_a/\tau})`,
    and the loss is the mean over the 2B anchors. It equals
    ``SupConLoss(temperature)(torch.stack([z0, z1], 1))`` and lightly's
    ``NTXentLoss(temperature, memory_bank_size=0)``. Identical embeddings give
    :math:`\log(2B - 1)`.

    Args:
        temperature: :math:`\tau > 0`.
        gather_distributed: inside a multi-process group, contrast with the
            embeddings of all ranks (gathered with gradient); each rank returns its
            share times the world size.
        chunk_size: anchor rows per chunk of the log-denominator; None (default) picks
            it from N and d, or from ``$MSCON_LOSS_CHUNK_ROWS`` when set
            (:mod:`mscon.losses.chunked`).

    Shapes:
        z0, z1: (B, d) each, any float dtype. Output: scalar (float32, or float64).

    Example:
        >>> import torch
        >>> NTXentLoss(temperature=0.5)(torch.ones(4, 8), torch.ones(4, 8))  # log(7)
        tensor(1.9459)
    """

    def __init__(
        self,
        temperature: float = 0.5,
        *,
        gather_distributed: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = _checks.check_temperature("NTXentLoss", temperature)
        self.gather_distributed = bool(gather_distributed)
        self.chunk_size = check_chunk_size("NTXentLoss", chunk_size)

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Loss of the two views ``z0`` and ``z1`` (B, d)."""
        owner = "NTXentLoss"
        for name, z in (("z0", z0), ("z1", z1)):
            _checks.check_float_tensor(owner, name, z, "(B, d)")
            if z.ndim != 2 or z.shape[0] < 1:
                raise ValueError(
                    f"{owner}: {name} must have shape (B, d) with B >= 1, "
                    f"got {_checks.shape_str(z.shape)}"
                )
        if z0.shape != z1.shape:
            raise ValueError(
                f"{owner}: z0 and z1 must have the same shape (B, d) (one row per image), "
                f"got {_checks.shape_str(z0.shape)} and {_checks.shape_str(z1.shape)}"
            )
        _checks.check_embeddings(owner, "z0", z0, "(B, d)")
        _checks.check_embeddings(owner, "z1", z1, "(B, d)")
        return ntxent_loss(
            z0,
            z1,
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
