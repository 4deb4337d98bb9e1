"""Contrastive and multi-task losses (SPEC sections 1-8).

Every loss is a typed ``nn.Module`` over the pure functions in
:mod:`mscon.losses.functional`; the task weighting shared by the
multi-similarity losses is in :mod:`mscon.losses.weighting`.
"""

from mscon.losses import divergences, functional
from mscon.losses.fmicl import FMICLLoss
from mscon.losses.mscon import MSConFMICLLoss, MSConLoss
from mscon.losses.multitask_ce import MultiTaskCELoss
from mscon.losses.ntxent import NTXentLoss
from mscon.losses.sce import SCELoss
from mscon.losses.supcon import SupConLoss
from mscon.losses.weighting import WEIGHTING_MODES, TaskWeighting, register_weighting_mode

__all__ = [
    "functional",
    "divergences",
    "NTXentLoss",
    "SupConLoss",
    "MSConLoss",
    "MSConFMICLLoss",
    "MultiTaskCELoss",
    "FMICLLoss",
    "SCELoss",
    "TaskWeighting",
    "WEIGHTING_MODES",
    "register_weighting_mode",
]
