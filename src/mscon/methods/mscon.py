"""MSCon (SPEC section 4): one projection head and one SupCon loss per similarity."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mscon.losses import MSConLoss
from mscon.methods.base import Method
from mscon.models.heads import MultiHead


class MSCon(Method):
    """Shared encoder, a head per similarity, learned similarity weights.

    With ``instance_similarity`` one more head (logged as ``instance``) treats
    the views of each image as its only positives (SimCLR's similarity), weighted
    like the labelled ones. With ``instance_mix`` > 0 each head's target mixes in
    the anchor's own views (see :class:`~mscon.losses.MSConLoss`).
    """

    INSTANCE = "instance"

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        temperature: float = 0.1,
        weighting: str = "uncertainty",
        weights: list[float] | None = None,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        instance_similarity: bool = False,
        instance_mix: float = 0.0,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.instance_similarity = instance_similarity
        heads = len(columns) + int(instance_similarity)
        self.heads = MultiHead(feature_dim, heads, projection_dim, hidden_dim, batch_norm)
        self.loss_fn = MSConLoss(
            heads,
            temperature=temperature,
            weighting=weighting,
            weights=weights,
            instance_mix=instance_mix,
        )

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, num_views = views.shape[:2]
        z = self.heads(self.encode_views(views).flatten(0, 1))  # (C, B*V, d)
        z = z.view(z.shape[0], batch, num_views, -1)
        if self.instance_similarity:
            instance = torch.arange(batch, device=labels.device).unsqueeze(1)
            labels = torch.cat([labels, instance], dim=1)
        return {"loss": self.loss_fn(z, labels)}

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.loss_fn.log_vars]

    def log_values(self) -> dict[str, Any]:
        names = self.columns + [self.INSTANCE] * self.instance_similarity
        losses = self.loss_fn.last_losses.tolist()
        weights = self.loss_fn.task_weights().detach().tolist()
        return {
            "loss_per_similarity": dict(zip(names, losses, strict=True)),
            "weights": dict(zip(names, weights, strict=True)),
        }
