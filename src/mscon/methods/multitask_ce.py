"""Multi-task cross-entropy baseline (SPEC section 5): a linear classifier per task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mscon.losses import MultiTaskCELoss
from mscon.methods.base import Method
from mscon.models.heads import LinearHeads


class MultiTaskCE(Method):
    """Shared encoder, one linear classifier per label column, weighted CE.

    Every augmented view is a training example with its image's labels, so the
    method sees the same images per step as the contrastive methods.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        num_classes: list[int],
        weighting: str = "uncertainty",
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.classifiers = LinearHeads(feature_dim, num_classes)
        self.loss_fn = MultiTaskCELoss(num_classes, weighting=weighting)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        num_views = views.shape[1]
        logits = self.classifiers(self.encode_views(views).flatten(0, 1))
        return {"loss": self.loss_fn(logits, labels.repeat_interleave(num_views, dim=0))}

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.loss_fn.log_vars]

    def log_values(self) -> dict[str, Any]:
        losses = self.loss_fn.last_losses.tolist()
        weights = self.loss_fn.task_weights().detach().tolist()
        return {
            "loss_per_similarity": dict(zip(self.columns, losses, strict=True)),
            "weights": dict(zip(self.columns, weights, strict=True)),
        }
