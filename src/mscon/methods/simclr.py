"""SimCLR (SPEC section 2): instance discrimination, no labels."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mscon.config import Config, MethodConfig
from mscon.losses import NTXentLoss, SupConLoss
from mscon.methods.base import Method, register_method, with_heads
from mscon.models.heads import ProjectionHead


class SimCLRConfig(MethodConfig):
    """``method`` keys of ``simclr``."""

    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.1, gt=0)


@register_method("simclr")
class SimCLR(Method):
    """NT-Xent on a projection of the encoder's features.

    With two views this is :class:`~mscon.losses.NTXentLoss`; with V > 2 views
    it is SupCon with the views of each image as the positives (the same
    equation generalised).
    """

    config_class = SimCLRConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        temperature: float = 0.5,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.head = ProjectionHead(feature_dim, projection_dim, hidden_dim, batch_norm, weight_norm)
        self.pair_loss = NTXentLoss(temperature=temperature, gather_distributed=True)
        self.multi_view_loss = SupConLoss(temperature=temperature, gather_distributed=True)

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> SimCLR:
        m: SimCLRConfig = config.method  # type: ignore[assignment]
        return with_heads(cls, config, encoder, feature_dim, temperature=m.temperature)

    @property
    def trained_columns(self) -> list[str]:
        return []

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        z = self.head(self.encode_views(views).flatten(0, 1)).view(*views.shape[:2], -1)
        if z.shape[1] == 2:
            return {"loss": self.pair_loss(z[:, 0], z[:, 1])}
        return {"loss": self.multi_view_loss(z)}
