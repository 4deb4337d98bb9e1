"""Model parts: encoders by name and the heads methods put on them."""

from mscon.models.backbones import (
    BACKBONES,
    SmallCNN,
    available_backbones,
    build_backbone,
    load_weights,
)
from mscon.models.heads import LinearHeads, MultiHead, ProjectionHead

__all__ = [
    "BACKBONES",
    "LinearHeads",
    "MultiHead",
    "ProjectionHead",
    "SmallCNN",
    "available_backbones",
    "build_backbone",
    "load_weights",
]
