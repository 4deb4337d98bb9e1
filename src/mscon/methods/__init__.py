"""Training methods, selected by ``method.name``: each maps a batch to a loss dict.

Every module here registers one method (``@register_method``) with its typed
config section; :data:`METHODS` maps the names to the classes.
"""

from __future__ import annotations

from torch import nn

from mscon.config import Config
from mscon.methods.base import METHODS, Method, register_method
from mscon.methods.fmicl import FMICL
from mscon.methods.mscon import MSCon
from mscon.methods.multitask_ce import MultiTaskCE
from mscon.methods.sce import SCE, MoCo
from mscon.methods.simclr import SimCLR
from mscon.methods.supcon import SupCon

__all__ = [
    "METHODS",
    "Method",
    "FMICL",
    "MoCo",
    "MSCon",
    "MultiTaskCE",
    "SCE",
    "SimCLR",
    "SupCon",
    "build_method",
    "register_method",
]


def build_method(
    config: Config, encoder: nn.Module, feature_dim: int, num_classes: list[int]
) -> Method:
    """Build the method ``config.method.name`` around ``encoder``.

    Args:
        config: the experiment config.
        encoder: the shared backbone, features (n, D).
        feature_dim: D.
        num_classes: classes per ``data.similarities`` column, in order.
    """
    return METHODS.lookup(config.method.name).from_config(config, encoder, feature_dim, num_classes)
