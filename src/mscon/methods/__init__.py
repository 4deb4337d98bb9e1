"""Training methods, selected by ``method.name``: each maps a batch to a loss dict."""

from __future__ import annotations

from torch import nn

from mscon.config import Config
from mscon.methods.base import Method
from mscon.methods.mscon import MSCon
from mscon.methods.multitask_ce import MultiTaskCE
from mscon.methods.simclr import SimCLR
from mscon.methods.supcon import SupCon

__all__ = ["Method", "MSCon", "MultiTaskCE", "SimCLR", "SupCon", "build_method"]


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
    m, columns = config.method, list(config.data.similarities)
    head = {
        "projection_dim": config.model.projection_dim,
        "hidden_dim": config.model.hidden_dim,
        "batch_norm": config.model.head_batch_norm,
    }
    if m.name == "simclr":
        return SimCLR(encoder, feature_dim, columns, temperature=m.temperature, **head)
    if m.name == "supcon":
        return SupCon(encoder, feature_dim, columns, temperature=m.temperature, form=m.form, **head)
    if m.name == "mscon":
        return MSCon(
            encoder,
            feature_dim,
            columns,
            temperature=m.temperature,
            weighting=m.weighting,
            weights=m.weights,
            instance_similarity=m.instance_similarity,
            instance_mix=m.instance_mix,
            **head,
        )
    if m.name == "multitask_ce":
        return MultiTaskCE(
            encoder, feature_dim, columns, num_classes=num_classes, weighting=m.weighting
        )
    raise ValueError(f"method.name: unknown method {m.name!r}")
