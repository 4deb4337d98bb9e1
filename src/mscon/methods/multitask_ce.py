"""Multi-task cross-entropy baseline (SPEC section 5): a linear classifier per task."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from mscon.config import Config, TaskWeightsConfig
from mscon.losses import MultiTaskCELoss
from mscon.methods.base import Method, register_method, task_log_values, with_task_weight_options
from mscon.models.heads import LinearHeads


class MultiTaskCEConfig(TaskWeightsConfig):
    """``method`` keys of ``multitask_ce``: the task weighting (Kendall et al.'s by default)."""

    name: Literal["multitask_ce"] = "multitask_ce"
    weighting: str = "uncertainty"

    def check_config(self, config: Config) -> None:
        super().check_config(config)
        if self.weighting == "consistency":
            raise ValueError(
                "method.weighting: 'consistency' is MSCon's (its weights come from the "
                "encoder's features each step); multitask_ce cannot supply them"
            )
        for key in ("head_batch_norm", "head_weight_norm"):
            if getattr(config.model, key):
                raise ValueError(
                    f"model.{key}: multitask_ce has linear classifiers, no projection head "
                    "for it to change. Leave it false"
                )


@register_method("multitask_ce")
class MultiTaskCE(Method):
    """Shared encoder, one linear classifier per label column, weighted CE.

    Every augmented view is a training example with its image's labels, so the
    method sees the same images per step as the contrastive methods.
    """

    config_class = MultiTaskCEConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        num_classes: list[int],
        weighting: str = "uncertainty",
        weights: list[float] | None = None,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.classifiers = LinearHeads(feature_dim, num_classes)
        self.loss_fn = MultiTaskCELoss(
            num_classes, weighting=weighting, weights=weights, gather_distributed=True
        )

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> MultiTaskCE:
        m: MultiTaskCEConfig = config.method  # type: ignore[assignment]
        method = cls(
            encoder,
            feature_dim,
            list(config.data.similarities),
            num_classes=num_classes,
            weighting=m.weighting,
            weights=m.weights,
        )
        return with_task_weight_options(method, m)

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        num_views = views.shape[1]
        logits = self.classifiers(self.encode_views(views).flatten(0, 1))
        return {"loss": self.loss_fn(logits, labels.repeat_interleave(num_views, dim=0))}

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        return [self.loss_fn.log_vars]

    def log_values(self) -> dict[str, Any]:
        return task_log_values(self.columns, self.loss_fn)
