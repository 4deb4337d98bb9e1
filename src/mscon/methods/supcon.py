"""Single-similarity SupCon (SPEC section 3): the first of ``data.similarities``."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mscon.config import Config, MethodConfig
from mscon.losses import SupConLoss
from mscon.methods.base import Method, register_method, with_heads
from mscon.models.heads import ProjectionHead


class SupConConfig(MethodConfig):
    """``method`` keys of ``supcon``."""

    name: Literal["supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0)
    form: Literal["out", "in"] = "out"


@register_method("supcon")
class SupCon(Method):
    """Supervised contrastive learning on one label column (the first one given)."""

    config_class = SupConConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        temperature: float = 0.1,
        form: str = "out",
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.head = ProjectionHead(feature_dim, projection_dim, hidden_dim, batch_norm, weight_norm)
        self.loss_fn = SupConLoss(temperature=temperature, form=form, gather_distributed=True)

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> SupCon:
        m: SupConConfig = config.method  # type: ignore[assignment]
        return with_heads(
            cls,
            config,
            encoder,
            feature_dim,
            temperature=m.temperature,
            form=m.form,
        )

    @property
    def trained_columns(self) -> list[str]:
        return self.columns[:1]

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        z = self.head(self.encode_views(views).flatten(0, 1)).view(*views.shape[:2], -1)
        return {"loss": self.loss_fn(z, labels[:, 0])}
