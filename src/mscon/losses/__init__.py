"""Contrastive and multi-task losses (SPEC sections 1-5, 7-8).

Every loss is a typed ``nn.Module`` over the pure functions in
:mod:`mscon.losses.functional`; the task weighting shared by the
multi-similarity losses is in :mod:`mscon.losses.weighting`.
"""

from mscon.losses import functional
from mscon.losses.mscon import MSConLoss
from mscon.losses.multitask_ce import MultiTaskCELoss
from mscon.losses.ntxent import NTXentLoss
from mscon.losses.sce import SCELoss
from mscon.losses.supcon import SupConLoss
from mscon.losses.weighting import WEIGHTING_MODES, TaskWeighting, register_weighting_mode

__all__ = [
    "functional",
    "NTXentLoss",
    "SupConLoss",
    "MSConLoss",
    "MultiTaskCELoss",
    "SCELoss",
    "TaskWeighting",
    "WEIGHTING_MODES",
    "register_weighting_mode",
]
