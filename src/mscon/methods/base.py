"""The interface every training method implements.

A method owns the model parts it trains (the shared encoder and its heads) and
maps one batch to a dict of losses; the training loop never knows which method
it runs. Methods know nothing about files or the command line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Method(nn.Module):
    """Base class: an encoder plus method-specific heads and loss.

    Subclasses set ``trained_columns`` (indices into the batch's label columns
    that the method learns from) and implement :meth:`forward`.

    Args:
        encoder: maps float images (n, 3, H, W) to features (n, D).
        feature_dim: D.
        columns: the label columns handed to the method, in the order of the
            batch's label matrix (``data.similarities``).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, columns: list[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.columns = list(columns)

    @property
    def trained_columns(self) -> list[str]:
        """The label columns whose labels this method trains on (in-domain tasks)."""
        return list(self.columns)

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """Encode a batch of views (B, V, 3, H, W) to features (B, V, D)."""
        batch, num_views = views.shape[:2]
        features = self.encoder(views.flatten(0, 1))
        return features.view(batch, num_views, -1)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map views (B, V, 3, H, W) and labels (B, C) to ``{"loss": scalar, ...}``."""
        raise NotImplementedError

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters trained without weight decay (the learned task weights)."""
        return []

    def log_values(self) -> dict[str, Any]:
        """Values to log after the last forward (per-similarity losses and weights)."""
        return {}
