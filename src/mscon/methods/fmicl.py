"""f-MICL (SPEC section 6): contrastive learning from an f-divergence, SimCLR framework.

:class:`FMICLOptions` holds the f-MICL keys that both ``fmicl`` and ``mscon`` with
``base_loss: fmicl`` read; ``tsallis_alpha`` is read only with ``divergence: tsallis``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import nn

from mscon.config import Config, MethodConfig, check_registered
from mscon.losses import FMICLLoss
from mscon.losses.divergences import DIVERGENCES
from mscon.methods.base import Method, register_method, with_heads
from mscon.models.heads import ProjectionHead

FMICL_KEYS = ("divergence", "alpha", "sigma", "mu", "tsallis_alpha")


class FMICLOptions(BaseModel):
    """The f-MICL keys: divergence and the f-Gaussian similarity's parameters."""

    divergence: str = "kl"
    alpha: float = Field(40.0, gt=0)
    sigma: float = Field(0.5**0.5, gt=0)
    mu: float = Field(1.0, gt=0)
    tsallis_alpha: float = Field(1.5, gt=0)

    @field_validator("divergence")
    @classmethod
    def _known_divergence(cls, value: str) -> str:
        return check_registered(DIVERGENCES, value)

    @model_validator(mode="after")
    def _loss_accepts(self) -> FMICLOptions:
        if getattr(self, "base_loss", "fmicl") == "fmicl":
            try:
                FMICLLoss(**self.fmicl_kwargs())
            except ValueError as error:
                raise ValueError(str(error).removeprefix("FMICLLoss: ")) from None
        return self

    def fmicl_kwargs(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in FMICL_KEYS}


def tsallis_only(values: dict[str, Any]) -> set[str]:
    """``tsallis_alpha`` is read only with ``divergence: tsallis``."""
    return set() if values.get("divergence", "kl") == "tsallis" else {"tsallis_alpha"}


class FMICLConfig(MethodConfig, FMICLOptions):
    """``method`` keys of ``fmicl`` (self-supervised: positives are views of one image)."""

    name: Literal["fmicl"] = "fmicl"

    @classmethod
    def inactive_keys(cls, values: dict[str, Any]) -> set[str]:
        return tsallis_only(values)

    def check_config(self, config: Config) -> None:
        if len(config.augment.recipes()) < 2:
            raise ValueError("augment.views: f-MICL needs at least 2 views per image")


@register_method("fmicl")
class FMICL(Method):
    """f-MICL on a projection of the encoder's features (SimCLR's framework, no labels)."""

    config_class = FMICLConfig

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        columns: list[str],
        *,
        fmicl: dict[str, Any] | None = None,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        batch_norm: bool = False,
        weight_norm: bool = False,
    ) -> None:
        super().__init__(encoder, feature_dim, columns)
        self.head = ProjectionHead(feature_dim, projection_dim, hidden_dim, batch_norm, weight_norm)
        self.loss_fn = FMICLLoss(**(fmicl or {}), gather_distributed=True)

    @classmethod
    def from_config(
        cls, config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
    ) -> FMICL:
        m: FMICLConfig = config.method  # type: ignore[assignment]
        return with_heads(
            cls,
            config,
            encoder,
            feature_dim,
            fmicl=m.fmicl_kwargs(),
        )

    @property
    def trained_columns(self) -> list[str]:
        return []

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        z = self.head(self.encode_views(views).flatten(0, 1)).view(*views.shape[:2], -1)
        return {"loss": self.loss_fn(z)}
