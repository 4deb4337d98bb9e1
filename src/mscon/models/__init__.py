"""Model parts: encoders by name, the heads methods put on them, momentum teachers and queues."""

from mscon.models.backbones import (
    BACKBONES,
    SmallCNN,
    available_backbones,
    build_backbone,
    load_weights,
)
from mscon.models.heads import LinearHeads, MultiHead, ProjectionHead
from mscon.models.momentum import (
    MOMENTUM_SCHEDULES,
    EMATeacher,
    MomentumQueue,
    constant_momentum,
    cosine_momentum,
    gather_keys,
    predictor_head,
    shuffled_forward,
    shuffled_forward_distributed,
    shuffled_keys,
    split_forward,
)

__all__ = [
    "BACKBONES",
    "EMATeacher",
    "LinearHeads",
    "MOMENTUM_SCHEDULES",
    "MomentumQueue",
    "MultiHead",
    "ProjectionHead",
    "SmallCNN",
    "available_backbones",
    "build_backbone",
    "constant_momentum",
    "cosine_momentum",
    "gather_keys",
    "load_weights",
    "predictor_head",
    "shuffled_forward",
    "shuffled_forward_distributed",
    "shuffled_keys",
    "split_forward",
]
